"""The noise schedule and the equations of the forward and reverse processes (chapter 5).

:class:`Schedule` and :func:`make_schedule` (β, α, ᾱ; linear or cosine), the forward process
(:func:`q_sample`, :func:`noise_step_by_step`, :func:`equivalent_noise`), conversions between what a
network predicts (:func:`target_for`, :func:`to_x0_eps`), the reverse steps (:func:`ddpm_reverse_step`,
:func:`ddim_step`) and the timesteps a sampler visits (:func:`timesteps_for`), with the small checks
they share. What ``diffusers`` keeps in its schedulers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import checks

SCHEDULES = ("linear", "cosine")
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
