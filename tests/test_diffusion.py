"""Chapter 5: the diffusion equations against diffusers' schedulers, and a denoiser that learns."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from vlmlib import diffusion as D

DIFFUSERS_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_equals_diffusers(kind):
    s = D.make_schedule(kind, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAME[kind])
    assert torch.equal(s.betas, ref.betas)
    assert torch.equal(s.alphas, ref.alphas)
    assert torch.equal(s.alpha_bar, ref.alphas_cumprod)
    assert s.T == 1000 and (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()


def test_schedule_values_from_the_papers():
    lin = D.make_schedule("linear")
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    assert lin.alpha_bar[-1].item() == pytest.approx(4.04e-5, rel=0.01)          # ᾱ_T of DDPM
    cos = D.make_schedule("cosine", 50)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cos.alpha_bar[19].item() == pytest.approx(f(20 / 50) / f(0), rel=1e-5)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_equals_add_noise(kind):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1, torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    ref = DDPMScheduler(beta_schedule=DIFFUSERS_NAME[kind]).add_noise(x0, noise, t)
    s = D.make_schedule(kind)
    assert torch.allclose(D.q_sample(x0, t, noise, s.alpha_bar), ref, atol=1e-6)
    assert torch.allclose(D.q_sample(x0, t, noise, s), ref, atol=1e-6)


def test_chain_equals_closed_form_in_distribution():
    s = D.make_schedule("linear", 100, beta_end=0.2)
    x0 = torch.full((4000, 1, 1, 1), 0.8)
    xt = D.noise_step_by_step(x0, 30, s, generator=torch.Generator().manual_seed(0))
    a = s.alpha_bar[30].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.8, abs=0.03)
    assert xt.std().item() == pytest.approx(math.sqrt(1 - a), abs=0.03)
    eps = D.equivalent_noise(x0, xt, 30, s)                     # the chain's noise, as one draw
    assert torch.allclose(D.q_sample(x0, 30, eps, s), xt, atol=1e-5)
    path = D.noise_step_by_step(x0[:2], 3, s, return_all=True)
    assert len(path) == 5 and torch.equal(path[0], x0[:2])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_reverse_step_equals_scheduler_step(kind):
    sched = DDPMScheduler(beta_schedule=DIFFUSERS_NAME[kind], clip_sample=False)
    s = D.make_schedule(kind)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    for t in [999, 500, 10, 1, 0]:
        ref = sched.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))   # the scheduler's draw
        mine = D.ddpm_reverse_step(eps, t, x, s, noise=z)
        # diffusers computes β_t = 1 − ᾱ_t/ᾱ_{t−1} in float32, which loses digits at small t
        assert torch.allclose(mine, ref, atol=5e-4), t
    # in float64 (the same ᾱ, the scheduler's arithmetic in double) they agree to rounding
    sched.alphas_cumprod, sched.one = sched.alphas_cumprod.double(), torch.tensor(1.0, dtype=torch.float64)
    x, eps = x.double(), eps.double()
    for t in [999, 500, 10, 1, 0]:
        ref = sched.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        assert torch.allclose(D.ddpm_reverse_step(eps, t, x, s, noise=z), ref, atol=1e-9, rtol=0), t


def test_ddpm_strided_step_equals_scheduler_with_fewer_steps():
    sched = DDPMScheduler(clip_sample=False)
    sched.set_timesteps(10)
    s = D.make_schedule("linear")
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    ts = sched.timesteps.tolist()
    t, t_prev = ts[3], ts[4]
    ref = sched.step(eps, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(D.ddpm_reverse_step(eps, t, x, s, noise=z, t_prev=t_prev), ref, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_equals_scheduler_step(eta):
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(20)
    s = D.make_schedule("linear")
    g = torch.Generator().manual_seed(3)
    x, eps, z = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    ts = sched.timesteps.tolist()
    for i in [0, 7, len(ts) - 1]:
        t = ts[i]
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ref = sched.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        assert torch.allclose(D.ddim_step(eps, t, x, s, t_prev=t_prev, eta=eta, noise=z), ref, atol=1e-5), t


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_round_trip(pred):
    s = D.make_schedule("cosine")
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1, torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([3, 400, 900])
    xt = D.q_sample(x0, t, noise, s)
    x0_hat, eps_hat = D.to_x0_eps(D.target_for(pred, x0, noise, t, s), t, xt, s, pred)
    assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, noise, atol=1e-3)
    if pred == "v_prediction":   # diffusers' definition of v
        assert torch.allclose(D.target_for(pred, x0, noise, t, s),
                              DDPMScheduler(beta_schedule="squaredcos_cap_v2").get_velocity(x0, noise, t), atol=1e-6)


def test_timesteps_for():
    assert D.timesteps_for(5, 1000) == [999, 749, 500, 250, 0]
    assert D.timesteps_for(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        D.timesteps_for(0, 1000)


def test_bad_input():
    s = D.make_schedule()
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="kind"):
        D.make_schedule("quadratic")
    with pytest.raises(ValueError, match="T must"):
        D.make_schedule("linear", 1)
    with pytest.raises(ValueError, match="timestep indices"):
        D.q_sample(x, 1000, x, s)
    with pytest.raises(ValueError, match="one timestep per image"):
        D.q_sample(x, torch.tensor([1, 2, 3]), x, s)
    with pytest.raises(ValueError, match="t must be an integer"):
        D.q_sample(x, torch.tensor([1.0, 2.0]), x, s)
    with pytest.raises(ValueError, match="noise"):
        D.q_sample(x, 3, torch.zeros(2, 3, 4, 5), s)
    with pytest.raises(ValueError, match="x0"):
        D.q_sample(torch.zeros(3, 4, 4), 3, torch.zeros(3, 4, 4), s)
    with pytest.raises(ValueError, match="eps"):
        D.ddpm_reverse_step(torch.zeros(1, 3, 4, 4), 3, x, s)
    with pytest.raises(ValueError, match="t_prev"):
        D.ddim_step(x, 3, x, s, t_prev=5)
    with pytest.raises(ValueError, match="eta"):
        D.ddim_step(x, 3, x, s, eta=-1.0)
    with pytest.raises(TypeError, match="Schedule"):
        D.ddpm_reverse_step(x, 3, x, s.alpha_bar)
    with pytest.raises(ValueError, match="prediction_type"):
        D.DiffusionConfig(prediction_type="x0")
    with pytest.raises(ValueError, match="norm_groups"):
        D.DiffusionConfig(channels=(30, 64))
    with pytest.raises(ValueError, match="colour"):
        D.class_labels("pink", "circle")
    model = D.Denoiser(D.DiffusionConfig(image_size=8, channels=(8, 8), norm_groups=4))
    with pytest.raises(ValueError, match="sampler"):
        D.sample(model, 2, sampler="euler")
    with pytest.raises(ValueError, match="unconditional"):
        D.sample(model, 2, labels=torch.zeros(2, dtype=torch.long))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (two threads on a busy machine can be 10× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_unet_trains_and_samples(one_thread):
    config = D.DiffusionConfig(image_size=8, channels=(8, 16), norm_groups=4, num_classes=D.NUM_CLASSES,
                               prediction_type="sample")
    recipe = D.Recipe(steps=30, batch_size=16, lr=3e-3, n_train=256, warmup=0.1)
    model, raw, history, seconds = D.train_diffusion(config, recipe)
    loss = history["loss"]
    assert len(loss) == 30 and sum(loss[-10:]) / 10 < 0.6 * sum(loss[:5]) / 5
    assert history["steps_per_second"][0] > 0 and seconds > 0
    labels = D.class_labels(["red", "blue"], ["circle", "cross"])
    for sampler in ("ddpm", "ddim"):
        images, path = D.sample(model, 2, steps=4, sampler=sampler, labels=labels, return_path=True,
                                generator=torch.Generator().manual_seed(0), show_progress=False)
        assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
        assert len(path) == 4


def test_chapter_5_checks_accept_the_solutions_and_reject_mistakes():
    from vlmlib.exercises import ch05

    def q(x0, t, noise, alpha_bar):
        a = alpha_bar[t].reshape(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def reverse(eps, t, x_t, betas, alpha_bar, z):
        beta, ab = betas[t].item(), alpha_bar[t].item()
        mean = (x_t - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)
        if t == 0:
            return mean
        return mean + math.sqrt((1 - alpha_bar[t - 1].item()) / (1 - ab) * beta) * z

    def ddim(eps, t, t_prev, x_t, alpha_bar):
        ab = alpha_bar[t].item()
        ab_prev = alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
        x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps

    assert ch05.check_q_sample(q, seed=1)
    assert not ch05.check_q_sample(lambda x0, t, noise, ab: ab[t].reshape(-1, 1, 1, 1) * x0 + noise)
    assert ch05.check_reverse_step(reverse, seed=2)
    assert not ch05.check_reverse_step(lambda eps, t, x, b, ab, z: reverse(eps, t, x, b, ab, 0 * z))
    assert ch05.check_ddim_step(ddim, seed=3)
    assert not ch05.check_ddim_step(lambda eps, t, tp, x, ab: ddim(eps, t, max(tp, 0), x, ab))
    assert ch05.check_cosine_alpha_bar(lambda T: D.make_schedule("cosine", T).alpha_bar)
    assert not ch05.check_cosine_alpha_bar(lambda T: D.make_schedule("linear", T).alpha_bar)


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_with_a_perfect_denoiser_returns_the_image(pred, sampler):
    """A network that always knows x₀ (for one fixed image) must be led to exactly that image."""
    config = D.DiffusionConfig(image_size=8, channels=(8, 8), norm_groups=4, prediction_type=pred)
    model = D.Denoiser(config)
    target = torch.rand(1, 3, 8, 8) * 2 - 1

    def oracle(x_t, t, labels=None):
        x0 = target.expand_as(x_t)
        a = model.schedule.alpha_bar[t].reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return D.target_for(pred, x0, eps, t, model.schedule)

    model.forward = oracle
    images = D.sample(model, 3, steps=7, sampler=sampler, out_size=8, show_progress=False)
    assert torch.allclose(images, D.to_image_space(target).expand(3, -1, -1, -1), atol=1e-4)


def test_classifier_free_guidance_follows_the_diffusers_formula():
    """One DDIM step from t = T−1 returns x̂₀ itself, so it shows the guided prediction directly."""
    config = D.DiffusionConfig(image_size=8, channels=(8, 8), norm_groups=4, num_classes=D.NUM_CLASSES)
    model = D.Denoiser(config)
    labels = D.class_labels(["red", "cyan"], ["square", "triangle"])
    seen = []

    def fake(x_t, t, labels=None):          # x̂₀ depends on the label: class c predicts c/100
        seen.append(labels.clone())
        return (labels.float() / 100).reshape(-1, 1, 1, 1).expand_as(x_t)

    model.forward = fake
    x = D.sample(model, 2, steps=1, labels=labels, guidance=3.0, out_size=8, show_progress=False,
                 generator=torch.Generator().manual_seed(0))
    u, c = D.NUM_CLASSES / 100, labels.float() / 100
    expected = (u + 3.0 * (c - u)).clamp(-1, 1)                # ε(∅) + w·(ε(y) − ε(∅)), here in x̂₀
    # (x̂₀ goes through ε and back at ᾱ ≈ 0, which costs float32 a little precision)
    assert torch.allclose(x, D.to_image_space(expected.reshape(-1, 1, 1, 1).expand(2, 3, 8, 8)), atol=2e-3)
    assert seen[-1].tolist() == [D.NUM_CLASSES] * 2 + labels.tolist()   # one batch: unconditional, then labelled
    seen.clear()
    plain = D.sample(model, 2, steps=1, labels=labels, out_size=8, show_progress=False)
    assert len(seen) == 1
    assert torch.allclose(plain, D.to_image_space(c.reshape(-1, 1, 1, 1).expand(2, 3, 8, 8)), atol=2e-3)
    with pytest.raises(ValueError, match="guidance"):
        D.sample(model, 2, labels=labels, guidance=float("nan"))
    with pytest.raises(ValueError, match="guidance needs labels"):
        D.sample(model, 2, guidance=2.0)


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    config = D.DiffusionConfig(image_size=8, channels=(8, 8), norm_groups=4, num_classes=D.NUM_CLASSES)
    model = D.Denoiser(config)
    D.save_checkpoint(model, D.Recipe(steps=3), {"valid": 0.5}, {"loss": [1.0]}, tmp_path)
    again, record = D.load_checkpoint(tmp_path)
    assert record["metrics"] == {"valid": 0.5} and record["recipe"]["steps"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="tools.train_diffusion"):
        D.load_checkpoint(tmp_path / "nowhere")
    weights = tmp_path / f"{D.CHECKPOINT_NAME}.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="checksum"):
        D.load_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="Denoiser"):
        D.save_checkpoint(model.unet, D.Recipe(), {}, {}, tmp_path)


def test_the_shipped_checkpoint_meets_the_bars_and_its_scores_reproduce():
    """The chapter's results come from this checkpoint: its recorded scores must be true and meet the bars."""
    from tools import train_diffusion as tool

    model, record = D.load_checkpoint()                       # the one in vlmlib/weights
    weights = D.checkpoint_folder() / f"{D.CHECKPOINT_NAME}.safetensors"
    assert weights.stat().st_size < 8e6, "the checkpoint must stay small (a few MB)"
    config, recipe = tool.checkpoint_settings()
    assert record["config"] == config.to_dict(), "the checkpoint is not what `python -m tools.train_diffusion` makes"
    assert {k: v for k, v in record["recipe"].items() if k != "steps"} == \
        {k: v for k, v in recipe.to_dict().items() if k != "steps"}
    m = record["metrics"]
    for key in ("valid", "cond_colour", "cond_kind"):
        assert m[key] >= 0.8, f"the checkpoint's {key} is {m[key]:.1%}, below the chapter's 80% bar"
    assert m["guided"]["guidance"] == tool.GUIDANCE
    for key in ("cond_valid", "cond_colour", "cond_kind"):
        assert m["guided"][key] >= 0.8, f"with guidance, {key} is {m['guided'][key]:.1%}, below the 80% bar"
    verify = m["verify"]
    # the weights and the sampler give the same images as when the checkpoint was made ...
    assert tool.fingerprint(model) == pytest.approx(verify["fingerprint"], abs=2e-3)
    # ... and the judge reads them as it did. A judge trained on another machine is not bit-identical,
    # so a few borderline samples may be read differently: allow 8 of the 96.
    again = D.evaluate(model, n=verify["n"], steps=verify["steps"], seed=verify["seed"])
    for key in ("valid", "cond_colour", "cond_kind", "cond_valid"):
        assert abs(again[key] - verify[key]) <= 8 / verify["n"] + 1e-6, (key, again[key], verify[key])
    assert again["fid"] == pytest.approx(verify["fid"], rel=0.25)


def test_factored_labels_share_a_kind_vector_across_colours():
    config = D.DiffusionConfig(image_size=8, channels=(8, 16), norm_groups=4, num_classes=D.NUM_CLASSES,
                               label_embedding="factored")
    model = D.Denoiser(config)
    assert model.unet.class_embedding.__class__.__name__ == "Identity"
    red_circle, blue_circle, red_cross = D.class_labels(["red", "blue", "red"], ["circle", "circle", "cross"])
    e = model.embed_labels(torch.stack([red_circle, blue_circle, red_cross, torch.tensor(D.NUM_CLASSES)]))
    colour, kind = model.colour_embedding.weight, model.kind_embedding.weight
    assert torch.allclose(e[0] - e[1], colour[0] - colour[2])        # same kind: only the colour differs
    assert torch.allclose(e[0] - e[2], kind[0] - kind[3])            # same colour: only the kind differs
    assert torch.allclose(e[3], colour[-1] + kind[-1])               # "no label" has its own vectors
    out = model(torch.randn(4, 3, 8, 8), torch.tensor([0, 10, 500, 999]),
                torch.tensor([0, 5, 23, D.NUM_CLASSES]))
    assert out.shape == (4, 3, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="label_embedding"):
        D.DiffusionConfig(num_classes=D.NUM_CLASSES, label_embedding="summed")
    with pytest.raises(ValueError, match="factored"):
        D.DiffusionConfig(num_classes=5, label_embedding="factored")
