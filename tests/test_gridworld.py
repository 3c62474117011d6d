import re

import numpy as np
import pytest
import torch

from vlmlib import gridworld as gw
from vlmlib.shapesworld import COLOURS, COLOUR_NAMES, HELD_OUT, KINDS, RELATIONS, Shape, draw


def scene(agent, *shapes):
    """A state from (colour, kind, (row, col)) triples."""
    return gw.State(agent, tuple(gw.GridShape(c, k, "large", cell) for c, k, cell in shapes))


def cells(state):
    return [s.cell for s in state.shapes]


@pytest.fixture(scope="module")
def all_tasks():
    return {(split, fam): gw.tasks(200, split, seed=3, families=[fam]) for split in gw.SPLITS for fam in gw.FAMILIES}


# -- dynamics -----------------------------------------------------------------------------------------
def test_moves_push_and_blocks():
    s = scene((2, 1), ("red", "circle", (2, 2)), ("blue", "square", (0, 0)))
    s1 = gw.step(s, "right")                        # push the circle one cell on
    assert s1.agent == (2, 2) and cells(s1) == [(2, 3), (0, 0)]
    s2 = gw.step(gw.step(s1, "right"), "right")     # once more, then the circle is against the wall
    assert s2.agent == (2, 3) and cells(s2) == [(2, 4), (0, 0)]
    assert gw.step(s2, "right") == s2               # blocked: the circle cannot leave the grid
    assert gw.step(s, "up").agent == (1, 1) and gw.step(s, 3) == s1     # plain move; actions by index
    assert gw.step(s, "stop") == s and gw.ACTIONS == gw.MOVES + ("stop",)
    corner = scene((0, 0), ("red", "circle", (4, 4)))
    assert gw.step(corner, "up") == corner and gw.step(corner, "left") == corner   # walls


def test_a_shape_cannot_be_pushed_into_another_and_the_agent_never_passes_through():
    s = scene((2, 0), ("red", "circle", (2, 1)), ("blue", "square", (2, 2)))
    assert gw.step(s, "right") == s
    rng = np.random.default_rng(0)
    for task in gw.tasks(30, "train", seed=1):
        state = task.start
        for _ in range(40):
            a = gw.ACTIONS[int(rng.integers(4))]
            nxt = gw.step(state, a)
            dr, dc = gw._MOVES[a]
            moved = [(b.cell, n.cell) for b, n in zip(state.shapes, nxt.shapes) if b.cell != n.cell]
            if nxt.agent == state.agent:
                assert not moved
            else:
                assert nxt.agent == (state.agent[0] + dr, state.agent[1] + dc)
                assert len(moved) <= 1 and all(new == (old[0] + dr, old[1] + dc) and old == nxt.agent
                                               for old, new in moved)
            assert nxt.agent not in cells(nxt) and len(set(cells(nxt))) == len(nxt.shapes)
            state = nxt


def test_success_for_each_family():
    start = scene((4, 4), ("red", "circle", (2, 2)), ("blue", "square", (2, 4)))
    goto = gw.Task("go to the red circle", "goto", start, 0, "go to the {shape}", "train", 0)
    assert not gw.success(start, goto)
    assert gw.success(scene((1, 2), ("red", "circle", (2, 2)), ("blue", "square", (2, 4))), goto)
    assert not gw.success(scene((1, 1), ("red", "circle", (2, 2)), ("blue", "square", (2, 4))), goto)  # diagonal
    push = gw.Task("push the red circle to the left", "push", start, 0, "push the {shape} {direction}", "train", 0,
                   direction="left")
    assert push.goal_cell == (2, 1)
    assert gw.success(scene((2, 2), ("red", "circle", (2, 1)), ("blue", "square", (2, 4))), push)
    assert not gw.success(scene((2, 1), ("red", "circle", (2, 0)), ("blue", "square", (2, 4))), push)  # two cells
    assert not gw.success(scene((3, 1), ("red", "circle", (1, 1)), ("blue", "square", (2, 4))), push)  # and up


# -- the expert ---------------------------------------------------------------------------------------
def shortest_by_brute_force(task, limit, start=None):
    """The length of the shortest action sequence that succeeds, trying every sequence up to ``limit``."""
    layer = {task.start if start is None else start}
    for length in range(limit + 1):
        if any(gw.success(s, task) for s in layer):
            return length
        layer = {gw.step(s, a) for s in layer for a in gw.ACTIONS}
    return None


def test_expert_plans_are_shortest_against_brute_force():
    checked = 0
    for task in gw.tasks(90, "train", seed=5):
        plan = gw.expert_plan(task.start, task)
        moves = len(plan) - 1
        assert plan[-1] == "stop" and "stop" not in plan[:-1]
        if moves <= 6:
            assert shortest_by_brute_force(task, moves) == moves, task.instruction
            checked += 1
    assert checked >= 60
    rng, checked = np.random.default_rng(3), 0      # and from states off the expert's path
    for task in gw.tasks(60, "test", seed=5):
        s = task.start
        for _ in range(8):
            s = gw.step(s, gw.MOVES[int(rng.integers(4))])
        plan = gw.expert_plan(s, task)
        if plan is not None and len(plan) - 1 <= 6:
            assert shortest_by_brute_force(task, len(plan) - 1, start=s) == len(plan) - 1
            checked += 1
        elif plan is None:
            assert shortest_by_brute_force(task, 6, start=s) is None
    assert checked >= 30


def test_expert_plans_succeed_for_every_family_and_split(all_tasks):
    for (split, fam), ts in all_tasks.items():
        assert len(ts) == 200 and {t.family for t in ts} == {fam} and {t.split for t in ts} == {split}
        for t in ts:
            plan = gw.expert_plan(t.start, t)
            assert 1 <= len(plan) - 1 <= gw.MAX_PLAN and plan[-1] == "stop"
            s = t.start
            for a in plan[:-1]:
                assert not gw.success(s, t)
                s = gw.step(s, a)
            assert gw.success(s, t), (split, fam, t.instruction)


def test_expert_action_from_any_state_starts_a_shortest_plan():
    rng = np.random.default_rng(1)
    for task in gw.tasks(60, "test", seed=2):
        s = task.start
        for a in gw.expert_plan(s, task)[:-1]:      # on the path: the same actions, one by one
            assert gw.expert_action(s, task) == a
            s = gw.step(s, a)
        assert gw.expert_action(s, task) == "stop" and gw.expert_plan(s, task) == ["stop"]
        s = task.start                              # off the path, after random moves
        for _ in range(6):
            s = gw.step(s, gw.ACTIONS[int(rng.integers(4))])
        plan = gw.expert_plan(s, task)
        if plan is not None and len(plan) > 1:
            assert gw.expert_plan(gw.step(s, plan[0]), task) == plan[1:]


def test_expert_says_none_when_the_task_cannot_be_done():
    start = scene((2, 2), ("red", "circle", (2, 3)))
    push = gw.Task("push the red circle up", "push", start, 0, "push the {shape} {direction}", "train", 0,
                   direction="up")
    stuck = scene((3, 1), ("red", "circle", (4, 0)))      # in the corner: it can never go back up
    assert gw.expert_plan(stuck, push) is None and gw.expert_action(stuck, push) is None
    assert gw.expert_plan(start, push) == ["down", "right", "up", "stop"]


# -- instructions and splits --------------------------------------------------------------------------
def named(t):
    return t.start.shapes[t.anchor if t.family == "refer" else t.target]


def training_sentences():
    out = set()
    for fam, pools in gw.TEMPLATES.items():
        for template in pools["train"]:
            for c in COLOUR_NAMES:
                for k in KINDS:
                    shape = gw.GridShape(c, k, "small", (0, 0))
                    for d in gw.ACTIONS:
                        for r in RELATIONS:
                            out.add(gw.instruction_text(template, shape, d, r))
    return out


def test_splits_keep_their_promises(all_tasks):
    train_words = {w for t in training_sentences() for w in t.split()}
    seen_sentences = training_sentences()
    for (split, fam), ts in all_tasks.items():
        for t in ts:
            pairs = [(s.colour, s.kind) for s in t.start.shapes]
            assert len(set(pairs)) == len(pairs) and 2 <= len(pairs) <= 4
            held = [p for p in pairs if p in HELD_OUT]
            if split == "holdout_pairs":
                assert held == [(named(t).colour, named(t).kind)]
            else:
                assert not held, (split, t.instruction)
            if split == "holdout_templates":
                assert t.template in gw.TEMPLATES[fam]["held_out"] and t.instruction not in seen_sentences
                assert set(t.instruction.split()) <= train_words
            else:
                assert t.template in gw.TEMPLATES[fam]["train"] and t.instruction in seen_sentences
            assert named(t).name in t.instruction
    for fam in gw.FAMILIES:                        # every held-out pair and template is asked for
        assert {(named(t).colour, named(t).kind) for t in all_tasks["holdout_pairs", fam]} == set(HELD_OUT)
        assert {t.template for t in all_tasks["holdout_templates", fam]} == set(gw.TEMPLATES[fam]["held_out"])
        assert not set(gw.TEMPLATES[fam]["held_out"]) & set(gw.TEMPLATES[fam]["train"])


def test_referring_expressions_are_unambiguous(all_tasks):
    for split in gw.SPLITS:
        for t in all_tasks[split, "refer"]:
            assert t.relation in t.instruction and t.anchor != t.target
            anchor = t.start.shapes[t.anchor].cell
            fits = [j for j, s in enumerate(t.start.shapes) if j != t.anchor
                    and gw._relation_holds(t.relation, s.cell, anchor)]
            assert fits == [t.target]
            state = t.start                     # and the words keep fitting along the expert's path
            for a in gw.expert_plan(t.start, t):
                state = gw.step(state, a)
                assert gw._referent(state, t.anchor, t.relation) == t.target


def test_push_instructions_name_their_direction(all_tasks):
    for t in all_tasks["train", "push"]:
        assert t.instruction.endswith(gw.DIRECTION_PHRASES[t.direction])


def test_task_from_text_reads_every_instruction_back(all_tasks):
    for ts in all_tasks.values():
        for t in ts[:40]:
            back = gw.task_from_text(t.start, t.instruction.upper() + ".", seed=t.seed)
            assert back == gw.Task(t.instruction, t.family, t.start, t.target, t.template, "custom", t.seed,
                                   t.direction, t.anchor, t.relation)
    s = scene((0, 0), ("red", "circle", (2, 2)), ("blue", "square", (2, 4)), ("green", "cross", (4, 0)))
    assert gw.task_from_text(s, "walk next to the blue square").target == 1
    with pytest.raises(ValueError, match="not in the scene"):
        gw.task_from_text(s, "go to the yellow circle")
    with pytest.raises(ValueError, match="no single shape is to the left of the blue square"):
        gw.task_from_text(s, "go to the shape to the left of the blue square")     # two are
    with pytest.raises(ValueError, match="follows none of the templates"):
        gw.task_from_text(s, "dance with the red circle")
    with pytest.raises(TypeError, match="instruction must be a string"):
        gw.task_from_text(s, ["go to the red circle"])


def test_skills_name_every_shape_and_the_expert_says_which_can_be_done():
    s = scene((0, 0), ("red", "circle", (2, 2)), ("blue", "square", (2, 4)))
    sk = gw.skills(s)
    assert len(sk) == 2 * 5 and "go to the red circle" in sk and "push the blue square up" in sk
    doable = {k: gw.expert_plan(s, gw.task_from_text(s, k)) is not None for k in sk}
    assert doable["push the red circle to the left"] and not doable["push the blue square to the right"]


def test_vocabulary_covers_every_instruction(all_tasks):
    vocab = gw.vocabulary()
    assert len(vocab) == len(set(vocab)) and vocab == gw.vocabulary()
    assert {w for ts in all_tasks.values() for t in ts for w in t.instruction.split()} <= set(vocab)


def test_same_arguments_same_tasks_and_images():
    a, b = gw.tasks(20, "train", seed=4), gw.tasks(20, "train", seed=4)
    assert a == b and a != gw.tasks(20, "train", seed=5) and a != gw.tasks(20, "test", seed=4)
    assert torch.equal(gw.render(a[0].start, seed=7), gw.render(a[0].start, seed=7))
    assert not torch.equal(gw.render(a[0].start, seed=7), gw.render(a[0].start, seed=8))
    d1, d2 = gw.demonstrations(5, "train", seed=1), gw.demonstrations(5, "train", seed=1)
    assert torch.equal(d1.images, d2.images) and d1.instructions == d2.instructions
    assert torch.equal(d1.actions, d2.actions)


# -- rendering ----------------------------------------------------------------------------------------
def test_render_is_shapesworld_draw_plus_the_agent():
    for t in gw.tasks(12, "train", seed=6):
        img = gw.render(t.start, seed=t.seed)
        assert img.shape == (3, 50, 50) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        ref = draw(gw._pixel_shapes(t.start), image_size=50, seed=t.seed)
        outside = torch.ones(50, 50, dtype=torch.bool)
        r, c = t.start.agent
        outside[r * 10:(r + 1) * 10, c * 10:(c + 1) * 10] = False
        assert torch.allclose(img[:, outside], ref[:, outside], atol=1e-6)


def test_the_agent_is_the_only_white_thing():
    # No ShapesWorld colour, even tinted by ±0.06, has all three channels above 0.5.
    assert max(min(rgb) for rgb in COLOURS.values()) + 0.06 < 0.5
    for t in gw.tasks(60, "holdout_pairs", seed=0):
        img = gw.render(t.start, seed=t.seed)
        white = (img.min(0).values > 0.75).nonzero()
        assert len(white) >= 10
        assert {(int(y) // 10, int(x) // 10) for y, x in white} == {t.start.agent}


def test_shapes_stay_inside_their_cells():
    # Drawn by ShapesWorld in the middle of a 3×3-cell image, a shape covers nothing outside its cell
    # (render pastes one cell, so this is what makes it equal to draw).
    outside = torch.ones(30, 30, dtype=torch.bool)
    outside[10:20, 10:20] = False
    for kind in KINDS:
        for size in ("small", "large"):
            shape = Shape("red", kind, size, "centre", 15.0, 15.0, gw._RADIUS[size])
            img = draw([shape], image_size=30, noise=0.0)
            background = img[:, 0, 0]
            assert (img[:, outside] == background[:, None]).all(), (kind, size)
            assert ((img - background[:, None, None]).abs().amax(0) > 0.3).sum() > 15


# -- episodes and demonstrations ----------------------------------------------------------------------
def test_run_episode_with_the_expert_and_frames():
    t = gw.tasks(1, "test", seed=8, families=["push"])[0]
    plan = gw.expert_plan(t.start, t)
    ep = gw.run_episode(gw.expert_policy(t), t, record=True)
    assert ep.success and ep.steps == len(plan) and ep.actions == plan and len(ep.states) == len(plan) + 1
    film = gw.frames(ep)
    assert film.shape == (len(plan) + 1, 3, 50, 50)
    assert torch.equal(film, gw.frames(gw.run_episode(gw.expert_policy(t), t)))     # rendered from the states


def test_success_needs_a_stop_in_the_right_place():
    ts = gw.tasks(6, "train", seed=9)
    # The expert's moves without its stop reach the goal, but the episode runs out of steps there.
    plans = {t.instruction: gw.expert_plan(t.start, t) for t in ts}
    walk = [gw.run_episode(gw.expert_policy(t), t, max_steps=len(plans[t.instruction]) - 1) for t in ts]
    assert all(not e.success and gw.success(e.states[-1], e.task) for e in walk)
    eps = gw.run_episodes(lambda images, texts: ["left"] * len(texts), ts, max_steps=3)
    assert all(not e.success and e.steps == 3 for e in eps)
    eps = gw.run_episodes(lambda images, texts: ["stop"] * len(texts), ts)      # stopping at once fails
    assert all(not e.success and e.steps == 1 for e in eps)


def test_a_policy_that_reads_the_first_frame_gets_each_episodes_start_image():
    ts = gw.tasks(3, "train", seed=4)
    starts = gw.render_many([t.start for t in ts], [t.seed for t in ts])
    seen = []

    def policy(images, texts, firsts):
        seen.append((images.clone(), firsts.clone()))
        return ["left"] * len(texts)
    policy.reads_first_frame = True
    eps = gw.run_episodes(policy, ts, max_steps=2)
    assert len(seen) == 2 and all(e.steps == 2 for e in eps)
    assert torch.equal(seen[0][1], starts) and torch.equal(seen[1][1], starts)     # the start, at every step
    assert torch.equal(seen[0][0], starts) and not torch.equal(seen[1][0], seen[1][1])

    def one(image, text, first):
        assert image.shape == first.shape == (3, 50, 50)
        seen.append(first)
        return "stop"
    one.reads_first_frame = True
    assert gw.run_episode(one, ts[1]).steps == 1 and torch.equal(seen[-1], starts[1])


def test_run_episodes_checks_the_policy():
    ts = gw.tasks(6, "train", seed=9)
    assert all(gw.default_max_steps(t) >= 12 for t in ts)
    with pytest.raises(ValueError, match="action"):
        gw.run_episode(lambda image, text: "jump", ts[0])
    with pytest.raises(ValueError, match="one action per image"):
        gw.run_episodes(lambda images, texts: ["up"], ts)
    with pytest.raises(TypeError, match="policy"):
        gw.run_episode("up", ts[0])


def test_demonstrations_replay_to_success():
    demos = gw.demonstrations(12, "train", seed=2)
    assert demos.images.shape == (len(demos), 3, 50, 50) and demos.actions.dtype == torch.long
    assert len(demos) == sum(len(gw.expert_plan(t.start, t)) for t in demos.tasks)
    last = torch.cat([(demos.episode[1:] != demos.episode[:-1]).nonzero()[:, 0], torch.tensor([len(demos) - 1])])
    assert (demos.actions[last] == gw.ACTIONS.index("stop")).all() and (demos.actions == 4).sum() == len(demos.tasks)
    image, text, action = demos[0]
    assert text == demos.tasks[0].instruction and action == gw.expert_plan(demos.tasks[0].start, demos.tasks[0])[0]
    assert torch.equal(image, gw.render(demos.tasks[0].start, demos.tasks[0].seed))
    assert torch.equal(demos.images, gw.render_many(demos.states, [demos.tasks[e].seed for e in demos.episode]))
    assert all(gw.expert_action(s, demos.tasks[e]) == gw.ACTIONS[a]
               for s, e, a in zip(demos.states, demos.episode.tolist(), demos.actions.tolist()))


# -- errors -------------------------------------------------------------------------------------------
def test_clear_errors_on_bad_input():
    t = gw.tasks(1, seed=0)[0]
    with pytest.raises(ValueError, match=re.escape("action must be one of")):
        gw.step(t.start, "jump")
    with pytest.raises(ValueError, match="action"):
        gw.step(t.start, 5)
    with pytest.raises(TypeError, match="state must be a gridworld.State"):
        gw.step("start", "up")
    with pytest.raises(ValueError, match="split"):
        gw.tasks(3, "val")
    with pytest.raises(ValueError, match="n must be at least 0"):
        gw.tasks(-1)
    with pytest.raises(ValueError, match="families"):
        gw.tasks(3, families=["dance"])
    with pytest.raises(ValueError, match="cell of their own"):
        scene((1, 1), ("red", "circle", (1, 1)))
    with pytest.raises(ValueError, match="State.agent"):
        scene((5, 0), ("red", "circle", (1, 1)))
    with pytest.raises(ValueError, match="GridShape.colour"):
        scene((0, 0), ("pink", "circle", (1, 1)))
    listed = gw.State([0, np.int64(1)], (gw.GridShape("red", "circle", "large", [0, 2]),))    # lists are read as cells
    assert listed.agent == (0, 1) and gw.step(listed, "right") == scene((0, 2), ("red", "circle", (0, 3)))
    with pytest.raises(TypeError, match="task must be a gridworld.Task"):
        gw.success(t.start, "go to the red circle")
    with pytest.raises(ValueError, match="seed"):
        gw.render(t.start, seed=-1)
    with pytest.raises(TypeError, match="episode"):
        gw.frames(t)
    with pytest.raises(ValueError, match="Task.family"):
        gw.Task("fly", "fly", t.start, 0, "", "train", 0)
    with pytest.raises(ValueError, match="Task.direction"):
        gw.Task("push the red circle", "push", t.start, 0, "", "train", 0)
    with pytest.raises(ValueError, match="Task.target"):
        gw.Task("go to it", "goto", t.start, 9, "", "train", 0)
