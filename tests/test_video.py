"""vlmlib.video: moving drawn content along a path, tracking it, and reading every frame."""

from types import SimpleNamespace

import pytest
import torch

from vlmlib import video as V
from vlmlib.shapesworld import POSITION_PHRASES, ShapesWorld


@pytest.fixture(scope="module")
def scenes():
    """Eight one-shape scenes, drawn in the centre cell so that a one-cell move stays in the image."""
    data = ShapesWorld(noise=0.0).sample(200, "test", seed=3)
    keep = [i for i, sc in enumerate(data.shapes) if sc[0].position == "centre"][:8]
    assert len(keep) == 8
    return data.tensor()[keep], [data.shapes[i][0] for i in keep]


def _line(start, dx, dy, frames=16):
    t = torch.linspace(0, 1, frames)[:, None]
    return torch.tensor(start, dtype=torch.float32)[None] + t * torch.tensor([dx, dy], dtype=torch.float32)[None]


def test_content_prompt_is_a_chapter_6_caption():
    inst = SimpleNamespace(colour="red", kind="circle", size="small", start="top left", moves=("right",))
    assert V.content_prompt(inst) == "a small red circle " + POSITION_PHRASES["top left"]
    with pytest.raises(TypeError, match="Instruction"):
        V.content_prompt("a red circle")


def test_centres_find_the_drawn_shape(scenes):
    images, shapes = scenes
    c = V.centres(images)
    truth = torch.tensor([[s.x, s.y] for s in shapes])
    assert (c - truth).abs().max() < 1.0              # symmetric shapes: the centroid is the centre (a triangle is off)
    blank = torch.full((2, 3, 32, 32), 0.1)
    assert torch.isnan(V.centres(blank)).all()


def test_move_content_moves_the_shape_along_the_path(scenes):
    images, _ = scenes
    paths = torch.stack([_line((16.0, 16.0), 10.0 * (-1) ** i, 3.0 * i % 7) for i in range(len(images))])
    videos = V.move_content(images, paths)
    assert videos.shape == (8, 16, 3, 32, 32)
    assert videos.min() >= 0 and videos.max() <= 1
    assert (V.track(videos) - paths).abs().max() < 0.6     # the shape is where the path says, in every frame
    assert V.consistency(videos).min() > 0.9               # the same object in every frame
    # a path that starts where the shape was drawn: frame 0 is the image itself (background flattened)
    here = V.centres(images)[:, None] + (paths - paths[:, :1])
    assert (V.move_content(images, here)[:, 0] - images).abs().amax((1, 2, 3)).max() < 0.07


def test_frames_of_a_moved_shape_read_as_the_shape(scenes):
    images, shapes = scenes
    paths = torch.stack([_line((16.0, 16.0), 10.0, 0.0)] * len(images))   # one cell to the right
    read = V.read_frames(V.move_content(images, paths))
    from vlmlib.shapesworld import COLOUR_NAMES, KINDS
    colour = torch.tensor([COLOUR_NAMES.index(s.colour) for s in shapes])[:, None]
    kind = torch.tensor([KINDS.index(s.kind) for s in shapes])[:, None]
    assert (read["shapes"] == 1).all()
    assert (read["colour"] == colour).float().mean() == 1.0
    assert (read["kind"] == kind).float().mean() >= 0.95    # caught between two cells, re-centred
    assert (read["valid"] > 0.5).float().mean() >= 0.95


def test_steadiness_tells_a_jumping_shape_from_a_gliding_one(scenes):
    images, _ = scenes
    glide = V.move_content(images, torch.stack([_line((16.0, 16.0), 10.0, 0.0)] * len(images)))
    steps = torch.zeros(16, 2)
    steps[8:, 0] = 10.0                                        # stays, then jumps a cell at once
    jump = V.move_content(images, (steps + 16.0)[None].expand(len(images), 16, 2))
    g, j = V.steadiness(glide), V.steadiness(jump)
    assert g["largest_step"] < 1.5 and j["largest_step"] > 8.0
    assert g["background_flicker"] < 1e-3


def test_consistency_falls_when_the_object_changes(scenes):
    images, _ = scenes
    still = images[:, None].expand(-1, 16, -1, -1, -1).clone()
    changed = still.clone()
    changed[:, 8:] = images.roll(1, 0)[:, None]             # another scene's shape from frame 8 on
    assert V.consistency(still).min() > 0.99
    assert V.consistency(changed).mean() < V.consistency(still).mean() - 0.1


def test_frame_by_frame_asks_for_the_cell_of_each_frame():
    asked = []

    def pipe(prompts, **kwargs):
        asked.extend(prompts)
        return torch.rand(len(prompts), 3, 32, 32)

    inst = SimpleNamespace(colour="red", kind="circle", size="small", start="left", moves=("right",))
    path = _line((5.0, 16.0), 11.0, 0.0)
    videos = V.frame_by_frame(pipe, [inst], path[None])
    assert videos.shape == (1, 16, 3, 32, 32)
    assert asked[0].endswith(POSITION_PHRASES["left"]) and asked[-1].endswith(POSITION_PHRASES["centre"])


def test_bad_input_gets_a_clear_error(scenes):
    images, _ = scenes
    with pytest.raises(ValueError, match="trajectories"):
        V.move_content(images, torch.zeros(8, 16, 3))
    with pytest.raises(ValueError, match="trajectories"):
        V.move_content(images, torch.zeros(7, 16, 2))
    with pytest.raises(ValueError, match="NaN"):
        V.move_content(images, torch.full((8, 16, 2), float("nan")))
    with pytest.raises(ValueError, match="videos"):
        V.track(images)
    with pytest.raises(ValueError, match="threshold"):
        V.foreground(images, threshold=0)
    with pytest.raises(ValueError, match="video"):
        V.as_strip(images[0])
    assert V.as_strip(torch.rand(16, 3, 32, 32), every=4).shape == (32, 128, 3)


def test_a_new_temporal_layer_changes_nothing_and_mixes_only_across_time():
    torch.manual_seed(0)
    layer = V.TemporalAttention(8, heads=2)
    x = torch.randn(2, 5, 8, 4, 4)
    assert torch.equal(layer(x), x)                       # zero-initialised output: the image model, frame by frame
    torch.nn.init.normal_(layer.out.weight)
    y = layer(x)
    x2 = x.clone()
    x2[0, 0, :, 1, 2] += torch.randn(8)                   # change one pixel of frame 0 of video 0
    d = (layer(x2) - y).abs().sum(2)                      # (B, F, H, W)
    assert d[0, 1:, 1, 2].min() > 1e-3                    # the other frames at that pixel see it
    d[0, :, 1, 2] = 0
    assert d.max() < 1e-6                                 # no other pixel, no other video
    with pytest.raises(ValueError, match="divide"):
        V.TemporalAttention(10, heads=3)
    with pytest.raises(ValueError, match="frames"):
        layer(torch.randn(1, 70, 8, 2, 2))
