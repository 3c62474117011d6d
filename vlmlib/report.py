"""Measured results: print them, check them against the chapter's bar, and record them.

Introduced in notebook 00. A chapter states its quality bar with :func:`expect` ("at least 97%
held-out accuracy"); the line it prints is the evidence under the claim, and the test run fails if
the bar is missed. When ``$VLMLIB_METRICS`` names a file, every result is also appended there as a
JSON line; the benchmark command turns those lines into its table.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from . import checks

METRICS_ENV = "VLMLIB_METRICS"


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    return name


def _as_number(value, name: str = "value") -> float:
    """A float from a number, a NumPy scalar or a one-element tensor (NaN allowed: it is a result too)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or (isinstance(value, np.ndarray) and value.size == 1):
        value = value.item()
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r:.80}")
    return float(value)


def record(name: str, value: float, unit: str = "", bar: str = "") -> None:
    """Append one measured value to ``$VLMLIB_METRICS`` (if set)."""
    _check_name(name)
    value = _as_number(value)
    for label, text in (("unit", unit), ("bar", bar)):
        if not isinstance(text, str):
            raise TypeError(f"{label} must be a string, got {text!r}")
    path = os.environ.get(METRICS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, "value": value, "unit": unit, "bar": bar}) + "\n")


def expect(name: str, value: float, at_least: float | None = None, at_most: float | None = None,
           unit: str = "") -> float:
    """Print a measured value beside its bar, record it, and fail loudly if the bar is missed."""
    _check_name(name)
    if at_least is None and at_most is None:
        raise ValueError("give at_least or at_most (the bar to compare with)")
    value = _as_number(value)
    at_least = checks.number(at_least, "at_least") if at_least is not None else None
    at_most = checks.number(at_most, "at_most") if at_most is not None else None
    if at_least is not None and at_most is not None and at_least > at_most:
        raise ValueError(f"at_least ({at_least:g}) must not exceed at_most ({at_most:g}): no value could meet the bar")
    if not isinstance(unit, str):
        raise TypeError(f"unit must be a string, got {unit!r}")
    bar = " and ".join(([f">= {at_least:g}"] if at_least is not None else []) + ([f"<= {at_most:g}"] if at_most is not None else []))
    ok = value == value and (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    print(f"{'✓' if ok else '✗'} {name}: {value:.4g}{unit} (bar: {bar}{unit})")
    record(name, value, unit, bar)
    if not ok:
        raise AssertionError(f"{name} = {value:.4g}{unit} misses its bar ({bar}{unit})")
    return value


@contextmanager
def stopwatch(name: str, verbose: bool = True) -> Iterator[dict]:
    """Time a block: ``with stopwatch("training") as t: ...``; then ``t["seconds"]``. Recorded like a result."""
    _check_name(name)
    box: dict = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start
        if verbose:
            print(f"{name}: {box['seconds']:.1f} s")
        record(name, box["seconds"], " s")
