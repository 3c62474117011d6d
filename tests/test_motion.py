"""Text to motion (vlmlib.motion, chapter 7): instructions, reference motions, the metric, the model."""

import math

import numpy as np
import pytest
import torch

from vlmlib import motion as M
from vlmlib.diffusion import guide
from vlmlib.shapesworld import HELD_OUT, position_name

TINY = M.MotionConfig(width=16, layers=1, heads=2, T=100)


def _cells(path):
    return [position_name(float(x), float(y), 32) for x, y in path]


# -- instructions -------------------------------------------------------------------------------------
def test_instructions_are_feasible_and_the_splits_keep_the_held_out_move_pairs_apart():
    seen = set(M.split_moves("train"))
    assert set(M.split_moves("test")) == seen and set(M.split_moves("held_out")) == set(M.HELD_OUT_MOVES)
    assert not seen & set(M.HELD_OUT_MOVES) and len(seen) + len(M.HELD_OUT_MOVES) == len(M.MOVES) == 16
    assert {m for m in M.MOVES if len(m) == 1} <= seen                      # every single move is seen
    turns = [m for m in seen if len(m) == 2 and m[0] != m[1]]
    for d in M.DIRECTIONS:                     # each direction is first and second in some training turn
        assert any(m[0] == d for m in turns) and any(m[1] == d for m in turns), d
    assert all((b, a) in turns for a, b in M.HELD_OUT_MOVES)               # each held-out turn is seen reversed
    for split in M.SPLITS:
        todo = M.instructions(300, split, seed=1)
        assert todo == M.instructions(300, split, seed=1)                     # deterministic
        assert {i.moves for i in todo} <= set(M.split_moves(split))
        for i in todo:
            assert len(i.cells) == len(i.moves) + 1 and i.cells[-1] == i.end
            assert (i.colour, i.kind) not in HELD_OUT
            if len(i.moves) == 2:
                assert i.moves[1] != {"up": "down", "down": "up", "left": "right", "right": "left"}[i.moves[0]]
        M.tokenize(todo)                                                      # every word is known
    assert M.instructions(50, "train", 0) != M.instructions(50, "test", 0)
    held = M.instructions(300, "held_out")
    assert {i.moves for i in held} == set(M.HELD_OUT_MOVES)
    one = sum(len(i.moves) == 1 for i in M.instructions(600, "train"))
    assert 100 < one < 300                                                  # about a third are one move


def test_instruction_text_cells_and_bad_instructions():
    i = M.Instruction("red", "circle", "small", "top left", ("right", "down"))
    assert i.text == "the small red circle starts at the top left and moves right, then down"
    assert i.cells == ("top left", "top", "centre") and i.end == "centre"
    assert M.Instruction("red", "circle", "small", "left", "right").moves == ("right",)
    assert M.short_text(i) == "top left: right, then down"
    with pytest.raises(ValueError, match="reverse"):
        M.Instruction("red", "circle", "small", "centre", ("right", "left"))
    with pytest.raises(ValueError, match="leave the 3×3 grid"):
        M.Instruction("red", "circle", "small", "top left", ("up",))
    with pytest.raises(ValueError, match="Instruction.colour"):
        M.Instruction("pink", "circle", "small", "centre", ("up",))
    with pytest.raises(ValueError, match="1 or 2 directions"):
        M.Instruction("red", "circle", "small", "centre", ())
    with pytest.raises(ValueError, match="Instruction.moves"):
        M.Instruction("red", "circle", "small", "centre", ("north",))
    with pytest.raises(ValueError, match="split"):
        M.instructions(3, "holdout")
    with pytest.raises(TypeError, match="n must be an integer"):
        M.instructions(2.5)
    with pytest.raises(ValueError, match="does not know.*'diagonally'"):
        M.tokenize(["the red circle moves diagonally"])
    with pytest.raises(TypeError, match="wrap one in a list"):
        M.tokenize("the red circle")


# -- reference motions and the metric -----------------------------------------------------------------
def test_reference_trajectories_go_where_they_are_asked_and_pass_the_metric():
    rng = np.random.default_rng(0)
    for split in M.SPLITS:
        todo = M.instructions(200, split, seed=2)
        for k, ins in enumerate(todo):
            path = M.reference_trajectory(ins, rng if k % 2 else None)
            assert path.shape == (M.FRAMES, 2) and path.dtype == torch.float32
            cells = _cells(path)
            assert cells[0] == ins.start and cells[-1] == ins.end and set(cells) == set(ins.cells)
            assert M.motion_correct(path, ins)
    plain = M.reference_trajectory(M.Instruction("red", "circle", "small", "top left", ("right", "down")))
    third = 32 / 3
    assert torch.allclose(plain[0], torch.tensor([third / 2, third / 2]))
    assert torch.allclose(plain[-1], torch.tensor([1.5 * third, 1.5 * third]))
    corner = torch.tensor([1.5 * third, third / 2])           # reached at s = 1/2, between frames 7 and 8
    assert torch.allclose((plain[7] - corner).abs().sum(), torch.tensor(third / 15), atol=1e-4)
    assert torch.allclose((plain[8] - corner).abs().sum(), torch.tensor(third / 15), atol=1e-4)
    assert torch.allclose(plain[1] - plain[0], plain[2] - plain[1])                               # constant speed
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        M.reference_trajectory(M.instructions(1)[0], rng=3)
    with pytest.raises(TypeError, match="instruction must be an Instruction"):
        M.reference_trajectory("the red circle starts on the left and moves right")


def test_wrong_motions_fail_the_metric():
    ins = M.Instruction("red", "circle", "small", "top left", ("right", "down"))
    good = M.reference_trajectory(ins)
    other_order = M.reference_trajectory(M.Instruction("red", "circle", "small", "top left", ("down", "right")))
    detour = good.clone()
    detour[3:6] = torch.tensor([5.3, 16.0])                   # through the left cell, off the path
    nan = good.clone()
    nan[4, 1] = float("nan")
    wrong = {"backwards": good.flip(0), "shifted a row down": good + torch.tensor([0.0, 32 / 3]),
             "other order": other_order, "detour": detour, "NaN": nan, "still": good[:1].repeat(M.FRAMES, 1),
             "infinite": good + float("inf")}
    for name, path in wrong.items():
        assert not M.motion_correct(path, ins), name
    scores = M.motion_scores(torch.stack([good, other_order, detour, nan]), [ins] * 4)
    assert scores == {"start": 0.75, "end": 0.75, "order": 0.5, "steady": 0.25, "all": 0.25, "n": 4}
    beyond = M.reference_trajectory(M.Instruction("red", "circle", "small", "centre", ("right",)))
    beyond[-1, 0] = 40.0                                      # past the image's edge: clipped into the right cell
    assert M.motion_correct(beyond, M.Instruction("red", "circle", "small", "centre", ("right",)))
    assert M.motion_correct(good.numpy(), ins) and M.motion_correct(good.tolist(), ins)


def test_the_metric_refuses_bad_input_clearly():
    ins = M.instructions(2)
    paths = torch.stack([M.reference_trajectory(i) for i in ins])
    with pytest.raises(ValueError, match=r"trajectory must have shape \(F, 2\)"):
        M.motion_correct(paths, ins[0])
    with pytest.raises(TypeError, match="instruction must be an Instruction"):
        M.motion_correct(paths[0], ins[0].text)
    with pytest.raises(ValueError, match="2 instructions"):
        M.motion_scores(paths, ins[:1])
    with pytest.raises(TypeError, match="wrap it in a list"):
        M.motion_scores(paths[:1], ins[0])
    with pytest.raises(ValueError, match=r"\(N, F, 2\)"):
        M.motion_scores(paths[0], ins)
    with pytest.raises(TypeError, match="real numbers"):
        M.motion_correct(torch.ones(16, 2, dtype=torch.bool), ins[0])


# -- the model ------------------------------------------------------------------------------------------
def test_config_and_recipe_are_checked():
    with pytest.raises(ValueError, match="divisible by heads"):
        M.MotionConfig(width=30, heads=4)
    with pytest.raises(TypeError, match="MotionConfig.layers"):
        M.MotionConfig(layers=2.5)
    with pytest.raises(ValueError, match="MotionConfig.schedule"):
        M.MotionConfig(schedule="quadratic")
    with pytest.raises(ValueError, match="MotionRecipe.cond_dropout"):
        M.MotionRecipe(cond_dropout=1.5)
    with pytest.raises(ValueError, match="MotionRecipe.steps"):
        M.MotionRecipe(steps=0)


def test_the_denoiser_predicts_a_clean_trajectory_of_the_input_shape():
    torch.manual_seed(0)
    model = M.MotionDenoiser(TINY).eval()                      # no dropout: the same input, the same output
    words = M.tokenize(M.instructions(3) + [""])
    x = torch.randn(4, M.FRAMES, 2)
    out = model(x, torch.tensor([0, 5, 50, 99]), words)
    assert out.shape == (4, M.FRAMES, 2) and torch.isfinite(out).all()
    # padding words are masked: a shorter id tensor (no padding) gives the same prediction
    short = words[:1, :int((words[0] > 0).sum())]
    assert torch.allclose(model(x[:1], torch.tensor([5]), short), model(x[:1], torch.tensor([5]), words[:1]), atol=1e-5)
    with pytest.raises(ValueError, match=r"x_t must be a float tensor \(B, 16, 2\)"):
        model(torch.randn(4, 8, 2), torch.zeros(4, dtype=torch.long), words)
    with pytest.raises(ValueError, match="t must be an integer tensor"):
        model(x, torch.zeros(4), words)
    with pytest.raises(ValueError, match="words must be an integer tensor"):
        model(x, torch.zeros(4, dtype=torch.long), words[:2])
    with pytest.raises(TypeError, match="config must be a MotionConfig"):
        M.MotionDenoiser({"width": 16})


def test_guidance_combines_the_two_predictions_as_the_formula_says():
    torch.manual_seed(0)
    model = M.MotionDenoiser(TINY).eval()
    todo = M.instructions(3, seed=4)
    words, empty = M.tokenize(todo), torch.zeros(3, M.MAX_WORDS, dtype=torch.long)
    x = torch.randn((3, M.FRAMES, 2), generator=torch.Generator().manual_seed(7))
    t = torch.full((3,), TINY.T - 1)
    with torch.no_grad():
        cond, uncond = model(x, t, words), model(x, t, empty)
    for w in (0.0, 1.0, 2.5):
        # one DDIM step from t = T−1 to t = −1 returns the (clamped) guided x̂₀ itself
        sampled = M.sample_motion(model, todo, guidance=w, steps=1, seed=7)
        expected = M.to_pixels((uncond + w * (cond - uncond)).clamp(-1, 1))
        assert torch.allclose(sampled, expected, atol=1e-4), w
        assert torch.allclose(guide(uncond, cond, w), uncond + w * (cond - uncond))
    with pytest.raises(ValueError, match="guidance"):
        M.sample_motion(model, todo, guidance=-1)
    with pytest.raises(TypeError, match="wrap one in a list"):
        M.sample_motion(model, todo[0])
    with pytest.raises(TypeError, match="model must be a MotionDenoiser"):
        M.sample_motion(None, todo)


def test_sampling_is_deterministic_for_a_seed():
    torch.manual_seed(0)
    model = M.MotionDenoiser(TINY)
    todo = M.instructions(4, seed=5) + ["", "the red circle starts on the left and moves right"]
    a = M.sample_motion(model, todo, steps=5, seed=3)
    b, path = M.sample_motion(model, todo, steps=5, seed=3, return_path=True)
    assert a.shape == (6, M.FRAMES, 2) and torch.equal(a, b) and path.shape == (5, 6, M.FRAMES, 2)
    assert not torch.equal(a, M.sample_motion(model, todo, steps=5, seed=4))


def test_a_short_training_run_lowers_the_loss(capsys):
    recipe = M.MotionRecipe(steps=80, batch_size=32, n_train=256, lr=3e-3)
    model, history, seconds = M.train_motion(TINY, recipe, progress=False)
    assert capsys.readouterr() == ("", "")                     # progress=False: no bar
    loss = history["loss"]
    assert len(loss) == 80 and seconds > 0 and not model.training
    assert np.mean(loss[-10:]) < 0.7 * np.mean(loss[:10])
    with pytest.raises(TypeError, match="recipe must be a MotionRecipe"):
        M.train_motion(TINY, {"steps": 3})


def test_the_cache_round_trip(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(M, "evaluate_motion", lambda model: {
        split: M.motion_scores(M.sample_motion(model, todo, steps=2), todo)
        for split, todo in (("test", M.instructions(4, "test")), ("held_out", M.instructions(4, "held_out")))})
    recipe = M.MotionRecipe(steps=5, batch_size=8, n_train=32)
    model, art = M.build_motion(TINY, recipe, verbose=False)
    assert not art.from_cache and len(art.history["loss"]) == 5
    assert {"train_seconds", "test_all", "held_out_all", "held_out_n"} <= set(art.metrics)
    again, art2 = M.build_motion(TINY, recipe)
    assert art2.from_cache and "Loaded motion from the cache" in capsys.readouterr().out
    assert art2.metrics == art.metrics
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(TypeError, match="config must be a MotionConfig"):
        M.build_motion(recipe, recipe)


# -- pictures -----------------------------------------------------------------------------------------
def test_frames_show_the_shape_moving_over_a_still_background():
    ins = M.Instruction("red", "square", "large", "left", ("right",))
    path = M.reference_trajectory(ins)
    frames = M.render_frames(ins, path, seed=1)
    assert frames.shape == (M.FRAMES, 3, 32, 32) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    red = frames[:, 0] - frames[:, 1:].mean(1)                       # (F, 32, 32): how red each pixel is
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    for f in (0, 8, 15):
        mask = red[f] > 0.4
        centre = torch.stack([xs[mask].mean(), ys[mask].mean()])
        assert torch.allclose(centre, path[f], atol=1.0), (f, centre, path[f])
    assert torch.equal(frames[0, :, :2], frames[15, :, :2])           # rows far from the shape do not change
    assert torch.equal(frames, M.render_frames(ins, path, seed=1))
    shape = ins.shape()
    assert shape.colour == "red" and shape.position == "left"
    assert M.render_frames(shape, path).shape == frames.shape
    bad = path.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        M.render_frames(ins, bad)
    with pytest.raises(TypeError, match="Instruction or a ShapesWorld Shape"):
        M.render_frames("red square", path)


def test_animations_and_plots_of_motions():
    import matplotlib.pyplot as plt

    from vlmlib.plotting import video_animation

    todo = M.instructions(3, seed=6)
    paths = torch.stack([M.reference_trajectory(i) for i in todo])
    videos = torch.stack([M.render_frames(i, p) for i, p in zip(todo, paths)])
    html = video_animation(videos, [i.text for i in todo], paths=paths, ncols=3).data
    assert html.count("data:image/png;base64") >= M.FRAMES and "https://" not in html
    assert video_animation(videos[0]).data
    with pytest.raises(ValueError, match="videos must have shape"):
        video_animation(videos[0, 0])
    with pytest.raises(ValueError, match="paths must have shape"):
        video_animation(videos, paths=paths[:2])
    with pytest.raises(ValueError, match="3 items"):
        video_animation(videos, ["one caption"])
    fig = M.plot_trajectories(paths.flip(1), todo)
    assert len([ax for ax in fig.axes if ax.lines]) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="3 instructions"):
        M.plot_trajectories(paths, todo[:2])
    assert math.isclose(M.cell_centre("bottom right")[0], 32 * 5 / 6)
