"""The Vision Transformer, small enough to read in one sitting (Dosovitskiy et al., 2021).

Introduced in chapter 1. The names follow the paper's equations:

- Eq. 1: z₀ = [x_class; x_p¹E; …; x_pᴺE] + E_pos  (:func:`patchify`, :class:`PatchEmbedding`, :class:`ViT`)
- Eq. 2: z′_ℓ = MSA(LN(z_{ℓ−1})) + z_{ℓ−1}          (:class:`Block`, :class:`MultiHeadSelfAttention`)
- Eq. 3: z_ℓ = MLP(LN(z′_ℓ)) + z′_ℓ                (:class:`Block`, :class:`MLP`)
- Eq. 4: y = LN(z_L⁰)                               (:meth:`ViT.forward`)

Chapter 2's CLIP uses :class:`ViT` as its image encoder.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ViTConfig:
    """The size of a ViT. ``pos_embedding=False`` removes E_pos (the chapter's ablation)."""

    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    pos_embedding: bool = True

    def __post_init__(self):
        for name in ("image_size", "patch_size", "channels", "dim", "depth", "heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.dim % self.heads:
            raise ValueError(f"heads {self.heads} must divide dim {self.dim}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def _check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what} must be a tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{what} must have shape (B, C, H, W), got shape {tuple(images.shape)}")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping P×P patches and flatten each one.

    (B, C, H, W) -> (B, N, C·P·P), with N = HW/P². Patches are numbered row by row, and each patch
    is flattened in (C, P, P) order: all of its red values, then green, then blue.
    """
    _check_images(images)
    B, C, H, W = images.shape
    if not isinstance(patch_size, int) or patch_size < 1 or H % patch_size or W % patch_size:
        raise ValueError(f"patch_size must be a positive integer dividing H={H} and W={W}, got {patch_size!r}")
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)        # (B, C, rows, P, cols, P)
    x = x.permute(0, 2, 4, 1, 3, 5)                        # (B, rows, cols, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)    # (B, N, C·P·P)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify` for square images: (B, N, C·P·P) -> (B, C, H, W)."""
    if not isinstance(patches, torch.Tensor) or patches.ndim != 3:
        raise ValueError(f"patches must be a tensor of shape (B, N, C·P·P), got {getattr(patches, 'shape', patches)}")
    B, N, D = patches.shape
    side = math.isqrt(N)
    if side * side != N or D != channels * patch_size ** 2:
        raise ValueError(f"cannot arrange {N} patches of size {D} into a square image of {channels} channels")
    P = patch_size
    x = patches.reshape(B, side, side, channels, P, P).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, side * P, side * P)


class PatchEmbedding(nn.Module):
    """x_pⁱE: a linear map of each flattened patch to a D-dimensional token."""

    def __init__(self, patch_size: int, channels: int, dim: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(channels * patch_size * patch_size, dim, bias=bias)   # E

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(images, self.patch_size))                          # (B, N, D)

    def as_conv(self) -> nn.Conv2d:
        """The same map as a convolution with kernel and stride P (how libraries implement it)."""
        C = self.proj.in_features // self.patch_size ** 2
        conv = nn.Conv2d(C, self.proj.out_features, self.patch_size, stride=self.patch_size,
                         bias=self.proj.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.proj.weight.reshape(conv.weight.shape))          # (D, C, P, P)
            if self.proj.bias is not None:
                conv.bias.copy_(self.proj.bias)
        return conv


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QKᵀ/√d) V. Shapes (..., L, d); returns the output and the attention weights (..., L, L).

    ``mask`` (broadcastable to (..., L, L)) is True where attention is allowed.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])     # (..., L, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadSelfAttention(nn.Module):
    """MSA: h heads of scaled dot-product attention over the tokens, then an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.last_attention: torch.Tensor | None = None          # (B, h, L, L), kept for plots

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d)
        y, weights = scaled_dot_product_attention(q, k, v, mask)
        self.last_attention = weights.detach()
        return self.out(y.transpose(1, 2).reshape(B, L, D))     # (B, L, D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """One transformer layer, pre-norm: Eq. 2 then Eq. 3."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), MultiHeadSelfAttention(dim, heads)
        self.ln2, self.mlp = nn.LayerNorm(dim), MLP(dim, mlp_ratio * dim)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        z = z + self.attn(self.ln1(z), mask)      # z′_ℓ = MSA(LN(z_{ℓ−1})) + z_{ℓ−1}
        return z + self.mlp(self.ln2(z))          # z_ℓ  = MLP(LN(z′_ℓ)) + z′_ℓ


class ViT(nn.Module):
    """The Vision Transformer encoder: images (B, C, H, W) -> tokens (B, N+1, D), token 0 is the class token."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = c = config
        self.patch_embed = PatchEmbedding(c.patch_size, c.channels, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))                          # x_class
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.dim)) if c.pos_embedding else None  # E_pos
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. 1: z₀ = [x_class; x_p¹E; …; x_pᴺE] + E_pos, shape (B, N+1, D)."""
        _check_images(images)
        c = self.config
        if tuple(images.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise ValueError(f"expected images of shape (B, {c.channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(images.shape)}")
        tokens = self.patch_embed(images)                                    # (B, N, D)
        cls = self.cls_token.expand(len(images), -1, -1)                     # (B, 1, D)
        z = torch.cat([cls, tokens], dim=1)                                  # (B, N+1, D)
        return z + self.pos_embed if self.pos_embed is not None else z

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.embed(images)
        for block in self.blocks:
            z = block(z)
        return self.norm(z)                                                  # y = z_L[:, 0] after LN (Eq. 4)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The image representation y = LN(z_L⁰): the class token's final state, (B, D)."""
        return self(images)[:, 0]

    def attention_maps(self) -> list[torch.Tensor]:
        """The attention weights of each layer from the last forward pass, each (B, h, N+1, N+1)."""
        return [b.attn.last_attention for b in self.blocks]


class ViTClassifier(nn.Module):
    """A ViT with one linear head per attribute, reading the class token."""

    def __init__(self, config: ViTConfig, classes: dict[str, int]):
        super().__init__()
        if not classes or not all(isinstance(n, int) and n > 1 for n in classes.values()):
            raise ValueError(f"classes must map attribute names to class counts > 1, got {classes!r}")
        self.vit = ViT(config)
        self.heads = nn.ModuleDict({name: nn.Linear(config.dim, n) for name, n in classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.vit.features(images)                                        # (B, D)
        return {name: head(y) for name, head in self.heads.items()}          # name -> (B, classes)
