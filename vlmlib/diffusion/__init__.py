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
Images live in [−1, 1] inside this package (:func:`to_model_space` / :func:`to_image_space`).

**Layout.** Split as ``diffusers`` splits its library; every name is re-exported here, so
``from vlmlib import diffusion as D; D.sample(...)`` is all a notebook needs:

- :mod:`~vlmlib.diffusion.schedules`: the noise schedule and the equations (forward process,
  prediction targets, DDPM and DDIM steps, the timesteps a sampler visits);
- :mod:`~vlmlib.diffusion.models`: :class:`DiffusionConfig`, :class:`Denoiser` (the UNet), the
  model's image space and the class labels;
- :mod:`~vlmlib.diffusion.training`: :class:`Recipe`, :class:`EMA`, :func:`diffusion_loss`,
  :func:`train_diffusion`;
- :mod:`~vlmlib.diffusion.sampling`: :func:`threshold_x0`, :func:`guide`, :func:`denoise_loop` (the loop
  shared by every denoiser of the course), :func:`sample` and :func:`sample_cached`;
- :mod:`~vlmlib.diffusion.checkpoints`: chapter 5's trained denoiser (:func:`default_settings`,
  :func:`evaluate`, :func:`load_diffusion`) and its shipped checkpoint (:func:`load_checkpoint`).
"""

from ..shapesworld import COLOUR_NAMES, KINDS
from .checkpoints import (CHECKPOINT_NAME, build_diffusion, checkpoint_folder, default_settings, evaluate,
                          load_checkpoint, load_diffusion, save_checkpoint)
from .models import (LABEL_EMBEDDINGS, NUM_CLASSES, Denoiser, DiffusionConfig, build_unet, class_labels,
                     to_image_space, to_model_space)
from .sampling import (SAMPLER_VERSION, THRESHOLDS, cached_images, denoise_loop, guide, sample, sample_cached, threshold_x0,
                       weights_sha256)
from .schedules import (PREDICTION_TYPES, SAMPLERS, SCHEDULES, Schedule, _as_alpha_bar, _bcast, _check_images,
                        _check_step, _check_t, _cosine_alpha_bar, _describe, ddim_step, ddpm_reverse_step,
                        equivalent_noise, make_schedule, noise_step_by_step, q_sample, target_for, timesteps_for,
                        to_x0_eps)
from .training import EMA, Recipe, _check_denoiser, diffusion_loss, ema_weights, fit, train_diffusion

__all__ = [
    # schedules
    "SCHEDULES", "PREDICTION_TYPES", "SAMPLERS", "Schedule", "make_schedule", "q_sample", "noise_step_by_step",
    "equivalent_noise", "target_for", "to_x0_eps", "ddpm_reverse_step", "ddim_step", "timesteps_for",
    # models
    "LABEL_EMBEDDINGS", "NUM_CLASSES", "COLOUR_NAMES", "KINDS", "DiffusionConfig", "build_unet", "Denoiser",
    "to_model_space", "to_image_space", "class_labels",
    # training
    "Recipe", "EMA", "ema_weights", "diffusion_loss", "train_diffusion",
    # sampling
    "THRESHOLDS", "threshold_x0", "guide", "denoise_loop", "sample", "SAMPLER_VERSION", "weights_sha256",
    "sample_cached",
    # checkpoints
    "default_settings", "evaluate", "build_diffusion", "CHECKPOINT_NAME", "checkpoint_folder", "save_checkpoint",
    "load_checkpoint", "load_diffusion",
]
