import math
import re

import numpy as np
import pytest
import torch

from vlmlib import judge, toolkit as T
from vlmlib.exercises import ch04


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two, and never stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return T.load_digits_data()


def test_digits_are_8x8_grey_levels_split_by_digit(digits):
    assert digits.train_levels.shape[1:] == (8, 8) and digits.test_levels.shape[1:] == (8, 8)
    assert len(digits.train_levels) + len(digits.test_levels) == 1797
    assert digits.train_levels.dtype == torch.long and int(digits.train_levels.max()) == 16
    assert torch.bincount(digits.test_labels).min() >= 40          # stratified: every digit held out
    images = digits.images("test")
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() == 1
    assert torch.equal(T.images_to_levels(images), digits.test_levels)


def test_gan_shapes_and_one_evaluation_per_sample(digits):
    gen, disc, history = T.train_gan(digits.images()[:64], steps=3, batch=8, hidden=32)
    assert set(history) == {"discriminator loss", "generator loss", "D(real)", "D(fake)"}
    out = T.sample_gan(gen, 5)
    assert out.images.shape == (5, 8, 8) and out.nfe == 1
    assert 0 <= out.images.min() and out.images.max() <= 1
    assert disc(out.images).shape == (5,)


def test_autoregressive_model_is_causal():
    torch.manual_seed(0)
    model = T.PixelTransformer(causal=True, dim=32, depth=2, heads=4).eval()
    x = torch.randint(17, (2, 64))
    for j in (0, 20, 63):
        changed = x.clone()
        changed[:, j] = (changed[:, j] + 5) % 17
        a, b = model(x), model(changed)
        assert torch.allclose(a[:, :j + 1], b[:, :j + 1], atol=1e-6), f"pixel {j} leaks into earlier logits"
        if j < 63:
            assert not torch.allclose(a[:, j + 1:], b[:, j + 1:], atol=1e-4)
    masked = T.PixelTransformer(causal=False, dim=32, depth=1, heads=4).eval()
    changed = x.clone()
    changed[:, 63] = (changed[:, 63] + 5) % 17
    assert not torch.allclose(masked(x)[:, 0], masked(changed)[:, 0], atol=1e-4)   # sees everything


def test_autoregressive_sampler_spends_64_evaluations(digits):
    model, history = T.train_autoregressive(digits.train_levels[:32], steps=2, batch=4, dim=16, heads=2)
    assert "bits per pixel" in history
    out = T.sample_autoregressive(model, 3)
    assert out.images.shape == (3, 8, 8) and out.nfe == 64
    assert torch.equal(T.levels_to_images(T.images_to_levels(out.images)), out.images)   # grey levels


def test_masking_schedule_is_cosine_and_ends_with_nothing_masked():
    assert T.masking_schedule(64, 8) == [62, 59, 53, 45, 35, 24, 12, 0]
    assert T.masking_schedule(64, 1) == [0]
    for n, steps in [(64, 64), (10, 7), (5, 5), (100, 3)]:
        counts = T.masking_schedule(n, steps)
        assert len(counts) == steps and counts[-1] == 0
        assert all(a > b for a, b in zip([n] + counts, counts)), "every step unmasks at least one token"
        assert all(c <= math.floor(n * math.cos(math.pi / 2 * t / steps) + 1e-9)
                   for t, c in enumerate(counts, 1))


@pytest.mark.parametrize("steps", [1, 4, 8, 12])
def test_masked_decoder_fills_every_pixel_in_the_given_steps(digits, steps):
    torch.manual_seed(0)
    model = T.PixelTransformer(causal=False, dim=16, depth=1, heads=2)
    out = T.sample_masked(model, 4, steps=steps)
    assert out.nfe == steps and out.images.shape == (4, 8, 8)
    assert out.extra["masked"] == T.masking_schedule(64, steps)
    levels = T.images_to_levels(out.images)
    assert levels.min() >= 0 and levels.max() <= 16                # no [MASK] token is left


def test_masked_training_runs(digits):
    model, history = T.train_masked(digits.train_levels[:32], steps=2, batch=4, dim=16, heads=2)
    assert len(history["loss"]) == 2 and 0 < history["masked share"][0] <= 1
    assert not model.causal


def test_add_noise_is_the_closed_form_and_matches_diffusers():
    from diffusers import DDPMScheduler

    schedule = T.DiffusionSchedule(1000)
    reference = DDPMScheduler(num_train_timesteps=1000)
    assert torch.allclose(schedule.alphas_cumprod.float(), reference.alphas_cumprod, atol=1e-6)
    x0, noise, t = torch.randn(4, 64), torch.randn(4, 64), torch.tensor([0, 10, 500, 999])
    ours = T.add_noise(x0, noise, schedule.alphas_cumprod[t])
    assert torch.allclose(ours, reference.add_noise(x0, noise, t), atol=1e-5)


def test_ddim_step_matches_diffusers():
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    model = T.Denoiser(hidden=32, depth=1).eval()
    for p in model.parameters():              # a network that predicts ε = 0 everywhere...
        torch.nn.init.zeros_(p)
    out = T.sample_diffusion(model, 3, steps=10, eta=0.0, seed=1)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    ref = DDIMScheduler(num_train_timesteps=1000, clip_sample=True, set_alpha_to_one=True,
                        timestep_spacing="trailing")
    ref.set_timesteps(10)
    for t in ref.timesteps:                   # ...gives the same path in diffusers
        x = ref.step(torch.zeros_like(x), t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    assert torch.allclose(out.images.reshape(3, 64), (x.clamp(-1, 1) + 1) / 2, atol=1e-4)


@pytest.mark.parametrize("steps, eta", [(1, 0.0), (10, 0.0), (25, 1.0)])
def test_diffusion_sampler_spends_one_evaluation_per_step(digits, steps, eta):
    model, history = T.train_diffusion(digits.images()[:32], steps=2, batch=4, hidden=32, depth=1)
    out = T.sample_diffusion(model, 3, steps=steps, eta=eta)
    assert out.nfe == steps and out.images.shape == (3, 8, 8)
    assert 0 <= out.images.min() and out.images.max() <= 1


def test_evaluator_ranks_real_digits_above_noise(digits):
    evaluator, history = T.train_evaluator(digits, steps=300)
    assert evaluator.test_accuracy > 0.9
    real = evaluator.evaluate(digits.images("train")[:300])
    noise = evaluator.evaluate(torch.rand(300, 8, 8))
    one_digit = evaluator.evaluate(digits.images("train")[digits.train_labels == 3][:100])
    assert real["confident"] > 0.8 > 0.2 > noise["confident"]
    assert real["frechet"] * 5 < noise["frechet"]
    assert real["coverage"] == 10 and real["entropy"] > 3.2
    assert one_digit["coverage"] == 1 and one_digit["entropy"] < 0.5
    assert sum(real["histogram"]) == round(real["confident"] * 300)
    # the Fréchet distance is the judge's FID (one implementation), in the classifier's features
    features = evaluator.classifier.features
    expected = judge.fid(features(digits.images("train")[:300]), features(evaluator.reference))
    assert real["frechet"] == pytest.approx(expected, rel=1e-9)


def _bad_calls(digits):
    """(what is wrong, the call, the error, a pattern its message must match): one row per mistake."""
    images, levels = digits.images()[:32], digits.train_levels[:32]
    masked = T.PixelTransformer(causal=False, dim=16, depth=1, heads=2)
    causal = T.PixelTransformer(causal=True, dim=16, depth=1, heads=2)
    denoiser, generator = T.Denoiser(hidden=16, depth=1), T.Generator(latent=4, hidden=8)
    evaluator = T.Evaluator(T.DigitClassifier(), digits.images("test")[:20], 0.0)
    x0, noise = torch.rand(2, 64), torch.randn(2, 64)
    nan_images = images.clone()
    nan_images[0, 0, 0] = float("nan")
    return [
        # the data
        ("test fraction above 1", lambda: T.load_digits_data(test_fraction=1.5), ValueError, "test_fraction must be < 1"),
        ("test fraction as text", lambda: T.load_digits_data(test_fraction="0.2"), TypeError, "test_fraction must be a number"),
        ("negative seed", lambda: T.load_digits_data(seed=-1), ValueError, "seed must be at least 0"),
        ("unknown split", lambda: digits.images("validation"), ValueError, "split must be one of"),
        ("levels as floats", lambda: T.levels_to_images(images), TypeError, "levels must hold integer grey levels"),
        ("levels above 16", lambda: T.levels_to_images(levels + 1), ValueError, r"levels must lie in 0\.\.16"),
        ("levels as a list", lambda: T.levels_to_images([1, 2]), TypeError, "levels must be a tensor"),
        ("images in [0, 255]", lambda: T.images_to_levels(images * 255), ValueError, "divide by 255"),
        ("grey levels as images", lambda: T.images_to_levels(levels), TypeError, "levels_to_images"),
        ("count calls of a non-module", lambda: T.count_calls("net").__enter__(), TypeError, "nn.Module"),
        # GAN
        ("latent of 0", lambda: T.Generator(latent=0), ValueError, "latent must be at least 1"),
        ("z of the wrong width", lambda: generator(torch.randn(2, 5)), ValueError, r"z must have shape \(B, 4\)"),
        ("integer z", lambda: generator(torch.zeros(2, 4, dtype=torch.long)), TypeError, "z must be floating point"),
        ("colour images to D", lambda: T.Discriminator(8)(torch.rand(2, 3, 8, 8)), ValueError, r"shape \(N, 8, 8\)"),
        ("colour images", lambda: T.train_gan(torch.rand(10, 3, 8, 8), steps=1), ValueError, r"shape \(N, 8, 8\)"),
        ("grey levels to the GAN", lambda: T.train_gan(levels, steps=1), TypeError, "levels_to_images"),
        ("images in [0, 16]", lambda: T.train_gan(images * 16, steps=1), ValueError, r"values in \[0.0, 1.0\]"),
        ("images with NaN", lambda: T.train_gan(nan_images, steps=1), ValueError, "NaN"),
        ("no images", lambda: T.train_gan(images[:0], steps=1), ValueError, "N >= 1"),
        ("fractional steps", lambda: T.train_gan(images, steps=1.5), TypeError, "steps must be an integer"),
        ("negative learning rate", lambda: T.train_gan(images, steps=1, lr=-1e-3), ValueError, "lr must be > 0"),
        ("negative seed for the GAN", lambda: T.train_gan(images, steps=1, seed=-2), ValueError, "seed must be at least 0"),
        ("sample a masked model as a GAN", lambda: T.sample_gan(masked, 2), TypeError, "must be a Generator"),
        ("no samples", lambda: T.sample_gan(generator, 0), ValueError, "n must be at least 1"),
        ("fractional sampling seed", lambda: T.sample_gan(generator, 2, seed=1.5), TypeError, "seed must be an integer"),
        # the pixel transformers
        ("causal as text", lambda: T.PixelTransformer(causal="yes"), TypeError, "causal must be True or False"),
        ("heads that do not divide dim", lambda: T.PixelTransformer(causal=True, dim=16, heads=3), ValueError,
         "heads=3 must divide dim=16"),
        ("float tokens", lambda: masked(torch.rand(2, 64)), TypeError, "tokens must be an integer tensor"),
        ("tokens of the wrong length", lambda: masked(torch.zeros(2, 10, dtype=torch.long)), ValueError,
         r"tokens must have shape \(B, 64\)"),
        ("token ids above [MASK]", lambda: masked(torch.full((2, 64), 20)), ValueError, r"tokens must lie in 0\.\.17"),
        ("negative token ids", lambda: causal(torch.full((2, 64), -1)), ValueError, r"tokens must lie in 0\.\.17"),
        ("images to the autoregressive model", lambda: T.train_autoregressive(images, steps=1), TypeError,
         "integer grey levels"),
        ("levels above 16 to the masked model", lambda: T.train_masked(levels + 1, steps=1), ValueError,
         r"lie in 0\.\.16"),
        ("zero training steps", lambda: T.train_masked(levels, steps=0), ValueError, "steps must be at least 1"),
        ("zero learning rate", lambda: T.train_autoregressive(levels, steps=1, lr=0), ValueError, "lr must be > 0"),
        ("masked model sampled autoregressively", lambda: T.sample_autoregressive(masked, 2), TypeError, "causal=True"),
        ("causal model sampled by masking", lambda: T.sample_masked(causal, 2), TypeError, "causal=False"),
        ("more rounds than pixels", lambda: T.sample_masked(masked, 2, steps=65), ValueError, "steps must be at most 64"),
        ("no samples to decode", lambda: T.sample_masked(masked, 0), ValueError, "n must be at least 1"),
        ("zero temperature", lambda: T.sample_masked(masked, 2, temperature=0), ValueError, "temperature must be > 0"),
        ("negative choice temperature", lambda: T.sample_masked(masked, 2, choice_temperature=-1), ValueError,
         "choice_temperature must be ≥ 0"),
        ("zero temperature, autoregressive", lambda: T.sample_autoregressive(causal, 2, temperature=0), ValueError,
         "temperature must be > 0"),
        ("a schedule of zero steps", lambda: T.masking_schedule(64, 0), ValueError, "steps must be at least 1"),
        ("more steps than tokens", lambda: T.masking_schedule(8, 9), ValueError, "steps must be at most 8"),
        ("a float number of tokens", lambda: T.masking_schedule(64.0, 8), TypeError, "n_tokens must be an integer"),
        # diffusion
        ("betas in the wrong order", lambda: T.DiffusionSchedule(beta_start=0.1, beta_end=0.01), ValueError,
         "beta_start <= beta_end"),
        ("beta of 1.5", lambda: T.DiffusionSchedule(beta_end=1.5), ValueError, "beta_end must be < 1"),
        ("noise of another shape", lambda: T.add_noise(x0, torch.randn(3, 64), torch.rand(2)), ValueError,
         "must have the same shape"),
        ("one ᾱ too many", lambda: T.add_noise(x0, noise, torch.rand(3)), ValueError, r"alpha_bar must have shape \(2,\)"),
        ("ᾱ above 1", lambda: T.add_noise(x0, noise, torch.tensor([0.5, 2.0])), ValueError,
         r"alpha_bar must lie in \[0, 1\]"),
        ("NaN ᾱ", lambda: T.add_noise(x0, noise, torch.tensor([0.5, float("nan")])), ValueError,
         r"alpha_bar must lie in \[0, 1\]"),
        ("integer images to add_noise", lambda: T.add_noise(x0.long(), noise, torch.rand(2)), TypeError,
         "x0 must be floating point"),
        ("x of the wrong width", lambda: denoiser(torch.rand(2, 10), torch.zeros(2, dtype=torch.long)), ValueError,
         r"x must have shape \(B, 64\)"),
        ("one t per image missing", lambda: denoiser(x0, torch.zeros(3, dtype=torch.long)), ValueError,
         r"t must have shape \(2,\)"),
        ("zero diffusion steps", lambda: T.train_diffusion(images, steps=0), ValueError, "steps must be at least 1"),
        ("images in [-1, 1] to diffusion", lambda: T.train_diffusion(images * 2 - 1, steps=1), ValueError,
         r"values in \[0.0, 1.0\]"),
        ("eta of 2", lambda: T.sample_diffusion(denoiser, 2, eta=2), ValueError, "eta must be ≤ 1"),
        ("eta of NaN", lambda: T.sample_diffusion(denoiser, 2, eta=float("nan")), ValueError, "eta must be a finite"),
        ("more sampling steps than training steps", lambda: T.sample_diffusion(denoiser, 2, steps=2000), ValueError,
         "steps must be at most 1000"),
        ("a generator as denoiser", lambda: T.sample_diffusion(generator, 2), TypeError, "model must be a Denoiser"),
        # the evaluation
        ("images instead of Digits", lambda: T.train_evaluator(digits.images()), TypeError, "Digits"),
        ("zero classifier steps", lambda: T.train_evaluator(digits, steps=0), ValueError, "steps must be at least 1"),
        ("negative outlier weight", lambda: T.train_evaluator(digits, steps=1, outlier_weight=-1), ValueError,
         "outlier_weight must be ≥ 0"),
        ("one sample to evaluate", lambda: evaluator.evaluate(images[:1]), ValueError, "at least 2 samples"),
        ("samples in [0, 255] to evaluate", lambda: evaluator.evaluate(images * 255), ValueError, "divide by 255"),
        ("classifier of width 0", lambda: T.DigitClassifier(hidden=0), ValueError, "hidden must be at least 1"),
    ]


def test_bad_inputs_are_clear_errors(digits):
    """Every public function refuses bad arguments at its entry, naming the argument and what was wrong."""
    for what, call, error, pattern in _bad_calls(digits):
        try:
            call()
        except error as e:
            assert re.search(pattern, str(e)), f"{what}: the message {str(e)!r} does not match {pattern!r}"
        except Exception as e:
            pytest.fail(f"{what}: raised {type(e).__name__} ({e}), expected {error.__name__}")
        else:
            pytest.fail(f"{what}: accepted without an error")


def test_natural_inputs_are_converted(digits):
    """float64 and uint8 images, NumPy arrays and float64 noise vectors work where their meaning is clear."""
    images = digits.images()[:40]
    uint8 = (images * 255).round().to(torch.uint8)
    assert torch.equal(T.images_to_levels(uint8), T.images_to_levels(images))
    assert torch.equal(T.images_to_levels(images.numpy()), digits.train_levels[:40])
    assert T.images_to_levels(images.reshape(40, 64)).shape == (40, 64)            # same shape back
    gen, disc, _ = T.train_gan(images.double(), steps=1, batch=4, hidden=8)
    assert gen(torch.randn(2, 32, dtype=torch.float64)).dtype == torch.float32
    assert disc(images[:2].double()).shape == (2,)
    denoiser = T.Denoiser(hidden=16, depth=1)
    assert denoiser(torch.rand(2, 64, dtype=torch.float64), torch.zeros(2, dtype=torch.long)).dtype == torch.float32
    evaluator = T.Evaluator(T.DigitClassifier(), digits.images("test")[:20], 0.0)
    assert evaluator.evaluate(images.double())["confident"] == evaluator.evaluate(images)["confident"]
    assert T.masking_schedule(np.int64(64), np.int32(8)) == T.masking_schedule(64, 8)


def test_chapter_4_check_accepts_the_schedule_and_rejects_mistakes():
    assert ch04.check_masking_schedule(T.masking_schedule)
    linear = lambda n, steps: [n * (steps - t) // steps for t in range(1, steps + 1)]
    assert not ch04.check_masking_schedule(linear, verbose=False)
    no_floor = lambda n, steps: [max(0, round(n * math.cos(math.pi / 2 * t / steps)))
                                 for t in range(1, steps + 1)]
    assert not ch04.check_masking_schedule(no_floor, verbose=False)
    assert ch04.check_add_noise(T.add_noise)
    swapped = lambda x0, noise, a: a.reshape(-1, 1).sqrt() * noise + (1 - a.reshape(-1, 1)).sqrt() * x0
    assert not ch04.check_add_noise(swapped, verbose=False)
