"""Training a denoiser (chapter 5): the recipe, the loss and the moving average of the weights.

:class:`Recipe`, :class:`EMA` and :func:`ema_weights`, :func:`diffusion_loss` (L_simple, with
Min-SNR-γ weighting) and :func:`train_diffusion`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .. import checks
from ..plotting import progress
from ..shapesworld import KINDS, ShapesWorld
from .models import Denoiser, DiffusionConfig, to_model_space
from .schedules import PREDICTION_TYPES, Schedule, _check_images, q_sample, target_for


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
                   generator: torch.Generator | None = None, min_snr_gamma: float = 0.0,
                   snr_floor: float = 0.0) -> torch.Tensor:
    """L_simple (DDPM Eq. 14) for the model's target, t uniform:
    ‖target − f_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖².

    ``labels`` is whatever condition the model takes (class indices for a :class:`Denoiser`, a
    text condition for chapter 6's model), passed on as ``model(x_t, t, labels)``.

    With ``min_snr_gamma`` = γ > 0 each example is weighted so that, measured as an error in x₀,
    its weight is min(SNR_t, γ) (Min-SNR-γ, Hang et al., 2023): ε-prediction's weight SNR_t, capped.
    ``snr_floor`` > 0 also raises the weight of the noisiest steps to at least that: with 1 it is
    the "truncated SNR" weighting max(SNR_t, 1) of Salimans & Ho (2022) below the cap, so the steps
    that decide a sample's layout weigh as much as under the plain x₀ loss.
    In the model's own target the weights are min(SNR, γ) for x₀, min(SNR, γ)/SNR for ε and
    min(SNR, γ)/(SNR + 1) for v, as in ``diffusers``' ``train_text_to_image.py`` (``--snr_gamma``).
    """
    _check_denoiser(model)
    _check_images(x0, "x0")
    min_snr_gamma = checks.number(min_snr_gamma, "min_snr_gamma", low=0.0)
    snr_floor = checks.number(snr_floor, "snr_floor", low=0.0)
    if snr_floor > 0 and not 0 < snr_floor <= min_snr_gamma:
        raise ValueError(f"snr_floor must lie in (0, min_snr_gamma = {min_snr_gamma}], got {snr_floor}")
    sched = model.schedule
    t = torch.randint(0, sched.T, (len(x0),), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = q_sample(x0, t, noise, sched.alpha_bar)
    pred = model.config.prediction_type
    target = target_for(pred, x0, noise, t, sched.alpha_bar)
    err = (model(x_t, t, labels) - target).pow(2).mean(dim=(1, 2, 3))           # (B,)
    if min_snr_gamma > 0:
        snr = sched.snr().to(x0.device)[t]
        capped = snr.clamp(min=snr_floor, max=min_snr_gamma)
        # the x₀ error is the ε error / SNR and the v error / (SNR + 1): rescale to min(SNR, γ)
        err = err * {"sample": capped, "epsilon": capped / snr, "v_prediction": capped / (snr + 1)}[pred]
    return err.mean()


def train_diffusion(config: DiffusionConfig, recipe: Recipe, device: str | torch.device = "cpu",
                    time_limit: float | None = None, desc: str = "training the denoiser"):
    """Train a denoiser on ShapesWorld; return ``(model with EMA weights, raw model, history, seconds)``.

    Each step draws a batch of scenes (labels dropped to "no label" with ``recipe.label_dropout``)
    for :func:`fit`. ``time_limit`` (seconds) stops early, keeping the schedule of ``recipe.steps``.
    """
    if not isinstance(config, DiffusionConfig) or not isinstance(recipe, Recipe):
        raise TypeError("train_diffusion needs a DiffusionConfig and a Recipe")
    torch.manual_seed(recipe.seed)
    world = ShapesWorld(seed=recipe.world_seed)
    data = world.sample(recipe.n_train, split=recipe.split, seed=recipe.seed, captions=None)
    images = to_model_space(data.tensor(), config.image_size).to(device)
    labels = torch.from_numpy(data.labels["colour"] * len(KINDS) + data.labels["kind"]).to(device)
    model = Denoiser(config).to(device)
    model.schedule = model.schedule.to("cpu")
    g = torch.Generator().manual_seed(recipe.seed)

    def batch(step: int):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=g).to(device)
        if not config.num_classes:
            return images[idx], None
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=g).to(device) < recipe.label_dropout] = config.num_classes
        return images[idx], y

    state, history, seconds = fit(model, batch, recipe.steps, recipe.lr, recipe.warmup, recipe.ema_decay, g,
                                  recipe.min_snr_gamma, desc, time_limit, weight_decay=recipe.weight_decay,
                                  ema_warmup=recipe.ema_warmup)
    ema_model = Denoiser(config).to(device)
    ema_model.load_state_dict(state)
    ema_model.eval()
    history["steps_per_second"] = [len(history["loss"]) / seconds]
    return ema_model, model, history, seconds


def fit(model: torch.nn.Module, batch, steps: int, lr: float, warmup: float, ema_decay: float,
        generator: torch.Generator, min_snr_gamma: float = 0.0, desc: str = "training",
        time_limit: float | None = None, snr_floor: float = 0.0, weight_decay: float = 0.0,
        ema_warmup: bool = True):
    """The training loop of every denoiser (chapter 5's, chapter 6's text to image, unCLIP's decoder).

    ``batch(step)`` returns ``(x0, condition)``; each step minimises :func:`diffusion_loss` with
    AdamW, a warm-up and cosine learning rate, gradients clipped to norm 1, and an :class:`EMA` of
    the weights. Returns ``(ema_state_dict, history, seconds)``.
    """
    from ..training import cosine_schedule

    ema = EMA(model, ema_decay, ema_warmup)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = int(warmup * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, steps, warm))
    history: dict[str, list[float]] = {"loss": []}
    start = time.perf_counter()
    model.train()
    bar = progress(range(steps), desc=desc)
    for step in bar:
        x0, condition = batch(step)
        loss = diffusion_loss(model, x0, condition, generator=generator, min_snr_gamma=min_snr_gamma,
                              snr_floor=snr_floor)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; try a lower learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        history["loss"].append(loss.item())
        if step % 25 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
    model.eval()
    return ema.state_dict(), history, time.perf_counter() - start
