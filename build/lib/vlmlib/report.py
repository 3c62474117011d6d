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

METRICS_ENV = "VLMLIB_METRICS"


def record(name: str, value: float, unit: str = "", bar: str = "") -> None:
    """Append one measured value to ``$VLMLIB_METRICS`` (if set)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    path = os.environ.get(METRICS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, "value": float(value), "unit": unit, "bar": bar}) + "\n")


def expect(name: str, value: float, at_least: float | None = None, at_most: float | None = None,
           unit: str = "") -> float:
    """Print a measured value beside its bar, record it, and fail loudly if the bar is missed."""
    if at_least is None and at_most is None:
        raise ValueError("give at_least or at_most (the bar to compare with)")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"value must be a number, got {value!r}") from None
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
    box: dict = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start
        if verbose:
            print(f"{name}: {box['seconds']:.1f} s")
        record(name, box["seconds"], " s")
