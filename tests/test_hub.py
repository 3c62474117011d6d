"""vlmlib.hub's loaders and generators, on tiny models built and saved offline: text to image on a tiny
Stable Diffusion, image to text on a tiny LLaVA."""

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


# -- image to text (chapter 8) ----------------------------------------------------------------------------
QUESTION = "what colour is the circle?"           # ShapesWorld's words: the course's tokenizer knows them
IMAGE_TOKENS = 16                                  # (16 / 4)² patches, the CLS token dropped


def tiny_llava():
    """A LlavaForConditionalGeneration of random tiny parts and its LlavaProcessor: a 2-block CLIP vision
    tower (16×16 images, 4×4 patches, width 32), a 2-layer Llama (width 32), LLaVA-1.5's GELU projector;
    the course's word-level tokenizer with its ``<image>`` token and its chat template
    (:func:`vlmlib.llava.llava_tokenizer`), and a CLIP image processor resizing to 16×16."""
    import copy

    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from vlmlib.llava import CHAT_TEMPLATE, llava_tokenizer

    tokenizer = copy.deepcopy(llava_tokenizer())          # the shared one stays untouched
    vision = CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)     # varied greedy output
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=IMAGE_TOKENS, projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    return model, processor


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    """A folder holding the tiny LLaVA and its processor, as a Hub repository holds them."""
    folder = tmp_path_factory.mktemp("tiny_llava")
    model, processor = tiny_llava()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava(llava_folder):
    return hub.load_image_to_text(str(llava_folder))


def _pictures(n=2, size=20):
    torch.manual_seed(3)
    return torch.rand(n, 3, size, size + 4)           # not square, not 16×16: the processor resizes and crops


def test_loads_the_saved_llava_and_its_processor_on_the_cpu_in_float32(llava):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model, processor = llava
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    assert not model.training and processor.chat_template
    assert sum(p.numel() for p in model.parameters()) < 100_000
    if not torch.cuda.is_available():
        assert model.device.type == "cpu" and model.dtype == torch.float32


def test_describes_each_image_greedily_and_repeats_itself(llava):
    model, processor = llava
    images = _pictures(3)
    answers = hub.describe_real(model, processor, images, QUESTION, max_new_tokens=6)
    assert isinstance(answers, list) and len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert any(answers) and len(set(answers)) > 1          # the tiny random model says something, per image
    assert hub.describe_real(model, processor, images, QUESTION, max_new_tokens=6) == answers
    # the same as running the model by hand on the course's prompt, written out: the template's one
    # [BOS] (the tokenizer adds none), one <image> per visual token, the assistant's turn opened
    prompt = "[BOS]USER: " + "<image>" * IMAGE_TOKENS + "\n" + QUESTION + " ASSISTANT:"
    ids = processor.tokenizer([prompt] * 3, add_special_tokens=False, return_tensors="pt")
    pixels = hub._pil_images(images)
    inputs = dict(ids, pixel_values=processor.image_processor(pixels, return_tensors="pt")["pixel_values"])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    reference = processor.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answers == [r.strip() for r in reference]
    # at most max_new_tokens tokens each
    one = hub.describe_real(model, processor, images, QUESTION, max_new_tokens=1)
    assert all(len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) <= 1 for a in one)
    assert all(a.startswith(b) for a, b in zip(answers, one, strict=True))


def test_describes_pil_images_uint8_and_the_default_question(llava):
    from PIL import Image

    model, processor = llava
    images = _pictures(2)
    answers = hub.describe_real(model, processor, images, QUESTION, max_new_tokens=4)
    pil = [Image.fromarray(p) for p in (images * 255).round().byte().permute(0, 2, 3, 1).numpy()]
    assert hub.describe_real(model, processor, pil, QUESTION, max_new_tokens=4) == answers
    assert hub.describe_real(model, processor, tuple(pil), QUESTION, max_new_tokens=4) == answers
    assert hub.describe_real(model, processor, pil[1], QUESTION, max_new_tokens=4) == answers[1:]    # one PIL image
    assert hub.describe_real(model, processor, pil[0].convert("RGBA"), QUESTION, max_new_tokens=4) == answers[:1]
    uint8 = (images * 255).round().byte()
    assert hub.describe_real(model, processor, uint8, QUESTION, max_new_tokens=4) == answers
    assert hub.describe_real(model, processor, uint8.numpy(), QUESTION, max_new_tokens=4) == answers
    default = hub.describe_real(model, processor, images[:1], max_new_tokens=2)     # "Describe the image." ([UNK]s here)
    assert len(default) == 1 and isinstance(default[0], str)


def test_image_to_text_from_a_missing_folder_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        hub.load_image_to_text(str(tmp_path / "missing"))
    with pytest.raises(OSError):
        hub.load_image_to_text(tmp_path / "missing")            # a PathLike too


@pytest.mark.parametrize("bad, error, words", [
    (3, TypeError, "name_or_path"), (None, TypeError, "name_or_path"), ("", ValueError, "name_or_path"),
    ("  ", ValueError, "empty"),
])
def test_bad_names_are_refused_by_the_image_to_text_loader(bad, error, words):
    with pytest.raises(error, match=words):
        hub.load_image_to_text(bad)


@pytest.mark.parametrize("change, error, words", [
    (dict(model="not a model"), TypeError, "model must be a transformers LlavaForConditionalGeneration"),
    (dict(processor="not a processor"), TypeError, "processor must be a transformers processor"),
    (dict(images=[]), ValueError, "at least one image"),
    (dict(images="cat.png"), TypeError, "images must be a float tensor"),
    (dict(images=[torch.rand(3, 16, 16)]), TypeError, "torch.stack"),
    (dict(images=torch.rand(3, 16, 16)), ValueError, "add a batch dimension"),
    (dict(images=torch.rand(2, 1, 16, 16)), ValueError, r"images must have shape \(N, 3, \?, \?\)"),
    (dict(images=torch.rand(2, 16, 16, 3)), ValueError, "channels-last"),
    (dict(images=torch.rand(0, 3, 16, 16)), ValueError, "empty"),
    (dict(images=torch.rand(1, 3, 16, 16) * 255), ValueError, "values in"),
    (dict(images=torch.randint(0, 2, (1, 3, 16, 16))), TypeError, "floating point"),
    (dict(question=3), TypeError, "question must be a string"),
    (dict(question=["what colour?"]), TypeError, "question must be a string"),
    (dict(question="  "), ValueError, "question must not be empty"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=1.5), TypeError, "max_new_tokens"),
])
def test_bad_description_arguments_are_refused(llava, change, error, words):
    model, processor = llava
    arguments = dict(model=model, processor=processor, images=_pictures(1), question=QUESTION, max_new_tokens=2) | change
    with pytest.raises(error, match=words):
        hub.describe_real(**arguments)


def test_a_processor_without_a_chat_template_is_refused(llava):
    import copy

    model, processor = llava
    bare = copy.copy(processor)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        hub.describe_real(model, bare, _pictures(1))
