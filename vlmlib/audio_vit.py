"""Chapter 1's ViT reading spectrograms: the idea of the Audio Spectrogram Transformer (chapter 9).

AST (Gong et al., 2021) cuts a log-mel spectrogram into patches and feeds them to a ViT, exactly as
an image. Here the log-mel (B, n_mels, frames) is a one-channel image n_mels high and ``frames``
wide. :class:`SpectrogramViT` *is* :class:`vlmlib.vit.ViT` (same patch embedding E, class token,
blocks and final LayerNorm); only two things change, because a spectrogram is not square:

- the position embeddings E_pos have one row per (mel, time) patch: (n_mels/P)·(frames/P) + 1;
- :meth:`SpectrogramViT.embed` takes (B, n_mels, frames) and adds the channel axis itself.

:func:`patchify` already cuts rectangles, so the tokens are the patches row by row: first the
lowest mel band across time, then the next band up. AST also overlaps its patches (stride 10 for
16×16) and starts from ImageNet weights; neither is needed for ShapesWorld's words.

:func:`train_word_classifier` trains the classifier of spoken words (cached); :func:`accuracy`
measures it, for example on held-out voices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .vit import ViT, ViTConfig, patchify


@dataclass
class AudioViTConfig:
    """The size of a spectrogram ViT: input (n_mels, frames) cut into P×P patches."""

    n_mels: int = 80
    frames: int = 100                # 1 s at Whisper's hop of 10 ms
    patch_size: int = 10             # 8 mel bands × 10 time steps = 80 tokens
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 2

    def __post_init__(self):
        for name in ("n_mels", "frames", "patch_size", "dim", "depth", "heads", "mlp_ratio"):
            setattr(self, name, checks.integer(getattr(self, name), f"AudioViTConfig.{name}", minimum=1))
        if self.n_mels % self.patch_size or self.frames % self.patch_size:
            raise ValueError(f"AudioViTConfig.patch_size {self.patch_size} must divide n_mels {self.n_mels} "
                             f"and frames {self.frames}")
        self.vit()                       # ViTConfig checks the rest (heads divide dim, …)

    def vit(self) -> ViTConfig:
        """Chapter 1's config for the same transformer (``image_size`` = n_mels, one channel)."""
        return ViTConfig(image_size=self.n_mels, patch_size=self.patch_size, channels=1, dim=self.dim,
                         depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along (mel, time)."""
        return self.n_mels // self.patch_size, self.frames // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        return asdict(self)


def check_log_mel(value, name: str = "log_mel", n_mels: int | None = None, frames: int | None = None) -> torch.Tensor:
    """A float32 batch of spectrograms (B, n_mels, frames) with finite values (NumPy arrays accepted)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        value = torch.from_numpy(np.ascontiguousarray(value))
    want = f"(B, {n_mels or 'n_mels'}, {frames or 'frames'})"
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a float tensor {want} (speech.log_mel makes one), got {type(value).__name__}")
    if value.ndim != 3 or (n_mels is not None and value.shape[1] != n_mels) or (frames is not None and value.shape[2] != frames):
        raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}"
                         + ("; add a batch dimension with x[None]" if value.ndim == 2 else ""))
    if len(value) == 0:
        raise ValueError(f"{name} is empty (a batch of 0 spectrograms)")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {value.dtype}")
    value = value.float()
    if not torch.isfinite(value.sum()) and not torch.isfinite(value).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return value


class SpectrogramViT(ViT):
    """Chapter 1's ViT on log-mel spectrograms: (B, n_mels, frames) -> tokens (B, N+1, D); token 0 is the class token."""

    def __init__(self, config: AudioViTConfig):
        if not isinstance(config, AudioViTConfig):
            raise TypeError(f"config must be an AudioViTConfig, got {type(config).__name__}")
        super().__init__(config.vit())
        self.audio_config = config
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.dim))   # one per (mel, time) patch
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def embed(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Eq. 1 on a spectrogram: z₀ = [x_class; x_p¹E; …; x_pᴺE] + E_pos, shape (B, N+1, D)."""
        c = self.audio_config
        x = check_log_mel(log_mel, "log_mel", c.n_mels, c.frames).to(self.cls_token.device, self.cls_token.dtype)
        tokens = self.patch_embed.proj(patchify(x[:, None], c.patch_size))   # (B, N, D), N = (n_mels/P)·(frames/P)
        cls = self.cls_token.expand(len(x), -1, -1)                          # (B, 1, D)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed              # (B, N+1, D)


class AudioClassifier(nn.Module):
    """A spectrogram ViT with a linear head on the class token: (B, n_mels, frames) -> logits (B, classes)."""

    def __init__(self, config: AudioViTConfig, classes: int):
        super().__init__()
        self.encoder = SpectrogramViT(config)
        self.head = nn.Linear(config.dim, checks.integer(classes, "classes", minimum=2))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(log_mel))                    # (B, classes)


@torch.no_grad()
def predict(model: AudioClassifier, log_mel, batch_size: int = 256) -> torch.Tensor:
    """The predicted class of each spectrogram, (B,)."""
    if not isinstance(model, AudioClassifier):
        raise TypeError(f"model must be an AudioClassifier, got {type(model).__name__}")
    model.eval()
    x = check_log_mel(log_mel)
    return torch.cat([model(x[i:i + batch_size]).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: AudioClassifier, log_mel, labels) -> float:
    """The share of spectrograms whose word the classifier names correctly."""
    pred = predict(model, log_mel)
    labels = checks.labels(labels, "labels", classes=model.head.out_features, length=len(pred))
    return (pred == labels).float().mean().item()


def augment(log_mel: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each spectrogram in time by up to ``max_shift`` frames (filling with its own quietest value).

    Words start at slightly different times in real recordings; shifting teaches the model that
    *when* a word starts does not matter.
    """
    if max_shift == 0:
        return log_mel
    B, M, T = log_mel.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (B,), generator=generator)
    floor = log_mel.amin(dim=(1, 2), keepdim=True).expand(B, M, T)
    idx = (torch.arange(T)[None] - shifts[:, None])                          # (B, T): source frame
    valid = (idx >= 0) & (idx < T)
    out = log_mel.gather(2, idx.clamp(0, T - 1)[:, None].expand(B, M, T).to(log_mel.device))
    return torch.where(valid[:, None].to(log_mel.device), out, floor)


def training_recipe(steps, batch, lr, max_shift, seed, data_key, n: int, min_batch: int = 1) -> dict:
    """The checked settings of a cached training run on spectrograms (part of its cache key); ``data_key``
    says how the ``n`` training clips were made (default ``{"n": n}``)."""
    return {"steps": checks.integer(steps, "steps", minimum=1), "batch": checks.integer(batch, "batch", minimum=min_batch),
            "lr": checks.number(lr, "lr", low=0.0, low_open=True), "max_shift": checks.integer(max_shift, "max_shift", minimum=0),
            "seed": checks.integer(seed, "seed", minimum=0), "data": data_key if data_key is not None else {"n": n}}


def train_word_classifier(config: AudioViTConfig, train_mel, train_labels, classes: int, steps: int = 400,
                          batch: int = 64, lr: float = 2e-3, max_shift: int = 8, seed: int = 0,
                          name: str = "audio-vit-words", data_key: dict | None = None, verbose: bool = True):
    """Train (or load from the cache) a spectrogram ViT that names the spoken word.

    ``train_mel`` (N, n_mels, frames) and ``train_labels`` (N,) are the training set; ``data_key``
    (a dict saying how they were made, e.g. ``{"n": 2000, "seed": 0}``) goes into the cache key with
    the config and recipe, so other data is never served a stale model. Returns the cache's
    :class:`~vlmlib.cache.Artifact`; :func:`load_word_classifier` makes the model. The defaults are
    the measured recipe: on 1500 words of ``speech.spoken_words(1500, "train", 0)`` (log-mel of 100
    frames), one run of 400 steps took about 80 s on one busy core; 99% of 300 test words of the seen voices
    and 94% of 300 of held-out voices were named right.
    """
    from .cache import Artifact, cached
    from .training import train

    if not isinstance(config, AudioViTConfig):
        raise TypeError(f"config must be an AudioViTConfig, got {type(config).__name__}")
    X = check_log_mel(train_mel, "train_mel", config.n_mels, config.frames)
    classes = checks.integer(classes, "classes", minimum=2)
    Y = checks.labels(train_labels, "train_labels", classes=classes, length=len(X))
    recipe = {"model": config.to_dict(), "classes": classes,
              **training_recipe(steps, batch, lr, max_shift, seed, data_key, len(X))}

    def build() -> Artifact:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = AudioClassifier(config, classes)

        def loss_fn(step):
            i = torch.randint(len(X), (batch,), generator=g)
            logits = model(augment(X[i], max_shift, g))
            return F.cross_entropy(logits, Y[i]), {"accuracy": (logits.argmax(1) == Y[i]).float().mean()}

        history = train(model, loss_fn, steps, lr=lr, desc="spectrogram ViT")
        return Artifact(name, recipe, {k: v.cpu() for k, v in model.state_dict().items()}, history=history)

    return cached(name, recipe, build, verbose=verbose)


def load_word_classifier(artifact) -> AudioClassifier:
    """The :class:`AudioClassifier` stored by :func:`train_word_classifier`, in eval mode."""
    config = getattr(artifact, "config", None)
    if not isinstance(config, dict) or "model" not in config or "classes" not in config:
        raise TypeError("artifact must be what vlmlib.audio_vit.train_word_classifier returned")
    model = AudioClassifier(AudioViTConfig(**config["model"]), config["classes"])
    model.load_state_dict(artifact.state_dict)
    return model.eval()
