import numpy as np
import pytest
import torch

from vlmlib.shapesworld import (COLOUR_NAMES, COLOURS, HELD_OUT, KINDS, POSITIONS, ShapesWorld, caption,
                                position_name, questions, varied_caption, vocabulary)


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(seed=0)


def test_same_arguments_same_images_and_splits_differ(world):
    a, b = world.sample(50, "train", seed=4), world.sample(50, "train", seed=4)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, world.sample(50, "train", seed=5).images)
    assert not np.array_equal(a.images, world.sample(50, "test", seed=4).images)
    assert not np.array_equal(a.images, ShapesWorld(seed=1).sample(50, "train", seed=4).images)


def test_images_and_labels_have_the_documented_form(world):
    d = world.sample(40, "train")
    assert d.images.shape == (40, 32, 32, 3) and d.images.dtype == np.float32
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert d.tensor().shape == (40, 3, 32, 32)
    assert set(d.labels) == {"colour", "kind", "size", "position", "count"}
    for i, shapes in enumerate(d.shapes):
        s = shapes[0]
        assert COLOUR_NAMES[d.labels["colour"][i]] == s.colour and KINDS[d.labels["kind"][i]] == s.kind
        assert POSITIONS[d.labels["position"][i]] == s.position
        assert d.captions[i] == caption(shapes)


@pytest.mark.parametrize("max_shapes", [1, 3])
def test_training_split_never_shows_a_held_out_pair(max_shapes):
    w = ShapesWorld(max_shapes=max_shapes, seed=2)
    train = w.sample(3000, "train", captions=None)
    pairs = {(s.colour, s.kind) for shapes in train.shapes for s in shapes}
    assert pairs.isdisjoint(HELD_OUT) and len(pairs) == len(COLOUR_NAMES) * len(KINDS) - len(HELD_OUT)
    held = w.sample(500, "holdout", captions=None)
    assert {(s.colour, s.kind) for shapes in held.shapes for s in shapes} == set(HELD_OUT)


def test_multi_shape_scenes_use_distinct_cells_and_count_labels():
    d = ShapesWorld(max_shapes=4, seed=0).sample(300, "all")
    counts = [len(s) for s in d.shapes]
    assert set(counts) == {1, 2, 3, 4} and list(d.labels["count"]) == counts
    assert all(len({s.position for s in shapes}) == len(shapes) for shapes in d.shapes)


def test_geometry_agrees_with_the_position_labels_and_colours(world):
    d = world.sample(500, "all", captions=None)
    for img, shapes in zip(d.images, d.shapes):
        s = shapes[0]
        assert position_name(s.x, s.y, 32) == s.position
        # The pixel under the shape's centre has the shape's colour (up to tint and noise).
        pixel = img[int(s.y), int(s.x)]
        if s.kind != "triangle":        # a triangle's centroid sits off the box centre
            assert np.abs(pixel - np.array(COLOURS[s.colour])).max() < 0.25


def test_kinds_cover_different_areas():
    w = ShapesWorld(noise=0.0, seed=0)
    d = w.sample(400, "all", captions=None)
    bg = d.images[:, 0, 0]                              # a corner is always background
    cover = (np.abs(d.images - bg[:, None, None]).max(-1) > 0.2).mean((1, 2))
    means = {k: cover[(d.labels["kind"] == i) & (d.labels["size"] == 1)].mean() for i, k in enumerate(KINDS)}
    # Areas: circle πr² > square (1.72r)² > cross 2(2r·0.72r) − (0.72r)² > triangle 3√3(0.62r)².
    assert means["circle"] > means["square"] > means["cross"] > means["triangle"]


def test_captions_and_questions_use_only_the_vocabulary():
    w = ShapesWorld(max_shapes=3, seed=0)
    d = w.sample(200, "all")
    rng = np.random.default_rng(0)
    words = set(vocabulary())
    for shapes in d.shapes:
        texts = [caption(shapes), caption(shapes, "short"), varied_caption(shapes, rng)]
        texts += [q + " " + a for q, a in questions(shapes, rng)]
        for t in texts:
            assert set(t.replace("?", " ?").split()) <= words, t


def test_questions_are_answered_by_the_ground_truth():
    d = ShapesWorld(max_shapes=2, seed=0).sample(100, "all")
    for shapes in d.shapes:
        qa = dict(questions(shapes, np.random.default_rng(1)))
        assert qa["how many shapes are there?"] == ["zero", "one", "two"][len(shapes)]
        pairs = [(s.colour, s.kind) for s in shapes]
        for s in shapes:
            if pairs.count((s.colour, s.kind)) == 1:
                assert qa[f"where is the {s.colour} {s.kind}?"] == s.position
                assert qa[f"what size is the {s.colour} {s.kind}?"] == s.size
            else:
                assert f"where is the {s.colour} {s.kind}?" not in qa   # ambiguous, so not asked
        assert sorted(a for q, a in qa.items() if q.startswith("is there")) == ["no", "yes"]


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 8}, "image_size must be an integer of at least 16"),
    ({"max_shapes": 0}, "max_shapes must be an integer from 1 to 4"),
    ({"noise": -1}, "noise must be a number"),
    ({"held_out": [("pink", "circle")]}, "unknown colour 'pink'"),
    ({"held_out": [("red", "star")]}, "unknown kind 'star'"),
    ({"held_out": [(c, k) for c in COLOUR_NAMES for k in KINDS]}, "leaves no colour–kind combination"),
])
def test_bad_world_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesWorld(**kwargs)


def test_bad_sample_arguments_are_clear_errors(world):
    with pytest.raises(ValueError, match="unknown split 'val'"):
        world.sample(3, "val")
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        world.sample(-1)
    with pytest.raises(ValueError, match="captions must be"):
        world.sample(2, captions="long")
    with pytest.raises(ValueError, match=r"\(x, y\) must lie inside the image"):
        position_name(32, 0, 32)


def test_other_image_sizes_render():
    d = ShapesWorld(image_size=64, seed=0).sample(5)
    assert d.images.shape == (5, 64, 64, 3) and d.tensor(torch.device("cpu")).dtype == torch.float32


def test_draw_places_shapes_where_asked_and_checks_input():
    from vlmlib.shapesworld import draw, place
    s = place("red", "square", "large", 5.5, 26.5)
    assert s.position == "bottom left" and abs(s.radius - 0.16 * 32) < 1e-6
    img = draw([s], seed=3, noise=0.0)
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    red = torch.tensor([0.90, 0.16, 0.14])
    assert (img[:, 26, 5] - red).abs().max() < 0.07          # the shape's centre is red (tint ±0.06)
    assert (img[:, 5, 26] - red).abs().max() > 0.3             # the opposite corner is background
    assert torch.equal(draw([s], seed=3), draw([s], seed=3))   # deterministic
    assert draw([], noise=0.0).std(dim=(1, 2)).max() < 1e-6     # background alone is flat
    with pytest.raises(TypeError, match="list of Shape"):
        draw(s)
    with pytest.raises(ValueError, match="size"):
        place("red", "square", "huge", 5, 5)
