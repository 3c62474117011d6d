"""Diffusion models from the equations up (Ho et al., 2020; Nichol & Dhariwal, 2021; Song et al., 2021).

Introduced in chapter 5. The forward process adds Gaussian noise step by step,
q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I), which has the closed form
q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I) (:func:`q_sample`, equal to ``DDPMScheduler.add_noise``).
A ``diffusers`` :class:`~diffusers.UNet2DModel` learns to undo it; :func:`ddpm_reverse_step` is the
paper's Algorithm 2 and :func:`ddim_step` the deterministic (η = 0) or stochastic DDIM update,
both tested equal to the ``diffusers`` schedulers' ``step``::

    model, record = load_checkpoint()                # chapter 5's denoiser, shipped with vlmlib
    images = sample(model, 16, steps=25, sampler="ddim", labels=class_labels("red", "circle", 16),
                    guidance=2.0)                    # classifier-free guidance, w = 2

**Timestep convention.** As in ``diffusers``, index ``k ∈ {0, …, T−1}`` is the paper's t = k+1:
``schedule.alpha_bar[k]`` is ᾱ_{k+1}, and ``k = −1`` stands for t = 0 (ᾱ = 1, the clean image).
Images live in [−1, 1] inside this module (:func:`to_model_space` / :func:`to_image_space`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import checks
from .cache import Artifact, cached
from .plotting import progress
from .shapesworld import COLOUR_NAMES, KINDS, ShapesWorld

SCHEDULES = ("linear", "cosine")
LABEL_EMBEDDINGS = ("joint", "factored")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")   # diffusers' names for ε, x₀ and v
SAMPLERS = ("ddpm", "ddim")


# -- schedules --------------------------------------------------------------------------------------
@dataclass
class Schedule:
    """The noise schedule: β_t, α_t = 1 − β_t and ᾱ_t = Π_{s≤t} α_s, each a float32 tensor (T,)."""

    kind: str
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor

    @property
    def T(self) -> int:
        return len(self.betas)

    def snr(self) -> torch.Tensor:
        """The signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at every step, (T,)."""
        return self.alpha_bar / (1 - self.alpha_bar)

    def alpha_bar_at(self, t: torch.Tensor | int) -> torch.Tensor:
        """ᾱ at index ``t``, with ᾱ = 1 at ``t = −1`` (the clean image)."""
        t = torch.as_tensor(t, dtype=torch.long)
        one = torch.ones((), dtype=self.alpha_bar.dtype)
        return torch.where(t >= 0, self.alpha_bar[t.clamp(min=0)], one)

    def to(self, device) -> "Schedule":
        return Schedule(self.kind, self.betas.to(device), self.alphas.to(device), self.alpha_bar.to(device))


def _cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """f(u) = cos²(((u + s)/(1 + s)) · π/2), u = t/T (Nichol & Dhariwal, Eq. 17)."""
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def make_schedule(kind: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                  max_beta: float = 0.999) -> Schedule:
    """A noise schedule of ``T`` steps.

    ``"linear"``: β from ``beta_start`` to ``beta_end`` (DDPM: 1e-4 to 0.02 over T = 1000).
    ``"cosine"``: ᾱ_t = f(t/T)/f(0) with f(u) = cos²((u + 0.008)/1.008 · π/2), so
    β_t = 1 − f(t/T)/f((t−1)/T), clipped to ``max_beta`` (diffusers' ``"squaredcos_cap_v2"``).
    """
    kind = checks.choice(kind, "kind", SCHEDULES)
    T = checks.integer(T, "T", minimum=2)
    beta_start = checks.number(beta_start, "beta_start")
    beta_end = checks.number(beta_end, "beta_end")
    max_beta = checks.number(max_beta, "max_beta")
    if kind == "linear":
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start!r} and {beta_end!r}")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    else:
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
        betas = torch.tensor([min(1 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), max_beta)
                              for i in range(T)], dtype=torch.float32)
    alphas = 1.0 - betas
    return Schedule(kind, betas, alphas, torch.cumprod(alphas, dim=0))


# -- the forward process ----------------------------------------------------------------------------
def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor of shape (B, C, H, W), got {_describe(x)}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _check_t(t, batch: int, T: int, allow_minus_one: bool = False) -> torch.Tensor:
    """Timesteps as a (B,) long tensor; an int is broadcast to the batch."""
    if isinstance(t, bool):
        raise ValueError(f"t must be an integer or an integer tensor, got {t!r}")
    if isinstance(t, int):
        t = torch.full((batch,), t, dtype=torch.long)
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"t must be an integer or an integer tensor of timestep indices, got {_describe(t)}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must hold one timestep per image: shape ({batch},), got {tuple(t.shape)}")
    low = -1 if allow_minus_one else 0
    if bool((t < low).any()) or bool((t >= T).any()):
        raise ValueError(f"timestep indices must lie in [{low}, {T - 1}] (index k is the paper's t = k+1), "
                         f"got values from {int(t.min())} to {int(t.max())}")
    return t.long()


def _as_alpha_bar(alpha_bar) -> torch.Tensor:
    if isinstance(alpha_bar, Schedule):
        return alpha_bar.alpha_bar
    if not isinstance(alpha_bar, torch.Tensor) or alpha_bar.ndim != 1 or not alpha_bar.dtype.is_floating_point:
        raise ValueError(f"alpha_bar must be a Schedule or a float tensor (T,), got {_describe(alpha_bar)}")
    if not bool(((alpha_bar > 0) & (alpha_bar <= 1)).all()):      # NaN fails this too
        bad = alpha_bar[~((alpha_bar > 0) & (alpha_bar <= 1))][0].item()
        raise ValueError(f"alpha_bar must hold values in (0, 1] (ᾱ_t is the share of the signal's variance left), "
                         f"got {bad!r}")
    return alpha_bar


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def q_sample(x0: torch.Tensor, t, noise: torch.Tensor, alpha_bar) -> torch.Tensor:
    """The closed form of the forward process (DDPM Eq. 4): x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε.

    ``t`` is an index (int or (B,) tensor) into ``alpha_bar`` (a tensor (T,) or a :class:`Schedule`).
    """
    _check_images(x0, "x0")
    if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}, got {_describe(noise)}")
    ab = _as_alpha_bar(alpha_bar)
    t = _check_t(t, len(x0), len(ab))
    a = _bcast(ab.to(x0.device)[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def noise_step_by_step(x0: torch.Tensor, t: int, schedule: Schedule, generator: torch.Generator | None = None,
                       return_all: bool = False):
    """Run the chain x_k = √(1−β_k) x_{k−1} + √β_k ε_k for k = 0 … t, a fresh ε_k each step.

    Returns x_t, or the list [x_0, x_(index 0), …, x_t] with ``return_all``. In distribution this
    equals :func:`q_sample` at ``t``: a sum of independent Gaussians is one Gaussian with variance
    1 − ᾱ_t. (The two agree on every draw only if ε = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t) is reused,
    which :func:`equivalent_noise` computes.)
    """
    _check_images(x0, "x0")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (see make_schedule), got {type(schedule).__name__}")
    t = checks.integer(t, "t", minimum=0, maximum=schedule.T - 1)
    x, path = x0, [x0]
    for k in range(t + 1):
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        beta = schedule.betas[k].item()
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * eps
        if return_all:
            path.append(x)
    return path if return_all else x


def equivalent_noise(x0: torch.Tensor, xt: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """The one ε with x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (a standard normal draw when x_t came from the chain)."""
    _check_images(x0, "x0")
    _check_images(xt, "xt")
    if xt.shape != x0.shape:
        raise ValueError(f"xt must have x0's shape {tuple(x0.shape)}, got {tuple(xt.shape)}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (see make_schedule), got {type(schedule).__name__}")
    a = schedule.alpha_bar[_check_t(t, len(x0), schedule.T)]
    a = _bcast(a, x0)
    return (xt - a.sqrt() * x0) / (1 - a).sqrt()


# -- converting between what a network predicts -----------------------------------------------------
def target_for(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
               alpha_bar) -> torch.Tensor:
    """What the network is trained to output: ε, x₀ (``"sample"``) or v = √ᾱ ε − √(1−ᾱ) x₀."""
    prediction_type = checks.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    _check_images(x0, "x0")
    if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}, got {_describe(noise)}")
    ab = _as_alpha_bar(alpha_bar)
    t = _check_t(t, len(x0), len(ab))
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    a = _bcast(ab.to(x0.device)[t], x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def to_x0_eps(output: torch.Tensor, t, x_t: torch.Tensor, alpha_bar,
              prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """The network's (x̂₀, ε̂) from its output, whatever it was trained to predict."""
    prediction_type = checks.choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    _check_images(x_t, "x_t")
    if not isinstance(output, torch.Tensor) or output.shape != x_t.shape:
        raise ValueError(f"output must be a tensor of x_t's shape {tuple(x_t.shape)}, got {_describe(output)}")
    ab = _as_alpha_bar(alpha_bar)
    t = _check_t(t, len(x_t), len(ab))
    a = _bcast(ab.to(x_t.device)[t], x_t)
    if prediction_type == "epsilon":
        eps = output
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    elif prediction_type == "sample":
        x0 = output
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    else:
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * output
        eps = a.sqrt() * output + (1 - a).sqrt() * x_t
    return x0, eps


# -- the reverse process ----------------------------------------------------------------------------
def _check_step(eps, t, x_t, schedule, noise, t_prev, x0=None):
    """Check a reverse step's arguments; return ``(t, t_prev)`` as ints."""
    _check_images(x_t, "x_t")
    for name, value in (("eps", eps), ("noise", noise), ("x0", x0)):
        if (value is not None or name == "eps") and (not isinstance(value, torch.Tensor) or value.shape != x_t.shape):
            raise ValueError(f"{name} must be a tensor of x_t's shape {tuple(x_t.shape)}, got {_describe(value)}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (see make_schedule), got {type(schedule).__name__}")
    t = checks.integer(t, "t", minimum=0, maximum=schedule.T - 1)
    t_prev = t - 1 if t_prev is None else checks.integer(t_prev, "t_prev", minimum=-1, maximum=t - 1)
    return t, t_prev


def ddpm_reverse_step(eps: torch.Tensor, t: int, x_t: torch.Tensor, schedule: Schedule,
                      noise: torch.Tensor | None = None, t_prev: int | None = None,
                      x0: torch.Tensor | None = None) -> torch.Tensor:
    """One step of DDPM sampling, Algorithm 2 of Ho et al. (2020) with σ_t² = β̃_t:

        x_{t−1} = (1/√α_t) · (x_t − (1 − α_t)/√(1 − ᾱ_t) · ε_θ) + σ_t z,
        σ_t² = β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t,   z ~ N(0, I), and z = 0 at the last step.

    ``t`` is an index (the paper's t is ``t + 1``); ``noise`` is z (drawn if ``None``). With a
    ``t_prev`` below ``t − 1`` (sampling on a sub-sequence of steps) α_t is replaced by
    ᾱ_t / ᾱ_{t_prev}, as ``DDPMScheduler`` does with fewer inference steps.

    With ``x0`` (an estimate of the clean image, e.g. clamped to [−1, 1]) the mean is the posterior
    mean written with x̂₀, μ = √ᾱ_prev β_t/(1−ᾱ_t) · x̂₀ + √α_t (1−ᾱ_prev)/(1−ᾱ_t) · x_t, as
    ``DDPMScheduler.step`` computes it; equal to the line above when ε and x̂₀ agree, but it does
    not divide by √ᾱ_t, which is tiny near t = T.
    """
    t, t_prev = _check_step(eps, t, x_t, schedule, noise, t_prev, x0)
    ab_t = schedule.alpha_bar[t].item()
    ab_prev = schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    alpha_t = ab_t / ab_prev
    beta_t = 1 - alpha_t
    if x0 is None:
        mean = (x_t - beta_t / math.sqrt(1 - ab_t) * eps) / math.sqrt(alpha_t)
    else:
        mean = (math.sqrt(ab_prev) * beta_t / (1 - ab_t)) * x0 + (math.sqrt(alpha_t) * (1 - ab_prev) / (1 - ab_t)) * x_t
    if t == 0:                                              # the last step: no noise
        return mean
    var = max((1 - ab_prev) / (1 - ab_t) * beta_t, 1e-20)   # β̃_t
    z = noise if noise is not None else torch.randn_like(x_t)
    return mean + math.sqrt(var) * z


def ddim_step(eps: torch.Tensor, t: int, x_t: torch.Tensor, schedule: Schedule, t_prev: int | None = None,
              eta: float = 0.0, noise: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step (Song et al., 2021, Eq. 12, in DDPM's notation ᾱ):

        x̂₀ = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t,
        x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev − σ²) · ε_θ + σ z,
        σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).

    η = 0 is deterministic; η = 1 has DDPM's variance. ``t_prev = −1`` jumps to the clean image.
    With ``x0`` given (e.g. clamped to [−1, 1]) it is used instead of the first line, as
    ``DDIMScheduler.step(..., use_clipped_model_output=True)`` does.
    """
    t, t_prev = _check_step(eps, t, x_t, schedule, noise, t_prev, x0)
    eta = checks.number(eta, "eta", low=0.0)
    ab_t = schedule.alpha_bar[t].item()
    ab_prev = schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    if x0 is None:
        x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
    out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0:
        z = noise if noise is not None else torch.randn_like(x_t)
        out = out + sigma * z
    return out


def timesteps_for(steps: int, T: int) -> list[int]:
    """The sub-sequence of ``steps`` indices a sampler visits, from high noise to low.

    Evenly spaced, ``T − 1`` first and ``0`` last ("trailing"-like, so the first step starts
    from pure noise even with few steps).
    """
    T = checks.integer(T, "T", minimum=1)
    steps = checks.integer(steps, "steps", minimum=1, maximum=T)
    if steps == 1:
        return [T - 1]
    ts = [round(T - 1 - i * (T - 1) / (steps - 1)) for i in range(steps)]
    return ts


# -- the network ------------------------------------------------------------------------------------
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


# -- training ---------------------------------------------------------------------------------------
@dataclass
class Recipe:
    """How the denoiser is trained (the cache key is made of this and the config)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: float = 0.05
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    ema_warmup: bool = True                 # decay = min(ema_decay, (1 + n)/(10 + n)) at update n
    n_train: int = 20_000
    label_dropout: float = 0.2              # conditional models: fraction of "no label" examples
    min_snr_gamma: float = 0.0              # > 0: Min-SNR-γ loss weighting (Hang et al., 2023)
    split: str = "all"
    world_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "n_train"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Recipe.{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"Recipe.lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"Recipe.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not (isinstance(self.min_snr_gamma, (int, float)) and self.min_snr_gamma >= 0):
            raise ValueError(f"Recipe.min_snr_gamma must be a non-negative number, got {self.min_snr_gamma!r}")
        if not 0 <= self.label_dropout <= 1:
            raise ValueError(f"Recipe.label_dropout must lie in [0, 1], got {self.label_dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class EMA:
    """An exponential moving average of a model's weights: θ_ema ← d·θ_ema + (1 − d)·θ.

    With ``warmup`` the decay is min(decay, (1 + n)/(10 + n)) at the n-th update, so the average is
    not dragged back to the random initialisation in short runs. ``diffusers``' ``EMAModel`` (with
    ``use_ema_warmup=False``) uses the same formula one update later, with decay 0 at its first update:
    this EMA after n updates equals ``EMAModel`` stepped once on the starting weights and then on
    the same n (``tests/test_diffusion.py`` checks it). The average's memory is about 1/(1 − d)
    updates: 200 for d = 0.995, once the warm-up has reached d (after about 1,800 updates).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.995, warmup: bool = True):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        decay = checks.number(decay, "decay", low=0.0, high=1.0, high_open=True)
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if not isinstance(model, torch.nn.Module) or model.state_dict().keys() != self.shadow.keys():
            raise ValueError("model must be the module this EMA was made for (the same parameter names)")
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}


def ema_weights(updates: int, decay: float = 0.995, warmup: bool = True) -> torch.Tensor:
    """How much each set of weights counts in :class:`EMA`'s average after ``updates`` updates.

    Returns a float64 tensor (updates + 1,): entry 0 is the starting weights, entry k the weights
    after training step k. The entries sum to 1; the last ones are the most recent steps.
    """
    updates = checks.integer(updates, "updates", minimum=0)
    decay = checks.number(decay, "decay", low=0.0, high=1.0, high_open=True)
    w = torch.zeros(updates + 1, dtype=torch.float64)
    w[0] = 1.0
    for n in range(1, updates + 1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        w[:n] *= d
        w[n] = 1 - d
    return w


def _check_denoiser(model) -> None:
    """A denoiser: a module with a ``schedule`` and a ``config.prediction_type``, called as
    ``model(x_t, t, condition)`` (chapter 5's :class:`Denoiser`, chapter 6's text-conditioned one)."""
    if not (isinstance(model, torch.nn.Module) and isinstance(getattr(model, "schedule", None), Schedule)
            and getattr(getattr(model, "config", None), "prediction_type", None) in PREDICTION_TYPES):
        raise TypeError(f"model must be a Denoiser (or a text-conditioned denoiser), got {type(model).__name__}")


def diffusion_loss(model: Denoiser, x0: torch.Tensor, labels=None,
                   generator: torch.Generator | None = None, min_snr_gamma: float = 0.0) -> torch.Tensor:
    """L_simple (DDPM Eq. 14) for the model's target, t uniform:
    ‖target − f_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖².

    ``labels`` is whatever condition the model takes (class indices for a :class:`Denoiser`, a
    text condition for chapter 6's model), passed on as ``model(x_t, t, labels)``.

    With ``min_snr_gamma`` = γ > 0 each example is weighted so that, measured as an error in x₀,
    its weight is min(SNR_t, γ) (Min-SNR-γ, Hang et al., 2023): ε-prediction's weight SNR_t, capped.
    In the model's own target the weights are min(SNR, γ) for x₀, min(SNR, γ)/SNR for ε and
    min(SNR, γ)/(SNR + 1) for v, as in ``diffusers``' ``train_text_to_image.py`` (``--snr_gamma``).
    """
    _check_denoiser(model)
    _check_images(x0, "x0")
    min_snr_gamma = checks.number(min_snr_gamma, "min_snr_gamma", low=0.0)
    sched = model.schedule
    t = torch.randint(0, sched.T, (len(x0),), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = q_sample(x0, t, noise, sched.alpha_bar)
    pred = model.config.prediction_type
    target = target_for(pred, x0, noise, t, sched.alpha_bar)
    err = (model(x_t, t, labels) - target).pow(2).mean(dim=(1, 2, 3))           # (B,)
    if min_snr_gamma > 0:
        snr = sched.snr().to(x0.device)[t]
        capped = snr.clamp(max=min_snr_gamma)
        # the x₀ error is the ε error / SNR and the v error / (SNR + 1): rescale to min(SNR, γ)
        err = err * {"sample": capped, "epsilon": capped / snr, "v_prediction": capped / (snr + 1)}[pred]
    return err.mean()


def train_diffusion(config: DiffusionConfig, recipe: Recipe, device: str | torch.device = "cpu",
                    time_limit: float | None = None, desc: str = "training the denoiser"):
    """Train a denoiser on ShapesWorld; return ``(model with EMA weights, raw model, history, seconds)``.

    ``time_limit`` (seconds) stops early, keeping the learning-rate schedule of ``recipe.steps``.
    """
    from .training import cosine_schedule

    if not isinstance(config, DiffusionConfig) or not isinstance(recipe, Recipe):
        raise TypeError("train_diffusion needs a DiffusionConfig and a Recipe")
    torch.manual_seed(recipe.seed)
    world = ShapesWorld(seed=recipe.world_seed)
    data = world.sample(recipe.n_train, split=recipe.split, seed=recipe.seed, captions=None)
    images = to_model_space(data.tensor(), config.image_size).to(device)
    labels = torch.from_numpy(data.labels["colour"] * len(KINDS) + data.labels["kind"]).to(device)
    model = Denoiser(config).to(device)
    model.schedule = model.schedule.to("cpu")
    ema = EMA(model, recipe.ema_decay, recipe.ema_warmup)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warm = int(recipe.warmup * recipe.steps)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, recipe.steps, warm))
    g = torch.Generator().manual_seed(recipe.seed)
    history: dict[str, list[float]] = {"loss": []}
    start = time.perf_counter()
    model.train()
    bar = progress(range(recipe.steps), desc=desc)
    for step in bar:
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=g).to(device)
        x0 = images[idx]
        y = None
        if config.num_classes:
            y = labels[idx].clone()
            drop = torch.rand(len(y), generator=g).to(device) < recipe.label_dropout
            y[drop] = config.num_classes
        loss = diffusion_loss(model, x0, y, generator=g, min_snr_gamma=recipe.min_snr_gamma)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; try a lower learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        ema.update(model)
        history["loss"].append(loss.item())
        if step % 25 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
    seconds = time.perf_counter() - start
    model.eval()
    ema_model = Denoiser(config).to(device)
    ema_model.load_state_dict(ema.state_dict())
    ema_model.eval()
    history["steps_per_second"] = [len(history["loss"]) / seconds]
    return ema_model, model, history, seconds


# -- sampling ---------------------------------------------------------------------------------------
THRESHOLDS = ("static", "dynamic", "none")


def threshold_x0(x0: torch.Tensor, kind: str = "static", percentile: float = 0.995) -> torch.Tensor:
    """Keep a predicted x̂₀ inside the data range [−1, 1].

    ``"static"`` clips it (``diffusers``' ``clip_sample``). ``"dynamic"`` is Imagen's dynamic
    thresholding (Saharia et al., 2022, §2.3): per image, s = the ``percentile`` quantile of |x̂₀|;
    when s > 1, x̂₀ is clipped to [−s, s] and divided by s, so saturated pixels are pulled inwards
    instead of piling up at ±1 (``diffusers``' ``DDPMScheduler`` with ``thresholding=True``, whose
    default ratio is 0.995). ``"none"`` leaves it as it is.
    """
    _check_images(x0, "x0")
    kind = checks.choice(kind, "threshold", THRESHOLDS)
    if kind == "none":
        return x0
    if kind == "static":
        return x0.clamp(-1, 1)
    percentile = checks.number(percentile, "percentile", low=0.0, high=1.0, low_open=True)
    flat = x0.reshape(len(x0), -1)
    s = torch.quantile(flat.abs().float(), percentile, dim=1).to(x0.dtype).clamp(min=1)       # (B,)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s


def guide(uncond: torch.Tensor, cond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance, ``diffusers``' and Imagen's convention: ε̃ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)).

    w = 1 is the plain conditional model; Ho & Salimans' Eq. 6, (1 + w′)·ε(x, c) − w′·ε(x, ∅), has w′ = w − 1.
    """
    if not isinstance(uncond, torch.Tensor) or not isinstance(cond, torch.Tensor) or uncond.shape != cond.shape:
        raise ValueError("uncond and cond must be tensors of the same shape (the two predictions)")
    w = checks.number(w, "w", low=0.0)
    return uncond + w * (cond - uncond)


@torch.no_grad()
def denoise_loop(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, schedule: Schedule,
                 prediction_type: str, steps: int = 25, sampler: str = "ddim", eta: float = 0.0,
                 generator: torch.Generator | None = None, threshold: str = "static", percentile: float = 0.995,
                 return_path: bool = False, out_size: int = 32, desc: str = "sampling",
                 show_progress: bool = True):
    """The sampling loop shared by every denoiser in the course: from noise ``x`` (B, 3, S, S) to images.

    ``predict(x_t, t)`` returns the model's output (ε, x₀ or v, as ``prediction_type`` says) for a
    batch at timestep indices ``t`` (B,), with any conditioning and guidance already applied. Each
    step turns the output into x̂₀, thresholds it (:func:`threshold_x0`), recomputes the ε that
    agrees with the thresholded x̂₀ (``diffusers``' ``use_clipped_model_output=True``) and takes a
    DDPM or DDIM step. Returns images (B, 3, out_size, out_size) in [0, 1] on the CPU, and with
    ``return_path`` the list of x̂₀ of every step.
    """
    sampler = checks.choice(sampler, "sampler", SAMPLERS)
    threshold = checks.choice(threshold, "threshold", THRESHOLDS)
    ts = timesteps_for(steps, schedule.T)
    device, dtype = x.device, x.dtype
    path = []
    it = progress(range(len(ts)), desc=desc) if show_progress else range(len(ts))
    for i in it:
        t = ts[i]
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((len(x),), t, device=device, dtype=torch.long)
        out = predict(x, tt)
        x0, eps = to_x0_eps(out, t, x, schedule.alpha_bar.to(device), prediction_type)
        x0 = threshold_x0(x0, threshold, percentile)
        ab_t = schedule.alpha_bar[t].item()
        eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)     # the ε that agrees with the thresholded x̂₀
        if return_path:
            path.append(to_image_space(x0, out_size).cpu())
        z = torch.randn(x.shape, generator=generator).to(device, dtype) if (sampler == "ddpm" or eta > 0) else None
        if sampler == "ddpm":
            x = ddpm_reverse_step(eps, t, x, schedule, noise=z, t_prev=t_prev, x0=x0)
        else:
            x = ddim_step(eps, t, x, schedule, t_prev=t_prev, eta=eta, noise=z, x0=x0)
    images = to_image_space(x, out_size).cpu()
    return (images, path) if return_path else images


@torch.no_grad()
def sample(model: Denoiser, n: int, steps: int = 25, sampler: str = "ddim", labels: torch.Tensor | None = None,
           eta: float = 0.0, generator: torch.Generator | None = None, return_path: bool = False,
           out_size: int = 32, desc: str | None = None, show_progress: bool = True, guidance: float = 1.0):
    """Draw ``n`` images (n, 3, out_size, out_size) in [0, 1] with DDPM or DDIM in ``steps`` steps.

    ``labels`` (n,) are class indices (:func:`class_labels`) for a conditioned model. ``guidance``
    w is classifier-free guidance (Ho & Salimans, 2021) as ``diffusers`` writes it:
    ε̃ = ε(x, ∅) + w·(ε(x, y) − ε(x, ∅)); w = 1 is the plain conditional model. This w is
    ``diffusers``' ``guidance_scale`` and Imagen's w; the paper's Eq. 6, ε̃ = (1 + w')·ε(x, y) − w'·ε(x, ∅),
    has w' = w − 1 (so w = 2 here is the paper's w' = 1).

    Each step predicts x̂₀, clamps it to [−1, 1] (``diffusers``' ``clip_sample=True``) and steps
    with the clamped x̂₀ itself (``use_clipped_model_output=True``), so nothing is divided by the
    tiny √ᾱ_t near t = T again. The noise is drawn in float32 from ``generator``; the model's dtype
    (float32, or float64 for a reference) is used for everything else. With ``return_path`` it also
    returns the list of x̂₀ predictions, one per step (for animations).
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a Denoiser, got {type(model).__name__}")
    n = checks.integer(n, "n", minimum=1)
    sampler = checks.choice(sampler, "sampler", SAMPLERS)
    eta = checks.number(eta, "eta", low=0.0)
    out_size = checks.integer(out_size, "out_size", minimum=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    c, sched = model.config, model.schedule
    timesteps_for(steps, sched.T)                 # checks steps before any work
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if labels is not None:
        if not c.num_classes:
            raise ValueError("this model is unconditional: sample it without labels")
        labels = checks.labels(labels, "labels", classes=c.num_classes + 1, length=n).to(device)
    guidance = checks.number(guidance, "guidance", low=0.0)
    if guidance != 1 and labels is None:
        raise ValueError("guidance needs labels: it pushes samples towards the labelled class")
    null = torch.full((n,), c.num_classes, dtype=torch.long, device=device)
    model.eval()

    def predict(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        if guidance != 1:   # one batch of 2n: the unconditional and the conditional prediction
            out_u, out_c = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([null, labels])).chunk(2)
            return guide(out_u, out_c, guidance)
        return model(x, tt, labels)

    x = torch.randn((n, 3, c.image_size, c.image_size), generator=generator).to(device, dtype)
    return denoise_loop(predict, x, sched, c.prediction_type, steps, sampler, eta, generator, "static",
                        return_path=return_path, out_size=out_size,
                        desc=desc or f"{sampler.upper()} sampling, {steps} steps", show_progress=show_progress)


#: Bumped whenever :func:`sample` changes what it draws, so that cached samples are drawn again.
SAMPLER_VERSION = 2


def weights_sha256(model: torch.nn.Module) -> str:
    """The SHA-256 of a model's weights (names, dtypes, shapes and values): what a set of samples came from."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        value = value.detach().cpu().contiguous()
        h.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return h.hexdigest()


def sample_cached(model: Denoiser, n: int, steps: int = 25, sampler: str = "ddim", labels: torch.Tensor | None = None,
                  guidance: float = 1.0, eta: float = 0.0, seed: int = 0, return_path: bool = False,
                  desc: str | None = None, verbose: bool = True) -> dict:
    """:func:`sample` with a fixed seed, through the artifact cache (``vlmlib.cached``).

    The samples are keyed by what produced them: the SHA-256 of the model's weights, every sampler
    setting, ``n``, the seed, the device type and :data:`SAMPLER_VERSION`. The first call samples
    (and times it); later calls load the same images, so scores computed from them are identical.
    Returns ``{"images": (n, 3, 32, 32), "seconds": sampling time when they were drawn,
    "from_cache": bool}`` and, with ``return_path``, ``"path"``: the x̂₀ of every step,
    (steps, n, 3, 32, 32), stored as 8-bit values (x̂₀ is only looked at and read by the judge).
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a Denoiser, got {type(model).__name__}")
    n = checks.integer(n, "n", minimum=1)
    seed = checks.integer(seed, "seed", minimum=0)
    if labels is not None:
        labels = checks.labels(labels, "labels", classes=model.config.num_classes + 1, length=n)
    device = next(model.parameters()).device
    key = {"weights_sha256": weights_sha256(model), "n": n, "steps": steps, "sampler": sampler,
           "labels": None if labels is None else labels.tolist(), "guidance": guidance, "eta": eta, "seed": seed,
           "return_path": bool(return_path), "device": device.type, "sampler_version": SAMPLER_VERSION}

    def build() -> Artifact:
        start = time.perf_counter()
        out = sample(model, n, steps, sampler, labels=labels, eta=eta, generator=torch.Generator().manual_seed(seed),
                     return_path=return_path, desc=desc, guidance=guidance)
        seconds = time.perf_counter() - start
        images, path = out if return_path else (out, None)
        tensors = {"images": images.float().contiguous()}
        if path is not None:
            tensors["path"] = (torch.stack(path) * 255).round().to(torch.uint8).contiguous()
        return Artifact("diffusion-samples", key, tensors, {"seconds": seconds})

    art = cached("diffusion-samples", key, build, verbose=False)
    if verbose and art.from_cache:
        print(f"{desc or f'{sampler.upper()}, {steps} steps'}: {n} samples (loaded from the cache)")
    result = {"images": art.state_dict["images"], "seconds": art.metrics["seconds"], "from_cache": art.from_cache}
    if return_path:
        result["path"] = art.state_dict["path"].float() / 255
    return result


# -- the cached, trained model ----------------------------------------------------------------------
def default_settings(budget: str = "cpu") -> tuple[DiffusionConfig, Recipe]:
    """The configuration and recipe of chapter 5's denoiser for a budget (``"cpu"`` or ``"gpu"``)."""
    budget = checks.choice(budget, "budget", ("cpu", "gpu"))
    if budget == "gpu":
        return (DiffusionConfig(image_size=32, channels=(64, 128, 128), num_classes=NUM_CLASSES),
                Recipe(steps=4000, batch_size=128, n_train=50_000, min_snr_gamma=5.0))
    if budget != "cpu":
        raise ValueError(f"budget must be 'cpu' or 'gpu', got {budget!r}")
    return (DiffusionConfig(image_size=32, channels=(16, 32, 64, 64), num_classes=NUM_CLASSES),
            Recipe(min_snr_gamma=5.0))


def evaluate(model: Denoiser, n: int = 240, steps: int = 20, sampler: str = "ddim", seed: int = 0,
             guidance: float = 1.0) -> dict[str, float]:
    """Judge ``n`` samples (fixed seed, so the numbers can be re-checked).

    ``valid`` and ``fid`` of unconditional samples; for a conditional model also ``cond_valid``,
    ``cond_colour`` and ``cond_kind`` (the fraction with the requested attribute) and ``cond_faithful``
    (valid and right on both), with the labels cycling through every colour–kind pair, sampled
    with classifier-free ``guidance``.
    """
    from . import judge

    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a Denoiser, got {type(model).__name__}")
    n = checks.integer(n, "n", minimum=2)
    seed = checks.integer(seed, "seed", minimum=0)
    g = torch.Generator().manual_seed(seed)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    images = sample(model, n, steps, sampler, generator=g, show_progress=False)
    metrics["sample_seconds"] = time.perf_counter() - start
    s = judge.score(images)
    metrics.update({"valid": s["valid"], "fid": s["fid"], "coverage": s["coverage"]})
    if model.config.num_classes:
        idx = torch.arange(n) % NUM_CLASSES
        images = sample(model, n, steps, sampler, labels=idx, generator=g, show_progress=False,
                        guidance=guidance)
        s = judge.score(images, labels={"colour": idx // len(KINDS), "kind": idx % len(KINDS)})
        metrics.update({"cond_valid": s["valid"], "cond_fid": s["fid"], "cond_colour": s["colour"],
                        "cond_kind": s["kind"], "cond_faithful": s["faithful"]})
    return {k: float(v) for k, v in metrics.items()}


def build_diffusion(config: DiffusionConfig, recipe: Recipe, name: str = "diffusion-shapes",
                    device: str | torch.device = "cpu", verbose: bool = True) -> tuple[Denoiser, Artifact]:
    """The trained denoiser (EMA weights) for ``config`` and ``recipe``: from the cache, or trained now."""
    key = {"model": config.to_dict(), "recipe": recipe.to_dict()}

    def build() -> Artifact:
        model, _, history, seconds = train_diffusion(config, recipe, device)
        metrics = {"train_seconds": seconds, "steps_per_second": history["steps_per_second"][0]}
        try:
            metrics.update(evaluate(model))
        except ImportError:       # the judge is not available: store the model without its scores
            pass
        history = {"loss": history["loss"]}
        return Artifact(name, key, {k: v.cpu() for k, v in model.state_dict().items()}, metrics, history)

    art = cached(name, key, build, verbose=verbose)
    model = Denoiser(config)
    model.load_state_dict(art.state_dict)
    model.eval()
    return model.to(device), art


#: The file name (without suffix) of a checkpoint written by ``python -m tools.train_diffusion``.
CHECKPOINT_NAME = "diffusion-shapes"


def checkpoint_folder() -> Path:
    """Where the package keeps chapter 5's checkpoint (``vlmlib/weights``; it ships with the package)."""
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights"))


def save_checkpoint(model: Denoiser, recipe: Recipe, metrics: dict, history: dict,
                    folder: Path | str) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (config, recipe, metrics, SHA-256 of the weights)."""
    from safetensors.torch import save_file

    if not isinstance(model, Denoiser) or not isinstance(recipe, Recipe):
        raise TypeError("save_checkpoint needs a Denoiser and its Recipe")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{CHECKPOINT_NAME}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    record = {"config": model.config.to_dict(), "recipe": recipe.to_dict(), "metrics": metrics,
              "history": history, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (folder / f"{CHECKPOINT_NAME}.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return weights


def load_checkpoint(folder: Path | str | None = None, device: str | torch.device = "cpu") -> tuple[Denoiser, dict]:
    """The checkpoint written by ``python -m tools.train_diffusion``: ``(model, record)``.

    ``folder`` defaults to the one that ships with the package (:func:`checkpoint_folder`). Raises
    ``FileNotFoundError`` if it is missing and ``ValueError`` if its weights fail their checksum.
    """
    from safetensors.torch import load_file

    folder = checkpoint_folder() if folder is None else Path(folder)
    weights, meta = folder / f"{CHECKPOINT_NAME}.safetensors", folder / f"{CHECKPOINT_NAME}.json"
    if not weights.exists() or not meta.exists():
        raise FileNotFoundError(f"no diffusion checkpoint in {folder}: run `python -m tools.train_diffusion`")
    record = json.loads(meta.read_text())
    if hashlib.sha256(weights.read_bytes()).hexdigest() != record["weights_sha256"]:
        raise ValueError(f"{weights} fails its checksum: run `python -m tools.train_diffusion` again")
    model = Denoiser(DiffusionConfig(**record["config"]))
    model.load_state_dict(load_file(str(weights)))
    return model.eval().to(device), record


def load_diffusion(budget: str | None = None, device: str | torch.device | None = None,
                   verbose: bool = True) -> tuple[Denoiser, Artifact]:
    """Chapter 5's trained, label-conditioned denoiser (trained on first use, then cached)."""
    from .settings import current

    settings = current()
    budget = budget or settings.budget
    device = device if device is not None else settings.device
    config, recipe = default_settings(budget)
    return build_diffusion(config, recipe, device=device, verbose=verbose)
