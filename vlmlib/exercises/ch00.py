"""Checkers for notebook 00, the ShapesWorld tour."""

from __future__ import annotations

import numpy as np

from ..shapesworld import COLOUR_NAMES, KINDS, position_name
from .core import Case, Verdict, check_function
from .registry import exercise


def _reference_counts(colour: np.ndarray, kind: np.ndarray) -> np.ndarray:
    counts = np.zeros((len(COLOUR_NAMES), len(KINDS)), dtype=np.int64)
    np.add.at(counts, (colour, kind), 1)
    return counts


@exercise("0.1", colour_kind_counts=_reference_counts)
def check_colour_kind_counts(fn, seed: int | None = None) -> Verdict:
    """Exercise 0.1: count how often each colour–kind pair occurs."""
    rng = np.random.default_rng(seed)
    cases = [Case((np.array([0, 0, 5]), np.array([1, 1, 3])), description="three labels")]
    for n in (1, 50, 1000):
        cases.append(Case((rng.integers(len(COLOUR_NAMES), size=n), rng.integers(len(KINDS), size=n)),
                          description=f"{n} random labels"))
    return check_function(
        "0.1", fn, _reference_counts, cases,
        hint="Start from np.zeros((6, 4), dtype=np.int64) and add 1 at [colour[i], kind[i]] for every i "
             "(a loop is fine; np.add.at does it in one call).")


@exercise("0.2", position_name=position_name)
def check_position_name(fn, seed: int | None = None) -> Verdict:
    """Exercise 0.2: name the grid cell that holds a pixel."""
    rng = np.random.default_rng(seed)
    cases = [Case((0.0, 0.0, 32), description="the top-left corner"),
             Case((31.9, 31.9, 32), description="the bottom-right corner"),
             Case((16.0, 16.0, 32), description="the centre")]
    for size in (16, 32, 48, 100):
        for _ in range(6):
            x, y = rng.uniform(0, size, 2)
            cases.append(Case((float(x), float(y), size), description=f"a random pixel of a {size}×{size} image"))
        cases.append(Case((size / 3, 2 * size / 3, size), description=f"exactly on cell borders of a {size}×{size} image"))
    return check_function(
        "0.2", fn, position_name, cases,
        hint="The column is int(3 * x / image_size) and the row int(3 * y / image_size); "
             "POSITIONS lists the cells row by row, so the index is 3 * row + column.")
