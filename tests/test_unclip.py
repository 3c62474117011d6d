"""Chapter 6's unCLIP: slerp, the decoder, the priors, and the shipped decoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlmlib import unclip as U
from vlmlib.clip import CLIP, CLIPConfig
from vlmlib.text2image import T2IConfig


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return CLIP(CLIPConfig()).eval()


def test_slerp_walks_the_sphere_between_its_ends():
    a, b = F.normalize(torch.randn(2, 64), dim=-1)
    assert torch.allclose(U.slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(U.slerp(a, b, 1.0), b, atol=1e-5)
    mid = U.slerp(a, b, 0.5)
    assert math.isclose(float(mid.norm()), 1.0, abs_tol=1e-5)
    assert math.isclose(float(mid @ a), float(mid @ b), abs_tol=1e-5)


@pytest.fixture(scope="module")
def decoder(clip_model):
    config = T2IConfig(encoder="clip", text_dim=64, pooled_dim=64, channels=(8, 16, 16), image_size=16, T=50)
    return U.train_decoder(clip_model, config, U.DecoderRecipe(steps=2, batch_size=4, n_train=20))[0]


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (two threads on a busy machine can be 10× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_decoder_reads_an_embedding_and_checks_it(clip_model, decoder):
    model = decoder
    z = U.image_embeddings(clip_model, torch.rand(3, 3, 32, 32))
    out = U.decode(model, z, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="image embeddings"):
        U.decode(model, torch.zeros(3, 10))
    with pytest.raises(ValueError, match="z must be"):
        model(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), torch.zeros(3, 64))


def test_the_diffusion_prior_samples_unit_embeddings_and_keeps_the_closer_candidate(clip_model):
    data = U.prior_training_pairs(clip_model, 64)
    prior, history, _ = U.train_prior(clip_model, U.PriorConfig(steps=3, batch_size=8), data=data)
    z = U.sample_prior(prior, data[0][:5], steps=4, candidates=3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (5, 64) and torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-5)
    regression, _ = U.train_regression_prior(data, steps=2)
    assert torch.allclose(regression(data[0][:2]).norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(TypeError, match="prior must be"):
        U.generate(["a red shape"], "nonsense", None, clip_model)


def test_the_priors_train_once_through_the_cache_and_load_bit_for_bit(clip_model, tmp_path, monkeypatch, one_thread):
    from dataclasses import replace

    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    config = U.PriorConfig(steps=3, batch_size=8, n_train=64)
    state = torch.random.get_rng_state()
    prior, art = U.build_prior(clip_model, config, verbose=False)
    again, art_again = U.build_prior(clip_model, config, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), state)          # trained or loaded: the global state is kept
    assert not art.from_cache and art_again.from_cache
    direct, history, _ = U.train_prior(clip_model, config)
    for (k, a), b, c in zip(direct.state_dict().items(), prior.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), k
    assert art_again.history["loss"] == history["loss"] and art_again.metrics["train_seconds"] > 0
    assert not U.build_prior(clip_model, replace(config, seed=1), verbose=False)[1].from_cache

    regression, r_art = U.build_regression_prior(clip_model, steps=2, n_train=64, verbose=False)
    r_again, r_art_again = U.build_regression_prior(clip_model, steps=2, n_train=64, verbose=False)
    assert not r_art.from_cache and r_art_again.from_cache
    r_direct, _ = U.train_regression_prior(U.prior_training_pairs(clip_model, 64), steps=2)
    for (k, a), b, c in zip(r_direct.state_dict().items(), regression.state_dict().values(),
                            r_again.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), k
    other_clip = CLIP(CLIPConfig())                                   # other weights: trained again
    assert not U.build_regression_prior(other_clip, steps=2, n_train=64, verbose=False)[1].from_cache
    with pytest.raises(TypeError, match="config must be a PriorConfig"):
        U.build_prior(clip_model, {"steps": 3})
    with pytest.raises(ValueError, match="steps must be at least 1"):
        U.build_regression_prior(clip_model, steps=0)


def test_decoding_and_generating_through_the_cache_give_the_same_images(clip_model, decoder, tmp_path, monkeypatch,
                                                                        one_thread):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    z = U.image_embeddings(clip_model, torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    first = U.decode_cached(decoder, z, 3.0, steps=3, seed=1, verbose=False)
    again = U.decode_cached(decoder, z, 3.0, steps=3, seed=1, verbose=False)
    assert not first["from_cache"] and again["from_cache"] and again["seconds"] == first["seconds"]
    direct = U.decode(decoder, z, 3.0, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first["images"], direct) and torch.equal(again["images"], direct)
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    by_noise = U.decode_cached(decoder, z, 3.0, steps=3, noise=noise, verbose=False)
    assert not by_noise["from_cache"] and torch.equal(by_noise["images"], U.decode(decoder, z, 3.0, 3, noise=noise))
    assert U.decode_cached(decoder, z, 3.0, steps=3, noise=noise.clone(), verbose=False)["from_cache"]
    assert not U.decode_cached(decoder, z, 3.0, steps=3, noise=noise + 0.1, verbose=False)["from_cache"]
    assert not U.decode_cached(decoder, z.flip(0), 3.0, steps=3, seed=1, verbose=False)["from_cache"]
    assert not U.decode_cached(decoder, z, 3.0, steps=3, seed=2, verbose=False)["from_cache"]
    with pytest.raises(ValueError, match="exactly one"):
        U.decode_cached(decoder, z, seed=1, noise=noise)
    with pytest.raises(ValueError, match="exactly one"):
        U.decode_cached(decoder, z)
    with pytest.raises(TypeError, match="decoder must be a Decoder"):
        U.decode_cached(clip_model, z, seed=0)

    data = U.prior_training_pairs(clip_model, 64)
    prior = U.train_prior(clip_model, U.PriorConfig(steps=2, batch_size=8), data=data)[0]
    regression = U.train_regression_prior(data, steps=2)[0]
    prompts = ["a red shape", "a small blue circle at the top left"]
    for p in (prior, regression, None):
        made = U.generate_cached(prompts, p, decoder, clip_model, 3.0, steps=3, seed=4, verbose=False)
        loaded = U.generate_cached(prompts, p, decoder, clip_model, 3.0, steps=3, seed=4, verbose=False)
        assert not made["from_cache"] and loaded["from_cache"]
        direct = U.generate(prompts, p, decoder, clip_model, 3.0, steps=3, seed=4)
        assert torch.equal(made["images"], direct) and torch.equal(loaded["images"], direct)
    assert not U.generate_cached(prompts, prior, decoder, clip_model, 3.0, steps=3, seed=5, verbose=False)["from_cache"]
    assert not U.generate_cached(prompts[:1], prior, decoder, clip_model, 3.0, steps=3, seed=4,
                                 verbose=False)["from_cache"]
    with pytest.raises(TypeError, match="prior must be"):
        U.generate_cached(prompts, "nonsense", decoder, clip_model)


def test_the_shipped_decoder_redraws_its_recorded_check():
    """Re-draw the check's real scenes from their CLIP embeddings; the scores must be the recorded ones."""
    if not (U.decoder_folder() / "record.json").exists():
        pytest.skip("the unCLIP decoder does not ship yet")
    torch.set_num_threads(1)
    model, clip_model, record = U.load_decoder()
    check = record["metrics"]["check"]
    now = U.decoder_scores(model, clip_model, n=check["n"])
    for key in ("redraw_test", "redraw_holdout"):
        assert abs(now[key] - check[key]) <= 0.05, (key, now[key], check[key])


def test_the_shipped_decoder_loads_its_clip_and_its_record():
    if not (U.decoder_folder() / "record.json").exists():
        pytest.skip("the unCLIP decoder does not ship yet (chapter 6 is in preparation)")
    model, clip_model, record = U.load_decoder()
    m = record["metrics"]
    assert 0 <= m["redraw_test"] <= 1 and 0 <= m["redraw_holdout"] <= 1
    z = U.image_embeddings(clip_model, torch.rand(1, 3, 32, 32))
    assert z.shape == (1, model.embed_dim)
