"""The judge scores generated images in later chapters, so it is held to measured bars here.

The module-scoped fixture loads it with ``load_judge`` (trained on first use, a few minutes on one CPU, then cached).
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
    with pytest.raises(ValueError, match=r"labels\['kind'\] must have 10 entries"):
        judge.score(data.tensor()[:10], labels={"kind": data.labels["kind"]}, model=model)
    with pytest.raises(ValueError, match=r"labels\['colour'\] must be class indices in \[0, 5\]"):
        judge.score(data.tensor()[:4], labels={"colour": [0, 1, 2, 99]}, model=model)
    with pytest.raises(TypeError, match=r"labels\['size'\] must hold integer class indices"):
        judge.score(data.tensor()[:2], labels={"size": [0.0, 1.0]}, model=model)


# -- shapes moved off ShapesWorld's places -----------------------------------------------------------
def test_the_judge_reads_the_kind_of_shapes_moved_by_up_to_4_pixels(model):
    tolerance = judge.shift_tolerance(model, shifts=(0, 1, 2, 3, 4), n=1000, seed=3000)
    assert set(tolerance) == {0, 1, 2, 3, 4}
    assert all(acc >= 0.9 for acc in tolerance.values()), tolerance


def test_evaluate_reports_the_shift_tolerance(model):
    metrics = judge.evaluate(model, n=200)
    assert all(0 <= metrics[f"kind_shift_{s}px"] <= 1 for s in range(5))


@pytest.mark.parametrize("shift", [0, 1, 3, 4])
def test_shift_shapes_moves_whole_shapes_and_keeps_every_pixel(shift):
    data = ShapesWorld(noise=0.0, seed=0).sample(300, split="all", seed=7, captions=None)
    x = data.tensor()
    moved, offsets, whole = judge.shift_shapes(data, shift, seed=1)
    assert moved.shape == x.shape and offsets.shape == (300, 2) and whole.dtype == torch.bool
    box = judge.footprint_box(data.shapes)
    cut = (box[:, 0] < 0) | (box[:, 1] > 31) | (box[:, 2] < 0) | (box[:, 3] > 31)
    assert 0.1 < cut.float().mean() < 0.5 and not whole[cut].any() and whole.float().mean() > 0.5
    assert torch.equal(moved[~whole], x[~whole]) and (offsets[~whole] == 0).all()
    assert (offsets[whole].abs().amax(1) == shift).all()
    assert ((offsets[whole] == 0) | (offsets[whole].abs() == shift)).all()          # one of eight directions
    if shift:
        assert len(torch.unique(offsets[whole], dim=0)) == 8
    before, after = judge.shape_mask(x), judge.shape_mask(moved)
    assert torch.equal(before.sum((1, 2)), after.sum((1, 2)))                        # no pixel lost
    grid = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="xy"))   # (x, y) of pixels
    def centroid(mask):
        return (grid[None] * mask[:, None]).sum((2, 3)) / mask.sum((1, 2))[:, None]
    assert torch.allclose(centroid(after[whole]) - centroid(before[whole]), offsets[whole].float(), atol=1e-4)
    for i in torch.nonzero(whole)[:20, 0].tolist():                                 # the background is filled in
        background = x[i].flatten(1).median(-1).values
        assert torch.allclose(moved[i][:, ~after[i]], background[:, None], atol=1e-6, rtol=0)
    # the moved shapes' pixels are the original shape's pixels
    assert torch.equal(moved[whole][after[whole][:, None].expand(-1, 3, -1, -1)].sort().values,
                       x[whole][before[whole][:, None].expand(-1, 3, -1, -1)].sort().values)


def test_shift_shapes_refuses_noisy_images_and_bad_arguments():
    noisy = ShapesWorld(seed=0).sample(10, split="all", seed=7, captions=None)
    with pytest.raises(ValueError, match="without pixel noise"):
        judge.shift_shapes(noisy, 2)
    clean = ShapesWorld(noise=0.0, seed=0).sample(10, split="all", seed=7, captions=None)
    with pytest.raises(TypeError, match="ShapesData"):
        judge.shift_shapes(clean.tensor(), 2)
    with pytest.raises(ValueError, match="shift must be at least 0"):
        judge.shift_shapes(clean, -1)
    with pytest.raises(TypeError, match="model must be a Judge"):
        judge.shift_tolerance("judge")
    with pytest.raises(ValueError, match="attribute must be one of"):
        judge.shift_tolerance(judge.Judge(), attribute="shape")


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
    (torch.randint(0, 255, (2, 3, 32, 32)), TypeError, "floating point"),
    (torch.rand(2, 3, 32, 32) * 2 - 1, ValueError, r"values in \[0\.0, 1\.0\].*\(x \+ 1\) / 2"),
    (torch.rand(2, 3, 32, 32) * 255, ValueError, "divide by 255"),
    (torch.full((2, 3, 32, 32), float("nan")), ValueError, "NaN"),
    ([[0.5] * 32] * 3, TypeError, "torch.Tensor"),
])
def test_bad_images_are_clear_errors(model, images, error, match):
    for fn in (model.read, model.validity, model.features, lambda x: judge.corrupt(x, "noise", 0.5),
               lambda x: judge.score(x, model=model)):
        with pytest.raises(error, match=match):
            fn(images)


def test_images_that_students_naturally_have_are_converted(model):
    x = ShapesWorld(seed=0).sample(8, split="test", seed=0, captions=None).tensor()
    as_bytes = (x * 255).round().to(torch.uint8)
    assert torch.equal(model.read(as_bytes)["kind"], model.read(as_bytes.float() / 255)["kind"])
    assert torch.allclose(model.validity(x.double()), model.validity(x))
    assert torch.allclose(model.features(x.numpy()), model.features(x))


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
    with pytest.raises(ValueError, match="max_shift must be at most 8"):
        judge.JudgeConfig(max_shift=9)
    with pytest.raises(TypeError, match="config must be a JudgeConfig"):
        judge.load_judge(config={"width": 16})
