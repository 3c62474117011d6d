"""The scene judge scores chapter 6's generated scenes, so it is held to measured bars here.

The shipped model (``vlmlib/weights/scene-judge.*``, made by ``python -m tools.train_scene_judge``)
is re-evaluated on fresh scenes drawn with a seed that neither training nor its stored evaluation used.
"""

import json

import numpy as np
import pytest
import torch

from vlmlib import scene_judge as S
from vlmlib.shapesworld import POSITIONS, RELATIONS, Shape, ShapesWorld

N = 500


@pytest.fixture(scope="module")
def loaded():
    return S.load_scene_judge()


@pytest.fixture(scope="module")
def model(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def real():
    world = ShapesWorld(max_shapes=3, seed=0)
    return {split: world.sample(N, split=split, seed=77, captions=None) for split in ("test", "holdout")}


def truth(shapes):
    """The scene as read_scenes writes it: dicts of names in POSITIONS order."""
    keys = ("position", "colour", "kind", "size")
    return sorted(({k: getattr(s, k) for k in keys} for s in shapes), key=lambda d: POSITIONS.index(d["position"]))


def shape(colour, kind, position, size="small"):
    p = POSITIONS.index(position)
    return Shape(colour, kind, size, position, (p % 3 + 0.5) * 32 / 3, (p // 3 + 0.5) * 32 / 3, 4.0)


# -- the shipped model -----------------------------------------------------------------------------
def test_the_record_meets_the_bars(loaded):
    _, record = loaded
    assert record["bars"] == S.BARS
    assert S.SceneJudgeConfig(**record["config"]) == S.SceneJudgeConfig()      # the defaults remake it
    m = record["metrics"]
    assert S.meets_bars(m) == record["meets_bars"]
    assert record["meets_bars"]["scene_right"] and record["meets_bars"]["valid"] and record["meets_bars"]["noise_invalid"]
    for split in ("test", "holdout"):
        assert m[f"{split}_scene_right"] >= 0.99 and m[f"{split}_valid"] >= 0.99
        assert m[f"{split}_16px_scene_right_no_size"] >= 0.98 and m[f"{split}_16px_valid"] >= 0.99
    for k in ("gaussian_noise", "uniform_noise", "blank"):
        assert m[f"{k}_valid"] <= 0.01, k


@pytest.mark.parametrize("split", ["test", "holdout"])
def test_reads_fresh_real_scenes(model, real, split):
    data = real[split]
    scenes = model.read_scenes(data.tensor())
    assert len(scenes) == N and all(isinstance(s, list) for s in scenes)
    right = np.mean([read == truth(shapes) for read, shapes in zip(scenes, data.shapes)])
    assert right >= 0.99, right
    counts = np.mean([len(read) == len(shapes) for read, shapes in zip(scenes, data.shapes)])
    assert counts >= 0.99, counts


@pytest.mark.parametrize("split", ["test", "holdout"])
def test_reads_scenes_after_the_16px_round_trip(model, real, split):
    data = real[split]
    scenes = model.read_scenes(S.round_trip(data.tensor()))
    strip = lambda scene: [{k: v for k, v in s.items() if k != "size"} for s in scene]
    right = np.mean([strip(read) == strip(truth(shapes)) for read, shapes in zip(scenes, data.shapes)])
    assert right >= 0.98, right


def test_the_round_trip_is_chapter_6s():
    from vlmlib import diffusion as D

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    generated_look = D.to_image_space(D.to_model_space(x, 16), 32)
    assert torch.allclose(S.round_trip(x), generated_look, atol=1e-6)


def test_a_mirror_image_is_read_mirrored(model, real):
    x = real["test"].tensor()[:50]
    a, b = model.read_scenes(x), model.read_scenes(x.flip(-1))
    mirror = {p: POSITIONS[S._MIRROR[i]] for i, p in enumerate(POSITIONS)}
    for sa, sb in zip(a, b):
        flipped = sorted(({**s, "position": mirror[s["position"]]} for s in sa),
                         key=lambda d: POSITIONS.index(d["position"]))
        assert flipped == sb


def test_real_scenes_are_valid_and_noise_and_blank_are_not(model, real):
    for split in ("test", "holdout"):
        x = real[split].tensor()
        for images in (x, S.round_trip(x)):
            p = model.validity(images)
            assert p.shape == (N,) and p.dtype == torch.float32 and 0 <= p.min() and p.max() <= 1
            assert (p > 0.5).float().mean() >= 0.99, split
    for name, images in S._invalid_images(N, seed=12345).items():
        assert (model.validity(images) > 0.5).float().mean() <= 0.01, name


def test_corrupted_scenes_are_invalid(model, real):
    x = real["test"].tensor()[:100]
    for kind in ("noise", "scramble", "patches"):
        bad = S.J.corrupt(x, kind, 1.0, seed=3)
        assert (model.validity(bad) > 0.5).float().mean() <= 0.05, kind


def test_load_is_memoised_and_checks_the_checksum(loaded, tmp_path):
    assert S.load_scene_judge() is loaded
    for suffix in ("json", "safetensors"):
        (tmp_path / f"{S.NAME}.{suffix}").write_bytes((S.weights_folder() / f"{S.NAME}.{suffix}").read_bytes())
    record = json.loads((tmp_path / f"{S.NAME}.json").read_text())
    record["weights_sha256"] = "0" * 64
    (tmp_path / f"{S.NAME}.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="checksum"):
        S.load_scene_judge(folder=tmp_path)
    with pytest.raises(FileNotFoundError):
        S.load_scene_judge(folder=tmp_path / "nothing")


# -- counts, relations, faithfulness on hand-made scenes -------------------------------------------
RED_CIRCLE_LEFT = shape("red", "circle", "left")
BLUE_SQUARE_RIGHT = shape("blue", "square", "top right", "large")


def test_count_and_find():
    scene = [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT]
    assert S.count(scene) == 2 and S.count([]) == 0
    assert [s["colour"] for s in S.find(scene, kind="square")] == ["blue"]
    assert S.find(scene, colour="red", kind="square") == []
    assert len(S.find(scene)) == 2


def test_relations():
    scene = [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT]
    assert S.relation_holds(scene, ("red", "circle"), "to the left of", ("blue", "square"))
    assert S.relation_holds(scene, ("blue", "square"), "above", ("red", "circle"))
    assert S.relation_holds(scene, ("blue", None), "to the right of", (None, "circle"))
    assert not S.relation_holds(scene, ("red", "circle"), "to the right of", ("blue", "square"))
    assert not S.relation_holds(scene, ("red", "circle"), "above", ("blue", "square"))
    assert not S.relation_holds(scene, ("green", "circle"), "to the left of", ("blue", "square"))
    same_row = [shape("red", "circle", "left"), shape("red", "circle", "centre")]
    assert not S.relation_holds(same_row, ("red", "circle"), "above", ("red", "circle"))
    assert S.relation_holds(same_row, ("red", "circle"), "to the left of", ("red", "circle"))
    assert not S.relation_holds([RED_CIRCLE_LEFT], ("red", "circle"), "to the left of", ("red", "circle"))


def test_faithful_one_shape():
    scene = [RED_CIRCLE_LEFT]
    assert S.faithful(scene, {"colour": "red", "kind": "circle"})
    assert S.faithful(scene, {"colour": "red", "kind": "circle", "position": "left", "size": "small"})
    assert S.faithful(scene, {"colour": "red"}) and S.faithful(scene, {"kind": "circle"})
    assert not S.faithful(scene, {"colour": "blue", "kind": "circle"})              # wrong colour
    assert not S.faithful(scene, {"colour": "red", "kind": "circle", "position": "right"})
    assert not S.faithful(scene, {"kind": "circle", "size": "large"})
    assert not S.faithful([RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], {"colour": "red", "kind": "circle"})   # extra shape
    assert not S.faithful([], {"colour": "red"})


def test_faithful_two_shapes():
    scene = [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT]
    spec = {"shapes": [("red", "circle"), ("blue", "square")], "relation": "to the left of"}
    assert S.faithful(scene, spec) and S.faithful(scene[::-1], spec)
    assert S.faithful(scene, {"shapes": [("blue", "square"), ("red", "circle")], "relation": "above"})
    assert not S.faithful(scene, {**spec, "relation": "to the right of"})           # relation false
    assert not S.faithful(scene, {**spec, "relation": "above"})            # the red circle is below
    assert not S.faithful(scene, {**spec, "shapes": [("red", "circle"), ("green", "square")]})
    assert not S.faithful(scene + [shape("cyan", "cross", "bottom")], spec)         # extra shape
    assert not S.faithful([RED_CIRCLE_LEFT], spec)
    assert S.faithful(scene, {"shapes": [("red", None), (None, "square")], "relation": "to the left of"})


def test_two_shape_outcomes_name_each_way_to_fail():
    spec = {"shapes": [("red", "circle"), ("blue", "square")], "relation": "to the left of"}
    scene = [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT]
    out = S.two_shape_outcome
    assert out(scene, spec) == "fully right" and out(scene[::-1], spec) == "fully right"
    assert out(scene, {**spec, "relation": "above"}) == "relation wrong"
    swapped = [shape("blue", "circle", "left"), shape("red", "square", "top right")]
    assert out(swapped, spec) == "attributes swapped"
    assert out([shape("red", "square", "left"), shape("blue", "circle", "top right")], spec) == "attributes swapped"
    assert out([shape("red", "circle", "left"), shape("red", "square", "top right")], spec) == "a colour or kind wrong"
    assert out([shape("green", "circle", "left"), shape("blue", "square", "top right")], spec) == "a colour or kind wrong"
    assert out([], spec) == "no shape" and out([RED_CIRCLE_LEFT], spec) == "one shape"
    assert out(scene + [shape("cyan", "cross", "bottom")], spec) == "three or more"
    # open attributes match anything
    open_spec = {"shapes": [("red", None), (None, "square")], "relation": "to the left of"}
    assert out(scene, open_spec) == "fully right"
    assert out([shape("red", "circle", "top right"), shape("blue", "square", "left")], open_spec) == "relation wrong"
    assert set(S.TWO_SHAPE_OUTCOMES) >= {out(sc, spec) for sc in ([], [RED_CIRCLE_LEFT], scene, swapped)}
    with pytest.raises(ValueError, match="two-shape spec"):
        out(scene, {"colour": "red"})


def test_two_shape_outcomes_of_real_scenes_are_right(model, real):
    data = real["test"]
    two = [i for i, s in enumerate(data.shapes) if len(s) == 2][:40]
    specs = [{"shapes": [(data.shapes[i][0].colour, data.shapes[i][0].kind),
                         (data.shapes[i][1].colour, data.shapes[i][1].kind)],
              "relation": S.relations(*data.shapes[i])[0]} for i in two]
    shares = S.two_shape_outcomes(model, data.tensor()[two], specs)
    assert list(shares) == list(S.TWO_SHAPE_OUTCOMES)
    assert abs(sum(shares.values()) - 1) < 1e-9 and shares["fully right"] >= 0.95
    with pytest.raises(ValueError, match="one per image"):
        S.two_shape_outcomes(model, data.tensor()[two], specs[:-1])


def test_read_scene_dicts_work_as_scenes():
    scene = [{"position": "bottom", "colour": "green", "kind": "triangle", "size": "large"},
             {"position": "top", "colour": "yellow", "kind": "cross", "size": "small"}]
    assert S.relation_holds(scene, ("yellow", "cross"), "above", ("green", "triangle"))
    assert S.faithful(scene, {"shapes": [("green", "triangle"), ("yellow", "cross")], "relation": "below"})


def test_score_prompts(model, real):
    data = real["test"]
    n = 60
    specs = [{"colour": s[0].colour, "kind": s[0].kind, "position": s[0].position} if len(s) == 1 else
             {"shapes": [(s[0].colour, s[0].kind), (s[1].colour, s[1].kind)], "relation": S.relations(s[0], s[1])[0]}
             if len(s) == 2 else {"colour": s[0].colour} for s in data.shapes[:n]]
    out = S.score_prompts(model, data.tensor()[:n], specs)
    k_three = sum(len(s) == 3 for s in data.shapes[:n])           # their one-shape specs cannot be met
    assert out["valid"] >= 0.95
    assert abs(out["faithful"] - (n - k_three) / n) <= 0.03, out
    assert set(out) >= {"valid", "faithful", "one_shape", "colour", "kind", "position", "two_shapes", "pairs",
                        "relation"}
    wrong = [{"colour": "red", "kind": "circle", "position": "centre"}] * n
    bad = S.score_prompts(model, data.tensor()[:n], wrong)
    assert bad["faithful"] <= 0.1 and "shapes" not in bad and "relation" not in bad


# -- bad input -------------------------------------------------------------------------------------
def test_bad_images_give_clear_errors(model):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        model.read_scenes(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="x\\[None\\]"):
        model.read_scenes(x[0])
    with pytest.raises(ValueError, match="NaN"):
        model.validity(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\].*rescale"):
        model.read_scenes(x * 2 - 1.5)
    with pytest.raises(TypeError, match="SceneJudge"):
        S.score_prompts("judge", x, [{"colour": "red"}] * 2)
    with pytest.raises(ValueError, match="one spec per image"):
        S.score_prompts(model, x, [{"colour": "red"}])


def test_bad_scenes_and_specs_give_clear_errors():
    with pytest.raises(TypeError, match="wrap it in a list"):
        S.count(RED_CIRCLE_LEFT)
    with pytest.raises(TypeError, match="wrap it in a list"):
        S.faithful(RED_CIRCLE_LEFT, {"colour": "red"})
    with pytest.raises(TypeError, match=r"scene\[0\]"):
        S.count(["red circle"])
    with pytest.raises(ValueError, match="one cell"):
        S.count([RED_CIRCLE_LEFT, shape("blue", "cross", "left")])
    with pytest.raises(ValueError, match=r"spec\['colour'\].*pink"):
        S.faithful([RED_CIRCLE_LEFT], {"colour": "pink"})
    with pytest.raises(ValueError, match="unknown keys"):
        S.faithful([RED_CIRCLE_LEFT], {"color": "red"})
    with pytest.raises(ValueError, match="empty"):
        S.faithful([RED_CIRCLE_LEFT], {})
    with pytest.raises(ValueError, match="relation"):
        S.faithful([RED_CIRCLE_LEFT], {"shapes": [("red", "circle"), ("blue", "square")], "relation": "near"})
    with pytest.raises(ValueError, match="two"):
        S.faithful([RED_CIRCLE_LEFT], {"shapes": [("red", "circle")], "relation": "above"})
    with pytest.raises(TypeError, match="pair"):
        S.relation_holds([RED_CIRCLE_LEFT], "red circle", "above", ("blue", "square"))
    with pytest.raises(ValueError, match="relation"):
        S.relation_holds([RED_CIRCLE_LEFT], ("red", "circle"), "beside", ("blue", "square"))
    with pytest.raises(ValueError, match="colour"):
        S.find([RED_CIRCLE_LEFT], colour="pink")
    with pytest.raises(TypeError, match="dict"):
        S.faithful([RED_CIRCLE_LEFT], "a red circle")
    assert RELATIONS[0] == "to the left of"
