"""Real models from the Hugging Face Hub, next to the small ones the course trains.

The course builds every model itself on ShapesWorld; this module loads the real, large ones so a
chapter can end with "and here is the real thing". Each loader takes a Hub name or a local folder,
so the tests load a tiny model they build and save offline, and a notebook can load the real one
when it is online. Offline, or without the disk space, loading raises ``OSError`` and the notebook
says so in one line and goes on::

    import vlmlib
    from vlmlib import hub

    try:
        pipe = hub.load_text2image_pipeline(variant="fp16")   # stabilityai/sd-turbo: its half-size files
    except Exception as error:                             # offline, no disk space, no diffusers
        pipe = None
        print(f"Skipping the real text-to-image model: it could not be loaded ({type(error).__name__}).")
    if pipe is not None:
        prompts = ["a red circle above a blue square", "a photo of a cat wearing a hat"]
        vlmlib.show_images(hub.generate_real(pipe, prompts), prompts, size=3)

:func:`load_text2image_pipeline` and :func:`generate_real` are the text-to-image part (chapter 6);
the default model is SD-Turbo (a Stable Diffusion 2.1 distilled by Adversarial Diffusion
Distillation, Sauer et al. 2023), which makes a 512×512 image in one step without classifier-free
guidance (``num_inference_steps=1, guidance_scale=0.0``, as its model card recommends).
"""

from __future__ import annotations

import inspect
import os

import torch

from . import checks

TEXT2IMAGE_MODEL = "stabilityai/sd-turbo"


def _name_or_path(value) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"name_or_path must be a model name on the Hub or a folder, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("name_or_path must be a model name on the Hub or a folder, got an empty string")
    return value


def load_text2image_pipeline(name_or_path: str | os.PathLike = TEXT2IMAGE_MODEL, **kwargs):
    """A ``diffusers`` text-to-image pipeline, from the Hub or from a local folder.

    On a GPU it runs in float16 on ``cuda``, otherwise in float32 on the CPU (pass ``dtype`` to
    choose). Other keyword arguments go to ``from_pretrained``: ``variant="fp16"`` downloads the
    half-size files of a model that has them (the CPU still computes in float32). The progress bar
    is switched off. Raises ``OSError`` when the model cannot be found or downloaded.
    """
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    name_or_path = _name_or_path(name_or_path)
    cuda = torch.cuda.is_available()
    if "dtype" not in kwargs and "torch_dtype" not in kwargs:     # diffusers ≥ 0.42 calls it dtype
        kwargs["dtype"] = torch.float16 if cuda else torch.float32
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(name_or_path, **kwargs)
    except ValueError:                 # a pipeline class AutoPipeline does not map (e.g. a custom one)
        pipe = DiffusionPipeline.from_pretrained(name_or_path, **kwargs)
    pipe = pipe.to("cuda" if cuda else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_real(pipe, prompts, num_inference_steps: int = 1, guidance_scale: float = 0.0, seed: int = 0,
                  height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Images (N, 3, H, W), float32 in [0, 1] on the CPU, one per prompt, from a ``diffusers``
    text-to-image pipeline; ``vlmlib.show_images`` draws them.

    The defaults (one step, no guidance) suit SD-Turbo; a classic Stable Diffusion wants about 25
    steps and ``guidance_scale=7.5``. ``height`` and ``width`` default to the model's own size and
    must be multiples of the autoencoder's downsampling factor (8 for Stable Diffusion). The same
    ``seed`` gives the same images.
    """
    from diffusers import DiffusionPipeline

    if not isinstance(pipe, DiffusionPipeline):
        raise TypeError(f"pipe must be a diffusers pipeline (from load_text2image_pipeline), got {type(pipe).__name__}")
    if "prompt" not in inspect.signature(pipe.__call__).parameters:
        raise TypeError(f"pipe must be a text-to-image pipeline (one called with a prompt), got {type(pipe).__name__}")
    prompts = checks.text_list(prompts, "prompts")
    if not prompts:
        raise ValueError("prompts must hold at least one prompt, got an empty list")
    steps = checks.integer(num_inference_steps, "num_inference_steps", minimum=1)
    guidance = checks.number(guidance_scale, "guidance_scale", low=0.0)
    seed = checks.integer(seed, "seed", minimum=0)
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    size = {}
    for name, value in (("height", height), ("width", width)):
        if value is not None:
            value = checks.integer(value, name, minimum=factor)
            if value % factor:
                raise ValueError(f"{name} must be a multiple of {factor} (the autoencoder's downsampling), got {value}")
            size[name] = value
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    out = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
               output_type="pt", **size)
    return out.images.float().clamp(0, 1).cpu()
