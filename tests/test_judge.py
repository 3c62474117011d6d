"""The judge scores generated images in later chapters, so it is held to measured bars here.

The module-scoped fixture loads it with ``load_judge`` (trained on first use, under a minute on one CPU).
"""

import numpy as np
import pytest
import torch

from vlmlib import judge
from vlmlib.shapesworld import ATTRIBUTES, ShapesWorld

AMOUNTS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def model():
    return judge.load_judge(device="cpu", verbose=False)[0]


@pytest.fixture(scope="module")
def real():
    """1000 real images of each evaluation split, drawn with a seed that training never used."""
    world = ShapesWorld(seed=0)
    return {split: world.sample(1000, split=split, seed=31, captions=None) for split in ("test", "holdout")}


def gaussian_noise(n, mean=0.5, std=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (mean + std * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)


def uniform_noise(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def valid_fraction(model, images):
    return (model.validity(images) > 0.5).float().mean().item()


# -- reading attributes ----------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["test", "holdout"])
def test_reads_every_attribute_of_real_images(model, real, split):
    data = real[split]
    pred = model.read(data.tensor())
    assert set(pred) == set(ATTRIBUTES)
    acc = {k: (pred[k] == torch.from_numpy(data.labels[k])).float().mean().item() for k in ATTRIBUTES}
    assert all(pred[k].dtype == torch.long and pred[k].shape == (1000,) for k in ATTRIBUTES)
    assert acc["colour"] >= 0.99 and acc["kind"] >= 0.99 and acc["position"] >= 0.99, acc
    assert acc["size"] >= 0.98, acc


# -- validity --------------------------------------------------------------------------------------
def test_real_images_are_valid_and_noise_is_not(model, real):
    for split in ("test", "holdout"):
        p = model.validity(real[split].tensor())
        assert p.shape == (1000,) and p.dtype == torch.float32 and 0 <= p.min() and p.max() <= 1
        assert (p > 0.5).float().mean() >= 0.99, split
    for std in (0.1, 0.25, 0.5):                                  # a max-softmax judge calls all of these valid
        assert valid_fraction(model, gaussian_noise(1000, std=std, seed=1)) <= 0.01, std
    assert valid_fraction(model, uniform_noise(1000, seed=2)) <= 0.01


def test_blank_images_and_scenes_of_several_shapes_are_not_valid(model):
    blank = gaussian_noise(200, mean=0.12, std=0.03, seed=3)       # a ShapesWorld background without its shape
    assert valid_fraction(model, blank) <= 0.01
    scenes = ShapesWorld(max_shapes=4, seed=0).sample(400, split="test", seed=5, captions=None)
    several = scenes.tensor()[torch.from_numpy(scenes.labels["count"] >= 3)]
    assert valid_fraction(model, several) <= 0.05


def test_clean_renders_without_pixel_noise_are_still_valid(model):
    """Generators rarely reproduce the exact pixel noise; a well-drawn shape must not be rejected for it."""
    clean = ShapesWorld(noise=0.0, seed=0).sample(500, split="test", seed=8, captions=None).tensor()
    assert valid_fraction(model, clean) >= 0.95


# -- FID -------------------------------------------------------------------------------------------
def test_fid_is_small_between_real_sets_and_large_against_noise(model, real):
    a = model.features(real["test"].tensor())
    b = model.features(ShapesWorld(seed=0).sample(1000, split="test", seed=32, captions=None).tensor())
    assert a.shape == (1000, model.config.feature_dim)
    real_real = judge.fid(a, b)
    real_noise = judge.fid(a, model.features(gaussian_noise(1000, seed=4)))
    assert real_noise > 100 * real_real, (real_real, real_noise)


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_corruption_sweeps_are_monotonic(model, real, kind):
    x = real["test"].tensor()
    ref = model.features(ShapesWorld(seed=0).sample(1000, split="test", seed=33, captions=None).tensor())
    fids, valid = [], []
    for amount in AMOUNTS:
        y = judge.corrupt(x, kind, amount, seed=6)
        fids.append(judge.fid(model.features(y), ref))
        valid.append(valid_fraction(model, y))
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a >= b for a, b in zip(valid, valid[1:])), valid
    assert valid[0] >= 0.99 and valid[-1] <= 0.01, valid


def test_fid_is_symmetric_and_zero_on_identical_sets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(400, 8, generator=g) * 2 + 1
    assert judge.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    assert judge.fid(a, b) == pytest.approx(judge.fid(b, a), rel=1e-6)
    assert judge.fid(a.numpy(), b.numpy()) == pytest.approx(judge.fid(a, b))
    # Two Gaussians with known parameters: |μa − μb|² + tr(Σa + Σb − 2(ΣaΣb)^½) = 8·1 + 8·(1 + 4 − 4) = 16.
    x, y = torch.randn(200_000, 8, generator=g), 2 * torch.randn(200_000, 8, generator=g) + 1
    assert judge.fid(x, y) == pytest.approx(16.0, rel=0.02)
    with pytest.raises(ValueError, match="same dimension"):
        judge.fid(a, torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        judge.fid(torch.randn(10), a)
    with pytest.raises(TypeError, match="tensor or array"):
        judge.fid([[1.0, 2.0]], a)


# -- score -----------------------------------------------------------------------------------------
def test_score_reports_validity_fid_coverage_and_faithfulness(model, real):
    data = real["holdout"]
    s = judge.score(data.tensor(), labels={"colour": data.labels["colour"], "kind": data.labels["kind"]}, model=model)
    assert s["valid"] >= 0.99 and s["colour"] >= 0.99 and s["kind"] >= 0.99 and s["faithful"] >= 0.97
    test = judge.score(real["test"].tensor(), model=model)
    assert set(test) == {"valid", "fid", "coverage"} and test["coverage"] >= 20 / 24   # the test split has 20 pairs
    every = ShapesWorld(seed=0).sample(500, split="all", seed=34, captions=None).tensor()
    assert judge.score(every, model=model)["coverage"] == 1.0
    one = judge.score(data.tensor()[data.labels["colour"] == data.labels["colour"][0]], model=model)
    assert one["coverage"] <= 2 / 24                                 # one colour: one or two pairs at most
    noise = judge.score(gaussian_noise(500, seed=9), model=model)
    assert noise["valid"] <= 0.01 and noise["coverage"] <= 0.05 and noise["fid"] > 100 * test["fid"]
    with pytest.raises(ValueError, match="unknown attribute"):
        judge.score(data.tensor()[:10], labels={"shape": data.labels["kind"][:10]}, model=model)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        judge.score(data.tensor()[:10], labels={"kind": data.labels["kind"]}, model=model)


# -- corruptions and bad input ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", judge.CORRUPTIONS)
def test_corrupt_is_identity_at_zero_and_deterministic(kind):
    x = ShapesWorld(seed=0).sample(8, split="test", seed=0, captions=None).tensor()
    assert torch.equal(judge.corrupt(x, kind, 0.0), x)
    y = judge.corrupt(x, kind, 0.6, seed=1)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and not torch.equal(y, x)
    assert torch.equal(y, judge.corrupt(x, kind, 0.6, seed=1))


def test_corrupt_keeps_the_colours_when_it_moves_pixels():
    x = ShapesWorld(seed=0).sample(4, split="test", seed=0, captions=None).tensor()
    for kind in ("scramble", "patches"):
        y = judge.corrupt(x, kind, 1.0, seed=2)
        assert torch.equal(y.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)


@pytest.mark.parametrize("images, error, match", [
    (torch.rand(2, 3, 16, 16), ValueError, r"shape \(N, 3, 32, 32\)"),
    (torch.rand(3, 32, 32), ValueError, r"shape \(N, 3, 32, 32\)"),
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), ValueError, "floating point"),
    (torch.rand(2, 3, 32, 32) * 2 - 1, ValueError, r"values in \[0, 1\]"),
    (torch.full((2, 3, 32, 32), float("nan")), ValueError, "NaN"),
    (np.zeros((2, 3, 32, 32), dtype=np.float32), TypeError, "torch.Tensor"),
])
def test_bad_images_are_clear_errors(model, images, error, match):
    for fn in (model.read, model.validity, model.features, lambda x: judge.corrupt(x, "noise", 0.5),
               lambda x: judge.score(x, model=model)):
        with pytest.raises(error, match=match):
            fn(images)


def test_bad_arguments_are_clear_errors():
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown corruption"):
        judge.corrupt(x, "rain", 0.5)
    with pytest.raises(ValueError, match="amount must be a number in"):
        judge.corrupt(x, "blur", 1.5)
    with pytest.raises(ValueError, match="seed must be"):
        judge.corrupt(x, "blur", 0.5, seed=-1)
    with pytest.raises(ValueError, match="channels must be three positive integers"):
        judge.JudgeConfig(channels=(16, 0, 32))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        judge.JudgeConfig(steps=0)
    with pytest.raises(TypeError, match="config must be a JudgeConfig"):
        judge.load_judge(config={"width": 16})
