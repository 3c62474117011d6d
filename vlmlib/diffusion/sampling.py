"""Sampling (chapter 5): the loop every denoiser of the course shares, and cached samples.

:func:`threshold_x0` (static or dynamic thresholding of x̂₀), :func:`guide` (classifier-free
guidance), :func:`denoise_loop` (noise to images with DDPM or DDIM steps), :func:`sample` for a
:class:`~vlmlib.diffusion.models.Denoiser`, and :func:`sample_cached` (samples through the artifact
cache, keyed by :func:`weights_sha256` and :data:`SAMPLER_VERSION`). What ``diffusers`` keeps in its pipelines.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Callable

import torch

from .. import checks
from ..cache import Artifact, cached
from ..plotting import progress
from .models import Denoiser, to_image_space
from .schedules import (SAMPLERS, Schedule, _check_images, ddim_step, ddpm_reverse_step, timesteps_for,
                        to_x0_eps)

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
    work = flat.abs() if flat.dtype in (torch.float32, torch.float64) else flat.abs().float()
    s = torch.quantile(work, percentile, dim=1).to(x0.dtype).clamp(min=1)                     # (B,)
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


def cached_images(name: str, key: dict, make: Callable[[], torch.Tensor], verbose: bool = True,
                  what: str = "images") -> dict:
    """``make()``'s images through the artifact cache as ``name`` under ``key`` (which must hold
    everything that determines them): ``{"images", "seconds": time to make them when they were
    made, "from_cache"}``. Used by the text-to-image and unCLIP samplers of chapter 6."""
    def build() -> Artifact:
        start = time.perf_counter()
        images = make()
        return Artifact(name, key, {"images": images.float().contiguous()}, {"seconds": time.perf_counter() - start})

    art = cached(name, key, build, verbose=False)
    if verbose and art.from_cache:
        print(f"{what} (loaded from the cache)")
    return {"images": art.state_dict["images"], "seconds": art.metrics["seconds"], "from_cache": art.from_cache}
