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


def test_the_decoder_reads_an_embedding_and_checks_it(clip_model):
    config = T2IConfig(encoder="clip", text_dim=64, pooled_dim=64, channels=(8, 16, 16), image_size=16, T=50)
    model, history, _ = U.train_decoder(clip_model, config, U.DecoderRecipe(steps=2, batch_size=4, n_train=20))
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
