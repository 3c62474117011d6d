"""The denoising network and its data space (chapter 5).

:class:`DiffusionConfig` and :class:`Denoiser` (a ``diffusers`` UNet2DModel with its schedule,
built by :func:`build_unet`), images to and from the model's [−1, 1] (:func:`to_model_space`,
:func:`to_image_space`) and the colour–kind class labels (:func:`class_labels`, :data:`NUM_CLASSES`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import checks
from ..shapesworld import COLOUR_NAMES, KINDS
from .schedules import PREDICTION_TYPES, SCHEDULES, Schedule, _check_images, _check_t, make_schedule

LABEL_EMBEDDINGS = ("joint", "factored")


@dataclass
class DiffusionConfig:
    """The denoiser and its process: a small ``diffusers`` UNet2DModel and a noise schedule."""

    image_size: int = 16                     # the size the UNet sees; samples smaller than 32 are upsampled
    channels: tuple = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False                  # self-attention at the lowest resolution
    norm_groups: int = 8
    num_classes: int = 0                     # > 0: label-conditioned (one extra "no label" class)
    label_embedding: str = "joint"           # "joint": one vector per colour–kind class; "factored": colour + kind
    schedule: str = "cosine"
    T: int = 1000
    prediction_type: str = "sample"

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        for name in ("image_size", "layers_per_block", "norm_groups", "T"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DiffusionConfig.{name} must be a positive integer, got {v!r}")
        if not self.channels or any(c < 1 or c % self.norm_groups for c in self.channels):
            raise ValueError(f"every channel count must be a positive multiple of norm_groups={self.norm_groups}, "
                             f"got {self.channels}")
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^(levels−1) = "
                             f"{2 ** (len(self.channels) - 1)}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {self.num_classes!r}")
        if self.label_embedding not in LABEL_EMBEDDINGS:
            raise ValueError(f"label_embedding must be one of {LABEL_EMBEDDINGS}, got {self.label_embedding!r}")
        if self.label_embedding == "factored" and self.num_classes not in (0, len(COLOUR_NAMES) * len(KINDS)):
            raise ValueError(f"a factored label embedding needs num_classes = {len(COLOUR_NAMES) * len(KINDS)} "
                             f"(the colour–kind pairs), got {self.num_classes}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    def make_schedule(self) -> Schedule:
        return make_schedule(self.schedule, self.T)


def build_unet(config: DiffusionConfig):
    """A ``diffusers.UNet2DModel`` for ``config`` (class-conditioned with ``num_classes + 1`` embeddings)."""
    from diffusers import UNet2DModel

    if not isinstance(config, DiffusionConfig):
        raise TypeError(f"config must be a DiffusionConfig, got {type(config).__name__}")
    n = len(config.channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if config.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    factored = config.num_classes and config.label_embedding == "factored"
    return UNet2DModel(sample_size=config.image_size, in_channels=3, out_channels=3,
                       layers_per_block=config.layers_per_block, block_out_channels=config.channels,
                       down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=config.norm_groups,
                       num_class_embeds=(config.num_classes + 1) if config.num_classes and not factored else None,
                       class_embed_type="identity" if factored else None)


class Denoiser(torch.nn.Module):
    """The UNet with what it needs to sample: its config and schedule. ``model(x_t, t, labels)``.

    With ``label_embedding="factored"`` a label is embedded as colour vector + kind vector (each with
    its own "no label" entry), so what the model learns about a kind is shared by all colours.
    """

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.unet = build_unet(config)
        self.schedule = config.make_schedule()
        if config.num_classes and config.label_embedding == "factored":
            dim = self.unet.time_embedding.linear_2.out_features
            self.colour_embedding = torch.nn.Embedding(len(COLOUR_NAMES) + 1, dim)
            self.kind_embedding = torch.nn.Embedding(len(KINDS) + 1, dim)

    def embed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices (colour · len(KINDS) + kind, or num_classes for "no label") -> (B, dim) vectors."""
        none = labels == self.config.num_classes
        colour = torch.where(none, len(COLOUR_NAMES), labels // len(KINDS))
        kind = torch.where(none, len(KINDS), labels % len(KINDS))
        return self.colour_embedding(colour) + self.kind_embedding(kind)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's output (ε, x₀ or v) for noisy images ``x_t`` (B, 3, S, S) at timestep indices ``t``.

        ``labels`` (B,) are class indices in [0, num_classes], num_classes meaning "no label".
        """
        c = self.config
        _check_images(x_t, "x_t")
        if x_t.shape[1:] != (3, c.image_size, c.image_size):
            raise ValueError(f"x_t must have shape (B, 3, {c.image_size}, {c.image_size}), got {tuple(x_t.shape)}")
        t = _check_t(t, len(x_t), c.T)
        if labels is not None and c.num_classes:
            labels = checks.labels(labels, "labels", classes=c.num_classes + 1, length=len(x_t)).to(x_t.device)
        if c.num_classes:
            if labels is None:
                labels = torch.full((len(x_t),), c.num_classes, dtype=torch.long, device=x_t.device)
            if c.label_embedding == "factored":
                labels = self.embed_labels(labels)
            return self.unet(x_t, t, class_labels=labels).sample
        if labels is not None:
            raise ValueError("this model is unconditional: it takes no labels")
        return self.unet(x_t, t).sample


# -- data -------------------------------------------------------------------------------------------
def to_model_space(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) -> [−1, 1], resized (area average) to ``size`` if given."""
    images = checks.images(images, "images", low=0.0, high=1.0)
    if size is not None:
        size = checks.integer(size, "size", minimum=1)
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="area")
    return images * 2 - 1


def to_image_space(x: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Model outputs in [−1, 1] -> images in [0, 1], resized (bicubic) to ``size`` if given."""
    _check_images(x, "x")
    if size is not None:
        size = checks.integer(size, "size", minimum=1)
    x = ((x.clamp(-1, 1) + 1) / 2)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return x


def class_labels(colour: str | Sequence[str], kind: str | Sequence[str], n: int | None = None) -> torch.Tensor:
    """Class indices of colour–kind pairs (colour · len(KINDS) + kind), (n,).

    ``colour`` and ``kind`` are names or lists of names; a single name is repeated ``n`` times (default 1).
    """
    n = 1 if n is None else checks.integer(n, "n", minimum=1)
    colours = [colour] * n if isinstance(colour, str) else checks.text_list(colour, "colour")
    kinds = [kind] * n if isinstance(kind, str) else checks.text_list(kind, "kind")
    if len(colours) != len(kinds):
        raise ValueError(f"give as many colours as kinds, got {len(colours)} and {len(kinds)}")
    for c in colours:
        if c not in COLOUR_NAMES:
            raise ValueError(f"unknown colour {c!r}; expected one of {list(COLOUR_NAMES)}")
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown kind {k!r}; expected one of {list(KINDS)}")
    return torch.tensor([COLOUR_NAMES.index(c) * len(KINDS) + KINDS.index(k) for c, k in zip(colours, kinds)])


NUM_CLASSES = len(COLOUR_NAMES) * len(KINDS)
