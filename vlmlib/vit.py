"""The Vision Transformer, small enough to read in one sitting (Dosovitskiy et al., 2021).

Introduced in chapter 1. The names follow the paper's equations:

- Eq. 1: z₀ = [x_class; x_p¹E; …; x_pᴺE] + E_pos  (:func:`patchify`, :class:`PatchEmbedding`, :class:`ViT`)
- Eq. 2: z′_ℓ = MSA(LN(z_{ℓ−1})) + z_{ℓ−1}          (:class:`Block`, :class:`MultiHeadSelfAttention`)
- Eq. 3: z_ℓ = MLP(LN(z′_ℓ)) + z′_ℓ                (:class:`Block`, :class:`MLP`)
- Eq. 4: y = LN(z_L⁰)                               (:meth:`ViT.forward`)

Chapter 2's CLIP uses :class:`ViT` as its image encoder. :func:`train_classifier` trains chapter 1's
classifier of colour, kind and position (optionally with grey copies), which chapter 2 loads again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks


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
            setattr(self, name, checks.integer(getattr(self, name), f"ViTConfig.{name}", minimum=1))
        self.pos_embedding = _boolean(self.pos_embedding, "ViTConfig.pos_embedding")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.dim % self.heads:
            raise ValueError(f"heads {self.heads} must divide dim {self.dim}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def _boolean(value, name: str) -> bool:
    """True or False (NumPy's bool accepted); anything else, such as the string 'no', is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_tokens(x, name: str, dim: int, weight: torch.Tensor) -> None:
    """A light check of a layer's input (B, L, D): no pass over the values, so it costs nothing per step."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape (B, L, {dim}), got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (B, L, {dim}), got {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's weights are {weight.dtype}; "
                        f"convert one of them (x.to({weight.dtype}) or layer.to({x.dtype}))")


def _model_images(images, checked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The checked images in the model's dtype (a float64 batch stays exact for a model made .double())."""
    if isinstance(images, torch.Tensor) and images.dtype == dtype:
        return images
    return checked.to(dtype)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping P×P patches and flatten each one.

    (B, C, H, W) -> (B, N, C·P·P), with N = HW/P². Patches are numbered row by row, and each patch
    is flattened in (C, P, P) order: all of its red values, then green, then blue. Only a
    rearrangement: any dtype is kept as it is.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got shape {tuple(images.shape)}"
                         + ("; add a batch dimension with x[None]" if images.ndim == 3 else ""))
    B, C, H, W = images.shape
    patch_size = checks.integer(patch_size, "patch_size", minimum=1)
    if H % patch_size or W % patch_size:
        raise ValueError(f"patch_size must be a positive integer dividing H={H} and W={W}, got {patch_size!r}")
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)        # (B, C, rows, P, cols, P)
    x = x.permute(0, 2, 4, 1, 3, 5)                        # (B, rows, cols, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)    # (B, N, C·P·P)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify` for square images: (B, N, C·P·P) -> (B, C, H, W)."""
    if not isinstance(patches, torch.Tensor):
        raise TypeError(f"patches must be a tensor of shape (B, N, C·P·P), got {type(patches).__name__}")
    if patches.ndim != 3:
        raise ValueError(f"patches must have shape (B, N, C·P·P), got {tuple(patches.shape)}")
    patch_size = checks.integer(patch_size, "patch_size", minimum=1)
    channels = checks.integer(channels, "channels", minimum=1)
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
        self.patch_size = patch_size = checks.integer(patch_size, "patch_size", minimum=1)
        channels = checks.integer(channels, "channels", minimum=1)
        dim, bias = checks.integer(dim, "dim", minimum=1), _boolean(bias, "bias")
        self.proj = nn.Linear(channels * patch_size * patch_size, dim, bias=bias)   # E

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float images -> (B, N, D) tokens; float64 or uint8 (0–255) images are converted."""
        C = self.proj.in_features // self.patch_size ** 2
        checked = checks.images(images, "images", shape=(C, None, None), from_uint8=True)
        images = _model_images(images, checked, self.proj.weight.dtype)
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
    """softmax(QKᵀ/√d + M) V. Shapes (..., L, d); returns the output and the attention weights (..., L, L).

    ``mask`` (broadcastable to (..., L, L)) is either boolean, True where attention is allowed, or
    float, added to the scores (0 where allowed, −inf where not), as in
    ``torch.nn.functional.scaled_dot_product_attention``. A query that may attend to nothing gets NaN.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of shape (..., L, d), got {type(x).__name__}")
        if x.ndim < 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a float tensor of shape (..., L, d), got shape "
                             f"{tuple(x.shape)} and dtype {x.dtype}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: "
                         "q and k need the same d, k and v the same length")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])     # (..., L, L)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a tensor (bool: True where allowed; float: added to the scores), "
                            f"got {type(mask).__name__}")
        # Plain Python (torch.broadcast_shapes costs tens of µs, and this runs in every layer of every step).
        if mask.ndim > scores.ndim or any(m not in (1, s) for m, s in zip(reversed(mask.shape), reversed(scores.shape))):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores {tuple(scores.shape)}")
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask.is_floating_point():
            scores = scores + mask
        else:
            raise TypeError(f"mask must be bool (True where allowed) or float (added to the scores), "
                            f"got dtype {mask.dtype}")
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadSelfAttention(nn.Module):
    """MSA: h heads of scaled dot-product attention over the tokens, then an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        dim, heads = checks.integer(dim, "dim", minimum=1), checks.integer(heads, "heads", minimum=1)
        if dim % heads:
            raise ValueError(f"heads must divide dim (each head gets dim / heads features), got dim={dim}, heads={heads}")
        self.dim, self.heads = dim, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.last_attention: torch.Tensor | None = None          # (B, h, L, L), kept for plots

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_tokens(x, "x", self.dim, self.qkv.weight)
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d)
        y, weights = scaled_dot_product_attention(q, k, v, mask)
        self.last_attention = weights.detach()
        return self.out(y.transpose(1, 2).reshape(B, L, D))     # (B, L, D)


class MLP(nn.Module):
    """Two linear layers with a GELU between them: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        dim, hidden = checks.integer(dim, "dim", minimum=1), checks.integer(hidden, "hidden", minimum=1)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.fc1.in_features:
            raise ValueError(f"x must be a tensor of shape (..., {self.fc1.in_features}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """One transformer layer, pre-norm: Eq. 2 then Eq. 3."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        mlp_ratio = checks.integer(mlp_ratio, "mlp_ratio", minimum=1)
        self.ln1, self.attn = nn.LayerNorm(dim), MultiHeadSelfAttention(dim, heads)
        self.ln2, self.mlp = nn.LayerNorm(dim), MLP(dim, mlp_ratio * dim)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_tokens(z, "z", self.attn.dim, self.ln1.weight)
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
        """Eq. 1: z₀ = [x_class; x_p¹E; …; x_pᴺE] + E_pos, shape (B, N+1, D).

        ``images`` (B, C, H, W) are float, as the book's images in [0, 1]; float64 images are made
        float32 and uint8 images (0–255) are scaled to [0, 1]. NaN or infinite pixels are refused.
        """
        c = self.config
        checked = checks.images(images, "images", shape=(c.channels, c.image_size, c.image_size), from_uint8=True)
        images = _model_images(images, checked, self.cls_token.dtype)
        tokens = self.patch_embed.proj(patchify(images, c.patch_size))       # (B, N, D): x_pⁱE, checked once above
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
        if any(b.attn.last_attention is None for b in self.blocks):
            raise RuntimeError("there are no attention maps yet: run the ViT on a batch of images first")
        return [b.attn.last_attention for b in self.blocks]


class ViTClassifier(nn.Module):
    """A ViT with one linear head per attribute, reading the class token."""

    def __init__(self, config: ViTConfig, classes: dict[str, int]):
        super().__init__()
        if not isinstance(classes, dict) or not classes:
            raise TypeError(f"classes must be a non-empty dict of attribute name -> class count, got {classes!r}")
        if not all(isinstance(k, str) and k for k in classes):
            raise ValueError(f"classes must map attribute names (strings) to class counts, got keys {list(classes)}")
        try:
            classes = {k: checks.integer(n, f"classes[{k!r}]", minimum=2) for k, n in classes.items()}
        except (TypeError, ValueError) as err:
            raise ValueError(f"classes must map attribute names to class counts > 1: {err}") from None
        self.vit = ViT(config)
        self.heads = nn.ModuleDict({name: nn.Linear(config.dim, n) for name, n in classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.vit.features(images)                                        # (B, D)
        return {name: head(y) for name, head in self.heads.items()}          # name -> (B, classes)


#: The attributes chapter 1's classifier reads, with their class counts (ShapesWorld's lists).
SHAPE_ATTRIBUTES = {"colour": 6, "kind": 4, "position": 9}
#: Grey = a weighted sum of R, G and B (ITU-R BT.601 luma weights), as CLIP's grey copies in chapter 2.
LUMA = (0.299, 0.587, 0.114)


def grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) colour images -> the same images in grey, still with three equal channels."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)[:, None, None]
    return (images * weights).sum(1, keepdim=True).expand_as(images)


def train_classifier(config: ViTConfig, steps: int, n_train: int, batch: int = 96, lr: float = 3e-3,
                     p_grey: float = 0.0, seed: int = 0, device: str | torch.device | None = None,
                     verbose: bool = True):
    """Train (or load from the cache) chapter 1's ViT classifier of colour, kind and position.

    The ViT reads a ShapesWorld image (world seed 0, ``n_train`` images of the ``train`` split) and one
    linear head per attribute reads its representation y; the loss is the sum of the three
    cross-entropies. With ``p_grey`` > 0 that share of each batch is shown in grey: a grey copy keeps
    its kind and position labels and has no colour label (its colour loss is masked), the label
    version of chapter 2's grey copies. Chapters 1 and 2 both call this, so the same arguments give
    the same cached model. Returns the :class:`~vlmlib.cache.Artifact` (load it with
    :func:`load_classifier`).
    """
    from .cache import Artifact, cached
    from .shapesworld import ShapesWorld
    from .training import train

    if not isinstance(config, ViTConfig):
        raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
    recipe = {"vit": config.to_dict(), "steps": checks.integer(steps, "steps", minimum=1),
              "batch": checks.integer(batch, "batch", minimum=1), "lr": checks.number(lr, "lr", low=0.0, low_open=True),
              "n_train": checks.integer(n_train, "n_train", minimum=1), "p_grey": checks.probability(p_grey, "p_grey"),
              "seed": checks.integer(seed, "seed", minimum=0)}
    device = torch.device(device) if device is not None else torch.device("cpu")

    def build() -> Artifact:
        data = ShapesWorld(seed=0).sample(recipe["n_train"], "train", seed=1, captions=None)
        X, Y = data.tensor(device), data.label_tensors(device)
        X_grey = grey(X)
        torch.manual_seed(recipe["seed"])
        model = ViTClassifier(config, SHAPE_ATTRIBUTES).to(device)

        def loss_fn(step):
            i = torch.randint(len(X), (recipe["batch"],), device=device)
            is_grey = torch.rand(len(i), device=device) < recipe["p_grey"]            # (B,)
            out = model(torch.where(is_grey[:, None, None, None], X_grey[i], X[i]))
            weight = {k: torch.ones(len(i), device=device) for k in SHAPE_ATTRIBUTES}
            weight["colour"] = (~is_grey).float()                                    # no colour label in grey

            def mean(v, k):
                return (v * weight[k]).sum() / weight[k].sum().clamp(min=1)

            losses = {k: mean(F.cross_entropy(out[k], Y[k][i], reduction="none"), k) for k in SHAPE_ATTRIBUTES}
            acc = {f"{k} accuracy": mean((out[k].argmax(1) == Y[k][i]).float(), k) for k in SHAPE_ATTRIBUTES}
            return sum(losses.values()), acc

        desc = (f"ViT, position embeddings {'on' if config.pos_embedding else 'off'}"
                + (f", {p_grey:.0%} grey" if p_grey else ""))
        history = train(model, loss_fn, recipe["steps"], lr=recipe["lr"], desc=desc)
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        return Artifact("vit-shapes", recipe, state, history=history)

    return cached("vit-shapes", recipe, build, verbose=verbose)


def load_classifier(artifact, device: str | torch.device | None = None) -> ViTClassifier:
    """The :class:`ViTClassifier` stored in an artifact of :func:`train_classifier`, in eval mode."""
    config = getattr(artifact, "config", None)
    if not isinstance(config, dict) or "vit" not in config:
        raise TypeError("artifact must be what vlmlib.vit.train_classifier returned")
    model = ViTClassifier(ViTConfig(**config["vit"]), SHAPE_ATTRIBUTES)
    model.load_state_dict(artifact.state_dict)
    return model.to(device if device is not None else "cpu").eval()
