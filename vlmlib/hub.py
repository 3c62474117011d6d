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

:func:`load_image_to_text` and :func:`describe_real` are the image-to-text part (chapter 8): a real
LLaVA answering a question about each image, the same recipe as the course's
:class:`vlmlib.llava.LlavaModel` (a vision tower, an MLP projector, a language model reading the
visual tokens at the ``<image>`` placeholders) at full size::

    try:
        model, processor = hub.load_image_to_text()          # llava-hf/llava-interleave-qwen-0.5b-hf
    except Exception as error:                               # offline, no disk space
        model = None
        print(f"Skipping the real LLaVA: it could not be loaded ({type(error).__name__}).")
    if model is not None:
        images = vlmlib.ShapesWorld(max_shapes=2, seed=0).sample(4, split="test").tensor()
        answers = hub.describe_real(model, processor, images, "What shapes are in the image?")
        vlmlib.show_images(images, answers, size=3)

The default model is LLaVA-Interleave's smallest (Li et al. 2024, "LLaVA-NeXT-Interleave"):
a SigLIP tower (384×384 images, 14×14 patches, 729 visual tokens) and Qwen1.5-0.5B-Chat behind
LLaVA-1.5's two-layer GELU projector, under 1B parameters (1.7 GB of bfloat16 weights), converted
by the ``llava-hf`` team to ``transformers``' ``LlavaForConditionalGeneration``; it is the model
``transformers``' own image-text-to-text pipeline documentation uses as its example. (It reads the
tower's last layer, ``vision_feature_layer=-1``, where LLaVA-1.5 and the course read the penultimate.)
"""

from __future__ import annotations

import inspect
import os
import warnings

import torch

from . import checks

TEXT2IMAGE_MODEL = "stabilityai/sd-turbo"
#: LLaVA-Interleave 0.5B (SigLIP + Qwen1.5-0.5B-Chat), a LLaVA under 1B parameters that the ``llava-hf``
#: team converted to ``LlavaForConditionalGeneration``; the classic LLaVA-1.5 is ``llava-hf/llava-1.5-7b-hf``.
IMAGE_TO_TEXT_MODEL = "llava-hf/llava-interleave-qwen-0.5b-hf"


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
    with warnings.catch_warnings():    # diffusers passes huggingface_hub an argument it has deprecated
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(name_or_path, **kwargs)
        except ValueError:             # a pipeline class AutoPipeline does not map (e.g. a custom one)
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


# -- image to text (chapter 8) ----------------------------------------------------------------------------
#: Keyword arguments of ``from_pretrained`` that say where to find the files, for the processor as well.
_WHERE = ("revision", "cache_dir", "local_files_only", "token")


def load_image_to_text(name_or_path: str | os.PathLike = IMAGE_TO_TEXT_MODEL, **kwargs):
    """A LLaVA model and its processor, ``(model, processor)``, from the Hub or from a local folder.

    The model is a ``transformers`` ``LlavaForConditionalGeneration`` in inference mode (``.eval()``);
    the processor (``AutoProcessor``) resizes the images, writes the prompt with the model's chat
    template and expands each ``<image>`` into one placeholder per visual token. On a GPU the model
    runs in float16 on ``cuda``, otherwise in float32 on the CPU (pass ``dtype`` to choose). Other
    keyword arguments go to the model's ``from_pretrained`` (``revision``, ``cache_dir``,
    ``local_files_only`` and ``token`` to the processor's too). Raises ``OSError`` when the model
    cannot be found or downloaded.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    name_or_path = _name_or_path(name_or_path)
    cuda = torch.cuda.is_available()
    if "dtype" not in kwargs and "torch_dtype" not in kwargs:     # transformers 5 calls it dtype
        kwargs["dtype"] = torch.float16 if cuda else torch.float32
    processor = AutoProcessor.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items() if k in _WHERE})
    model = LlavaForConditionalGeneration.from_pretrained(name_or_path, **kwargs)
    return model.to("cuda" if cuda else "cpu").eval(), processor


def _pil_images(images) -> list:
    """``images`` as a list of RGB PIL images: a float tensor (N, 3, H, W) in [0, 1] (uint8 and NumPy
    arrays accepted, as :func:`vlmlib.checks.images` converts them), a PIL image, or a list of them."""
    import numpy as np
    from PIL import Image

    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images must hold at least one image, got an empty list")
        bad = [i for i, image in enumerate(images) if not isinstance(image, Image.Image)]
        if bad:
            hint = ("; stack tensors into one batch (N, 3, H, W) with torch.stack"
                    if isinstance(images[bad[0]], torch.Tensor) else "")
            raise TypeError(f"images given as a list must hold PIL images only; item {bad[0]} is a "
                            f"{type(images[bad[0]]).__name__}{hint}")
        return [image.convert("RGB") for image in images]
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise TypeError(f"images must be a float tensor (N, 3, H, W) in [0, 1], a PIL image or a list of PIL "
                        f"images, got {type(images).__name__}")
    x = checks.images(images, "images", shape=(3, None, None), low=0.0, high=1.0)
    pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


@torch.no_grad()
def describe_real(model, processor, images, question: str = "Describe the image.",
                  max_new_tokens: int = 40) -> list[str]:
    """The answers of a ``transformers`` LLaVA to ``question`` about each image, one string per image.

    ``images`` are a float tensor (N, 3, H, W) in [0, 1], as everywhere in vlmlib (uint8 is read as
    0–255), a PIL image, or a list of PIL images. Each prompt is the processor's chat template applied
    to one user message, the image then the question, with the assistant's turn opened
    (``add_generation_prompt=True``); the answers are greedy (the same images give the same answers),
    at most ``max_new_tokens`` tokens each, decoded without the prompt or special tokens.
    """
    from transformers import LlavaForConditionalGeneration, ProcessorMixin

    if not isinstance(model, LlavaForConditionalGeneration):
        raise TypeError(f"model must be a transformers LlavaForConditionalGeneration (from load_image_to_text), "
                        f"got {type(model).__name__}")
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None \
            or getattr(processor, "tokenizer", None) is None:
        raise TypeError(f"processor must be a transformers processor with an image processor and a tokenizer "
                        f"(from load_image_to_text), got {type(processor).__name__}")
    if not getattr(processor, "chat_template", None):
        raise ValueError("processor has no chat template, so the prompt cannot be written; "
                         "load the processor that comes with the model (load_image_to_text)")
    pictures = _pil_images(images)
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("question must not be empty")
    max_new_tokens = checks.integer(max_new_tokens, "max_new_tokens", minimum=1)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already writes the special tokens (BOS, ...): the tokenizer must not add them again.
    # Every row is the same prompt with the same number of visual tokens; padding (on the left, where
    # generation wants it) only matters for processors whose number of tokens depends on the image.
    tokenizer = processor.tokenizer
    inputs = processor(images=pictures, text=[prompt] * len(pictures), return_tensors="pt",
                       padding=tokenizer.pad_token is not None, padding_side="left",
                       add_special_tokens=False).to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [answer.strip() for answer in answers]
