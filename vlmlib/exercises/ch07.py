"""Checkers for chapter 7, beyond images: text to motion (7.1, 7.2) and score distillation (7.3)."""

from __future__ import annotations

import numpy as np
import torch

from ..motion import (FRAMES, IMAGE_SIZE, Instruction, cell_centre, instructions, motion_correct,
                      reference_trajectory)
from ..sds import sds_gradient, sds_weight
from ..shapesworld import POSITIONS
from .core import Case, Verdict, check_function
from .registry import exercise


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(int(np.random.default_rng(seed).integers(2**31)))


def _some_instructions(rng: np.random.Generator) -> list[Instruction]:
    """One move, a repeated move, a turn, and a few random ones (a new draw for each seed)."""
    fixed = [Instruction("red", "circle", "small", "left", ("right",)),
             Instruction("blue", "square", "large", "bottom left", ("up", "up")),
             Instruction("green", "triangle", "small", "top right", ("down", "left"))]
    drawn = instructions(3, "train", int(rng.integers(10_000))) + instructions(1, "held_out", int(rng.integers(10_000)))
    return fixed + drawn


def _trajectory_reference(instruction):
    return reference_trajectory(instruction)


@exercise("7.1", reference_trajectory=reference_trajectory)
def check_reference_trajectory(fn, seed: int | None = None) -> Verdict:
    """Exercise 7.1: the piecewise-linear motion through the centres of the instruction's cells."""
    cases = [Case((i,), description=f"“{i.text}”") for i in _some_instructions(_rng(seed))]
    return check_function(
        "7.1", fn, _trajectory_reference, cases, atol=1e-3,
        hint=f"points = [cell_centre(c) for c in instruction.cells] (2 or 3 points); frame i is at time "
             f"s = i / {FRAMES - 1}. One move: a + s·(b − a). Two moves, the corner at s = 1/2: "
             "a + 2s·(b − a) while s ≤ 1/2, then b + (2s − 1)·(c − b). Return a float tensor "
             f"({FRAMES}, 2) of (x, y) pixels; np.interp(s, [0, 0.5, 1], xs) does one coordinate.")


# -- 7.2: is a motion correct? -----------------------------------------------------------------------
def _shifted(path: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    return path + torch.tensor([dx, dy], dtype=path.dtype)


def _detour(instruction: Instruction, path: torch.Tensor) -> torch.Tensor:
    """Frames 2–5 visit a neighbour of the start cell that is not on the path."""
    row, col = divmod(POSITIONS.index(instruction.start), 3)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        if 0 <= row + dr < 3 and 0 <= col + dc < 3 and POSITIONS[3 * (row + dr) + col + dc] not in instruction.cells:
            off = POSITIONS[3 * (row + dr) + col + dc]
            break
    out = path.clone()
    out[2:6] = torch.tensor(cell_centre(off), dtype=path.dtype)
    return out


def _motion_cases(rng: np.random.Generator) -> list[Case]:
    todo = _some_instructions(rng)
    cell = IMAGE_SIZE / 3
    cases = []
    for k, ins in enumerate(todo):
        good = reference_trajectory(ins, rng)
        cases.append(Case((good, ins), description=f"the motion asked for: “{ins.text}”"))
        wrong = [("the motion backwards", good.flip(0)),
                 ("a path that stands still", good[:1].expand(FRAMES, 2).clone()),
                 ("a detour through another cell", _detour(ins, good))]
        if len(ins.moves) == 2 and ins.moves[0] != ins.moves[1]:
            swapped = Instruction(ins.colour, ins.kind, ins.size, ins.start, ins.moves[::-1])
            if swapped.cells[1] != ins.cells[1]:
                wrong.append(("the two moves in the other order", reference_trajectory(swapped, rng)))
        name, path = wrong[k % len(wrong)]
        cases.append(Case((path, ins), description=f"{name}, for “{ins.text}”"))
    turn = todo[2]                                          # two moves: waits at the start, then hurries
    late = reference_trajectory(turn)
    late = torch.cat([late[:1].expand(FRAMES // 2 + 1, 2), late[3::2]])               # frames 0–8 at the start
    cases.append(Case((late, turn), description=f"a shape that waits at the start for half the time, then makes "
                                                f"both moves (halfway it is not at the corner), for “{turn.text}”"))
    short = reference_trajectory(turn)
    short[FRAMES // 2:] = torch.tensor(cell_centre(turn.cells[1]))
    cases.append(Case((short, turn), description=f"a shape that stops after the first move, for “{turn.text}”"))
    ins = todo[0]                                           # from the left cell, one move right
    good = reference_trajectory(ins, rng)
    there_and_back = torch.cat([good.flip(0)[::2], good[1::2]])      # from the end cell to the start, then the move
    cases.append(Case((there_and_back, ins), description=f"a motion that starts in the wrong cell (where it should "
                                                         f"end), for “{ins.text}”"))
    cases.append(Case((_shifted(good, 0, cell), ins), description=f"the right move one row too low, for “{ins.text}”"))
    shaky = good + torch.from_numpy(rng.uniform(-0.8, 0.8, (FRAMES, 2))).float()
    cases.append(Case((shaky, ins), description=f"the motion asked for, a little shaky: “{ins.text}”"))
    edge = Instruction("cyan", "cross", "large", "centre", ("right",))
    beyond = reference_trajectory(edge)
    beyond[-3:, 0] = torch.tensor([33.0, 36.0, 40.0])     # runs on past the image's right edge
    cases.append(Case((beyond, edge), description=f"a motion that ends past the image's edge, for “{edge.text}”"))
    nan = reference_trajectory(edge)
    nan[5] = float("nan")
    cases.append(Case((nan, edge), description=f"a motion with a NaN frame, for “{edge.text}”"))
    order = rng.permutation(len(cases))
    return [cases[i] for i in order]


def _correct_reference(trajectory, instruction):
    return motion_correct(trajectory, instruction)


@exercise("7.2", motion_correct=motion_correct)
def check_motion_correct(fn, seed: int | None = None) -> Verdict:
    """Exercise 7.2: whether a trajectory does what its instruction asks (start, end, order, no detour)."""
    return check_function(
        "7.2", fn, _correct_reference, _motion_cases(_rng(seed)),
        hint="read cells with position_name(x, y, 32) after clipping x and y into [0, 32); return True only "
             "when frame 0 is in instruction.start, the last frame in instruction.end, every frame in one of "
             "instruction.cells, and halfway (the mean of frames 7 and 8) in instruction.cells[1] for two "
             "moves. A trajectory holding NaN is not correct (check torch.isfinite first). Return a bool.")


# -- 7.3: the score distillation gradient ------------------------------------------------------------
def _sds_reference(eps_hat, eps, alpha_bar):
    """DreamFusion's residual w(t)(ε̂ − ε) with w(t) = 1 − ᾱ_t, one weight per rendering."""
    return sds_gradient(eps_hat, eps_hat, eps, sds_weight(alpha_bar))


@exercise("7.3", sds_grad=_sds_reference)
def check_sds_grad(fn, seed: int | None = None) -> Verdict:
    """Exercise 7.3: the SDS gradient with respect to the renderings."""
    g = torch.Generator().manual_seed(int(_rng(seed).integers(2**31)))
    cases = []
    for b, size in ((1, 4), (3, 8), (2, 32), (5, 16)):
        eps_hat, eps = torch.randn(b, 3, size, size, generator=g), torch.randn(b, 3, size, size, generator=g)
        alpha_bar = torch.rand(b, generator=g) * 0.98 + 0.01
        cases.append(Case((eps_hat, eps, alpha_bar), description=f"{b} rendering(s) of {size}×{size}"))
    same = torch.randn(2, 3, 8, 8, generator=g)
    cases.append(Case((same, same.clone(), torch.tensor([0.3, 0.9])),
                      description="a prediction equal to the added noise (nothing to change)"))
    return check_function(
        "7.3", fn, _sds_reference, cases,
        hint="w = 1 − alpha_bar has one value per rendering (B,); reshape it to (B, 1, 1, 1) so that it "
             "multiplies each rendering's (3, H, W): (1 - alpha_bar)[:, None, None, None] * (eps_hat - eps). "
             "No network and no backward pass are needed: that is the point of SDS.")
