"""A plain training loop shared by the chapters.

Introduced in chapter 1. :func:`train` runs AdamW with a linear warm-up and a cosine decay of the
learning rate, clips gradients, shows a progress bar and returns the loss history; what a step
computes stays in the notebook, in the ``loss_fn`` it passes.

Weight decay applies to weight matrices only, as in CLIP (Radford et al. 2021, §2.5: "to all weights
that are not gains or biases") and OpenCLIP: gains and biases (LayerNorm, Linear biases) and scalars
(CLIP's temperature, SigLIP's bias) are not decayed; see :func:`parameter_groups`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .plotting import progress


# Part of every artifact's cache key (vlmlib.cache.config_key): a change to how train() optimises
# (version 2: no weight decay on gains, biases and scalars) retrains the cached models.
TRAINING_VERSION = 2


def parameter_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Split ``params`` into AdamW groups: weights with ``ndim >= 2`` are decayed, the rest are not.

    The rule is OpenCLIP's (``p.ndim < 2`` or a gain, bias or ``logit_scale`` is excluded): in our
    modules every gain, bias and scalar has fewer than two dimensions, and every weight matrix,
    convolution kernel and embedding table has at least two.
    """
    params = list(params)
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def cosine_schedule(step: int, steps: int, warmup: int) -> float:
    """The learning-rate multiplier: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(model: nn.Module, loss_fn: Callable[[int], torch.Tensor | tuple[torch.Tensor, dict]], steps: int,
          lr: float = 1e-3, weight_decay: float = 0.05, warmup: float = 0.05, clip: float | None = 1.0,
          params: Iterable[nn.Parameter] | None = None, desc: str = "training",
          after_step: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Minimise ``loss_fn(step)`` for ``steps`` steps; return the history of the loss and other metrics.

    ``loss_fn`` returns the loss, or ``(loss, {"name": value, ...})`` to record more values.
    ``after_step(step)`` runs after each optimiser step (e.g. to clamp a temperature or update an EMA).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(lr, float) or isinstance(lr, int)) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {warmup!r}")
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("there are no trainable parameters")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    optimiser = torch.optim.AdamW(parameter_groups(params, weight_decay), lr=lr)
    warm = int(warmup * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: cosine_schedule(s, steps, warm))
    history: dict[str, list[float]] = {"loss": []}
    model.train()
    bar = progress(range(steps), desc=desc)
    for step in bar:
        out = loss_fn(step)
        loss, extra = (out if isinstance(out, tuple) else (out, {}))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; try a lower learning rate")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimiser.step()
        scheduler.step()
        if after_step is not None:
            after_step(step)
        history["loss"].append(loss.item())
        for key, value in extra.items():
            history.setdefault(key, []).append(float(value))
        if step % 25 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor] | torch.Tensor:
    """Run ``model`` over ``images`` in batches (eval mode, no gradients) and concatenate the outputs."""
    model.eval()
    outs = [model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)


def accuracies(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy of classifier logits against integer labels."""
    missing = set(logits) - set(labels)
    if missing:
        raise KeyError(f"no labels for {sorted(missing)}; labels have {sorted(labels)}")
    return {k: (v.argmax(-1).cpu() == labels[k].cpu()).float().mean().item() for k, v in logits.items()}
