import math

import pytest
import torch

from vlmlib import toolkit as T
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


def test_frechet_distance_of_gaussians():
    torch.manual_seed(0)
    a = torch.randn(4000, 3)
    assert abs(T.frechet_distance(a, a)) < 1e-6
    assert abs(T.frechet_distance(a, a + torch.tensor([3.0, 0, 0])) - 9) < 1e-6
    b = torch.randn(4000, 3) * 2                                     # Tr(I + 4I - 2·2I) = 3
    assert abs(T.frechet_distance(a, b) - 3) < 0.3


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


def test_bad_inputs_are_clear_errors(digits):
    with pytest.raises(ValueError, match="test_fraction"):
        T.load_digits_data(test_fraction=1.5)
    with pytest.raises(ValueError, match=r"shape \(N, 8, 8\)"):
        T.train_gan(torch.rand(10, 3, 8, 8), steps=1)
    with pytest.raises(TypeError, match="floats in"):
        T.train_gan(digits.train_levels, steps=1)
    with pytest.raises(TypeError, match="integer grey levels"):
        T.train_autoregressive(digits.images(), steps=1)
    with pytest.raises(ValueError, match=r"lie in 0\.\.16"):
        T.train_masked(digits.train_levels + 1, steps=1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        T.train_diffusion(digits.images(), steps=0)
    masked = T.PixelTransformer(causal=False, dim=16, depth=1, heads=2)
    with pytest.raises(TypeError, match="causal=True"):
        T.sample_autoregressive(masked, 2)
    with pytest.raises(ValueError, match="steps must be at most 64"):
        T.sample_masked(masked, 2, steps=65)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        T.sample_masked(masked, 0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        T.sample_masked(masked, 2, temperature=0)
    with pytest.raises(ValueError, match="eta must be a number"):
        T.sample_diffusion(T.Denoiser(hidden=16, depth=1), 2, eta=2)
    with pytest.raises(ValueError, match="steps must be at most 1000"):
        T.sample_diffusion(T.Denoiser(hidden=16, depth=1), 2, steps=2000)
    with pytest.raises(TypeError, match="must be a Generator"):
        T.sample_gan(masked, 2)
    with pytest.raises(ValueError, match="heads=3 must divide dim=16"):
        T.PixelTransformer(causal=True, dim=16, heads=3)
    with pytest.raises(TypeError, match="Digits"):
        T.train_evaluator(digits.images())
    with pytest.raises(ValueError, match="same D"):
        T.frechet_distance(torch.randn(5, 3), torch.randn(5, 4))


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
