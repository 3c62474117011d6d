"""vlmlib.hub's text-to-image loader and generator, on a tiny Stable Diffusion built and saved offline."""

import string

import pytest
import torch

from vlmlib import hub

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # conftest.py already sets this before diffusers is imported (which is when the Hub reads it);
    # setting it again here keeps this file offline when run on its own.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_stable_diffusion():
    """A StableDiffusionPipeline of random tiny parts: a letters-only CLIP tokenizer, a 1-layer CLIP
    text encoder (width 32), a 2-level UNet with cross-attention, a 2-level VAE (downsampling 2)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = list(string.ascii_lowercase)
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), latent_channels=4,
        norm_num_groups=8, layers_per_block=1, sample_size=16)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       timestep_spacing="trailing", steps_offset=1)   # SD-Turbo's scheduler
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Folders holding the tiny pipeline: float32 files, and float16 files saved as the "fp16" variant."""
    root = tmp_path_factory.mktemp("tiny_sd")
    pipe = tiny_stable_diffusion()
    pipe.save_pretrained(root / "fp32")
    pipe.to(dtype=torch.float16).save_pretrained(root / "fp16", variant="fp16")
    return root


@pytest.fixture(scope="module")
def pipe(saved):
    return hub.load_text2image_pipeline(str(saved / "fp32"))


def test_loads_the_saved_pipeline_on_the_cpu_in_float32(pipe):
    from diffusers import StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    if not torch.cuda.is_available():
        assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32


def test_generates_one_image_per_prompt_in_0_1_and_a_seed_repeats_them(pipe):
    images = hub.generate_real(pipe, PROMPTS, num_inference_steps=2, height=16, width=16)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    assert torch.equal(hub.generate_real(pipe, PROMPTS, num_inference_steps=2, height=16, width=16), images)
    assert not torch.equal(hub.generate_real(pipe, PROMPTS, num_inference_steps=2, height=16, width=16, seed=1),
                           images)
    # the same as calling the pipeline itself with a generator seeded the same way
    reference = pipe(prompt=PROMPTS, num_inference_steps=2, guidance_scale=0.0, height=16, width=16,
                     generator=torch.Generator(device=pipe.device).manual_seed(0), output_type="pt").images
    assert torch.allclose(images, reference.float().cpu(), atol=1e-6)
    guided = hub.generate_real(pipe, PROMPTS[:1], num_inference_steps=2, guidance_scale=3.0, height=8, width=24)
    assert guided.shape == (1, 3, 8, 24)
    import matplotlib.pyplot as plt
    import vlmlib
    plt.close(vlmlib.show_images(images, PROMPTS))          # what the notebook does with them


def test_the_fp16_files_load_and_run_in_float32_on_a_cpu(saved):
    pipe = hub.load_text2image_pipeline(saved / "fp16", variant="fp16")      # a PathLike is accepted
    if not torch.cuda.is_available():
        assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert hub.generate_real(pipe, PROMPTS[:1], num_inference_steps=1, height=16, width=16).shape == (1, 3, 16, 16)


def test_a_missing_folder_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        hub.load_text2image_pipeline(str(tmp_path / "missing"))


def test_a_pipeline_autopipeline_does_not_map_loads_but_is_refused_by_generate_real(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path)
    unconditional = hub.load_text2image_pipeline(str(tmp_path))
    assert isinstance(unconditional, DDPMPipeline)
    with pytest.raises(TypeError, match="text-to-image pipeline"):
        hub.generate_real(unconditional, PROMPTS)


@pytest.mark.parametrize("bad, error, words", [
    (3, TypeError, "name_or_path"), (None, TypeError, "name_or_path"), ("", ValueError, "name_or_path"),
    ("  ", ValueError, "empty"),
])
def test_bad_names_are_refused(bad, error, words):
    with pytest.raises(error, match=words):
        hub.load_text2image_pipeline(bad)


@pytest.mark.parametrize("change, error, words", [
    (dict(pipe="not a pipeline"), TypeError, "pipe must be a diffusers pipeline"),
    (dict(prompts="a red circle"), TypeError, "prompts must be a list of strings"),
    (dict(prompts=[]), ValueError, "at least one prompt"),
    (dict(prompts=["a", 3]), TypeError, "prompts must hold strings"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(num_inference_steps=1.5), TypeError, "num_inference_steps"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(height=15), ValueError, "height must be a multiple of 2"),
    (dict(width=0), ValueError, "width"),
])
def test_bad_generation_arguments_are_refused(pipe, change, error, words):
    arguments = dict(pipe=pipe, prompts=PROMPTS, num_inference_steps=1, height=16, width=16) | change
    with pytest.raises(error, match=words):
        hub.generate_real(**arguments)
