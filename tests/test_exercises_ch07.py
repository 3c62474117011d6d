"""Chapter 7's exercise checkers (7.1 the reference motion, 7.2 the motion metric, 7.3 the SDS gradient): a right answer
passes for any seed, a wrong one is told what is wrong, and broken student code never crashes them."""

import numpy as np
import pytest
import torch

from vlmlib.motion import FRAMES, cell_centre, reference_trajectory
from vlmlib.shapesworld import position_name

from checker_contract import COMMON_MISTAKES, assert_accepts, assert_rejects, assert_survives

SOLUTIONS = '''
def reference_trajectory(instruction):
    points = torch.tensor([cell_centre(c) for c in instruction.cells])      # (2 or 3, 2)
    s = torch.linspace(0, 1, FRAMES)[:, None]                                 # (F, 1)
    if len(points) == 2:
        return points[0] + s * (points[1] - points[0])
    first = points[0] + 2 * s * (points[1] - points[0])
    second = points[1] + (2 * s - 1) * (points[2] - points[1])
    return torch.where(s <= 0.5, first, second)


def motion_correct(trajectory, instruction):
    if not torch.isfinite(trajectory).all():
        return False
    cell = lambda p: position_name(float(p[0].clamp(0, 31.999)), float(p[1].clamp(0, 31.999)), 32)
    cells = [cell(p) for p in trajectory]
    ok = cells[0] == instruction.start and cells[-1] == instruction.end
    ok = ok and all(c in instruction.cells for c in cells)
    if len(instruction.moves) == 2:
        ok = ok and cell((trajectory[7] + trajectory[8]) / 2) == instruction.cells[1]
    return ok


def sds_grad(eps_hat, eps, alpha_bar):
    return (1 - alpha_bar).view(-1, 1, 1, 1) * (eps_hat - eps)
'''


def _solutions() -> dict:
    namespace = {"torch": torch, "np": np, "FRAMES": FRAMES, "cell_centre": cell_centre, "position_name": position_name}
    exec(SOLUTIONS, namespace)
    return namespace


def _only_start_and_end(trajectory, instruction):
    p = torch.as_tensor(trajectory).clamp(0, 31.999)
    return (position_name(float(p[0, 0]), float(p[0, 1]), 32) == instruction.start
            and position_name(float(p[-1, 0]), float(p[-1, 1]), 32) == instruction.end)


def _no_halfway_check(trajectory, instruction):
    if not torch.isfinite(trajectory).all():
        return False
    cells = [position_name(float(x), float(y), 32) for x, y in trajectory.clamp(0, 31.999)]
    return cells[0] == instruction.start and cells[-1] == instruction.end and set(cells) <= set(instruction.cells)


WRONG = {
    "7.1": [lambda ins: reference_trajectory(ins).flip(0),                      # backwards
            lambda ins: reference_trajectory(ins)[:, [1, 0]],                   # x and y swapped
            lambda ins: torch.stack([torch.linspace(float(a), float(b), FRAMES) for a, b in      # straight to the end
                                     zip(cell_centre(ins.start), cell_centre(ins.end))], 1),
            lambda ins: reference_trajectory(ins)[:-1],                          # a frame short
            lambda ins: reference_trajectory(ins).numpy()],                      # not a tensor
    "7.2": [lambda t, i: True, _only_start_and_end, _no_halfway_check,
            lambda t, i: "yes"],
    "7.3": [lambda eh, e, ab: eh - e,                                          # no weight
            lambda eh, e, ab: ab.view(-1, 1, 1, 1) * (eh - e),                 # w = ᾱ instead of 1 − ᾱ
            lambda eh, e, ab: (1 - ab).view(-1, 1, 1, 1) * (e - eh),           # the sign flipped
            lambda eh, e, ab: (1 - ab.mean()) * (eh - e)],                     # one weight for the batch
}

MISTAKES = {
    **COMMON_MISTAKES,
    "returns a NaN tensor": lambda *a, **k: torch.full((FRAMES, 2), float("nan")),
    "returns a wrong-shaped tensor": lambda *a, **k: torch.zeros(7, 1),
}


@pytest.mark.parametrize("number", ["7.1", "7.2", "7.3"])
def test_chapter_7_checkers_accept_the_solution_for_any_seed(number, capsys):
    assert_accepts(number, _solutions(), capsys)


@pytest.mark.parametrize("number", ["7.1", "7.2", "7.3"])
def test_chapter_7_checkers_reject_wrong_answers_with_a_reason(number, capsys):
    assert_rejects(number, WRONG[number], capsys)


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
@pytest.mark.parametrize("number", ["7.1", "7.2", "7.3"])
def test_chapter_7_checkers_survive_broken_student_code(number, mistake, capsys):
    assert_survives(number, mistake, MISTAKES[mistake], capsys)


def test_the_metric_exercise_tests_each_rule():
    """The checker's cases catch a metric that leaves out any one of the four rules."""
    from vlmlib.exercises.ch07 import _motion_cases, _rng
    from vlmlib.motion import motion_correct

    cases = _motion_cases(_rng(0))
    answers = [motion_correct(*c.args) for c in cases]
    assert 0.3 < np.mean(answers) < 0.7                       # right and wrong motions both appear
    sol = _solutions()["motion_correct"]
    for rule in ("start", "end", "steady", "halfway", "finite"):
        def weaker(trajectory, instruction, rule=rule):
            if not torch.isfinite(trajectory).all():
                if rule != "finite":
                    return False
                trajectory = torch.nan_to_num(trajectory, nan=16.0)
            cells = [position_name(float(x), float(y), 32) for x, y in trajectory.clamp(0, 31.999)]
            ok = {"start": cells[0] == instruction.start, "end": cells[-1] == instruction.end,
                  "steady": set(cells) <= set(instruction.cells),
                  "halfway": len(instruction.moves) == 1 or position_name(
                      *[float(v) for v in ((trajectory[7] + trajectory[8]) / 2).clamp(0, 31.999)], 32)
                  == instruction.cells[1]}
            ok.pop(rule, None)
            return all(ok.values())
        assert any(weaker(*c.args) != sol(*c.args) for c in cases), rule
