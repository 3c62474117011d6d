"""The exercise-checker framework.

Introduced in notebook 00. A chapter's check function runs the student's code on fresh random
inputs of several sizes, compares with a reference and prints a friendly verdict with a hint. The
checker survives anything the student's code does: raising, returning ``None``, the wrong type,
shape or dtype, NaN, or running far too long. A right answer passes in whatever scalar type it comes
(``np.str_``, ``np.int64``, a 0-d array or tensor where a Python scalar is expected). An exercise not
started yet (its stub raises ``NotImplementedError``) is "waiting for you", and "Run all" goes on:
the cells below use vlmlib's version (see :mod:`.registry`).
"""

from __future__ import annotations

import math
import re
import signal
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import registry as _registry

__all__ = ["Verdict", "Case", "check_function", "compare", "safe_repr"]


@dataclass
class Verdict:
    """The result of a check: ``bool(verdict)`` is whether it passed."""

    exercise: str
    passed: bool
    message: str
    hint: str | None = None
    not_started: bool = False
    stand_in: str | None = None   # what the cells below use while the exercise waits


    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"✓ Exercise {self.exercise}: correct! {self.message}".rstrip()
        if self.not_started:
            text = (f"✎ Exercise {self.exercise} is waiting for you: {self.message}\n"
                    "   Replace the `raise NotImplementedError(...)` line with your code, run that cell, then this one.")
            if self.stand_in:
                text += f"\n   Until then the cells below use {self.stand_in}, so the chapter runs on."
            return text
        text = f"✗ Exercise {self.exercise}: not yet. {self.message}"
        if self.hint:
            text += f"\n   Hint: {self.hint}"
        return text

    __repr__ = __str__

    def _ipython_display_(self) -> None:
        # The check already printed the verdict; showing it again as a cell result would repeat it.
        pass


class _TimeLimit(BaseException):
    """Raised inside student code that runs too long (a BaseException so `except Exception` can't swallow it)."""


@dataclass
class Case:
    """One call of the student's function: positional and keyword arguments, and a description."""

    args: tuple = ()
    kwargs: dict | None = None
    description: str = ""


def safe_repr(value: Any, limit: int = 120) -> str:
    """``repr`` that never raises and stays short."""
    try:
        if isinstance(value, torch.Tensor):
            text = f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
        elif isinstance(value, np.ndarray):
            text = f"array of shape {value.shape} and dtype {value.dtype}"
        else:
            text = repr(value)
    except BaseException:   # a student's object whose __repr__ is broken
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_str(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:
        text = ""
    return (text[:200] + "...") if len(text) > 200 else text


def _call_with_time_limit(fn: Callable, args: tuple, kwargs: dict, seconds: float):
    """Call ``fn``; stop it with :class:`_TimeLimit` after ``seconds`` (main thread on Unix only)."""
    use_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not use_alarm:
        return fn(*args, **kwargs)

    def _alarm(signum, frame):
        raise _TimeLimit()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def python_scalar(value: Any) -> Any:
    """``value`` as a Python scalar when it is a NumPy scalar or a 0-d array or tensor; else unchanged."""
    if isinstance(value, np.generic) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0):
        try:
            return value.item()
        except Exception:
            return value
    return value


def _as_numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    value = value.detach().cpu()
    if value.dtype in (torch.bfloat16, torch.float16):   # NumPy has no bfloat16
        value = value.float()
    return value.numpy()


def compare(actual: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4, name: str = "the result") -> str | None:
    """Explain how ``actual`` differs from ``expected``, or return ``None`` when they agree.

    Where a Python scalar is expected, NumPy scalars and 0-d arrays or tensors holding the right
    value are right too.
    """
    if actual is None and expected is not None:
        return f"{name} is None. Did you forget a `return` statement?"
    if isinstance(expected, (bool, str, int, float, np.generic)):
        expected, actual = python_scalar(expected), python_scalar(actual)
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        kind = "torch tensor" if isinstance(expected, torch.Tensor) else "NumPy array"
        if isinstance(expected, torch.Tensor) and not isinstance(actual, torch.Tensor):
            return f"{name} should be a torch tensor, but it is {safe_repr(actual)}."
        if isinstance(expected, np.ndarray) and not isinstance(actual, np.ndarray):
            return f"{name} should be a NumPy array, but it is {safe_repr(actual)}."
        a, e = _as_numpy(actual), _as_numpy(expected)
        if a.shape != e.shape:
            return f"{name} should have shape {tuple(e.shape)}, but it has shape {tuple(a.shape)}."
        groups = {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point", "c": "complex"}
        ga, ge = groups.get(a.dtype.kind, a.dtype.kind), groups.get(e.dtype.kind, e.dtype.kind)
        if ga != ge:
            return f"{name} should hold {ge} values ({kind} dtype {expected.dtype}), but it holds {ga} values ({actual.dtype})."
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            return f"{name} contains NaN or infinite values."
        if a.dtype.kind in "fc":
            if not np.allclose(a, e, atol=atol, rtol=rtol):
                diff = float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))))
                return f"{name} has the right shape, but its values differ (largest difference {diff:.3g})."
        elif not np.array_equal(a, e):
            wrong = int(np.sum(a != e))
            return f"{name} has the right shape, but {wrong} of its {a.size} entries are wrong."
        return None
    if isinstance(expected, bool) or isinstance(expected, str):
        return None if (type(actual) is type(expected) and actual == expected) else \
            f"{name} should be {safe_repr(expected)}, but it is {safe_repr(actual)}."
    if isinstance(expected, (int, float)):
        if isinstance(actual, (np.ndarray, torch.Tensor)):
            return (f"{name} should be a single number, but it is {safe_repr(actual)} "
                    "(`.item()` turns a one-element tensor or array into a number).")
        if not isinstance(actual, (int, float)) or isinstance(actual, bool):
            return f"{name} should be a number, but it is {safe_repr(actual)}."
        try:
            value = float(actual)
        except OverflowError:
            return f"{name} is {safe_repr(actual)}, far too large."
        if not math.isfinite(value):
            return f"{name} is {value}, not a finite number."
        if not math.isclose(value, float(expected), abs_tol=atol, rel_tol=rtol):
            return f"{name} should be {float(expected):.6g}, but it is {value:.6g}."
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            return f"{name} should be a {type(expected).__name__}, but it is {safe_repr(actual)}."
        if len(actual) != len(expected):
            return f"{name} should have {len(expected)} items, but it has {len(actual)}."
        for i, (x, y) in enumerate(zip(actual, expected)):
            problem = compare(x, y, atol, rtol, f"item {i} of {name}")
            if problem:
                return problem
        return None
    try:
        equal = bool(actual == expected)
    except Exception:
        equal = False
    return None if equal else f"{name} should be {safe_repr(expected)}, but it is {safe_repr(actual)}."


def check_function(
    exercise: str,
    student: Any,
    reference: Callable,
    cases: Iterable[Case] | Sequence[Case],
    hint: str | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    time_limit: float = 20.0,
    compare_fn: Callable[[Any, Any, str], str | None] | None = None,
    verbose: bool = True,
) -> Verdict:
    """Check ``student`` against ``reference`` on every case and print the verdict.

    ``compare_fn(actual, expected, name)`` may replace :func:`compare` for results that are equal
    in a looser sense (e.g. up to an ordering). When the student's function raises
    ``NotImplementedError`` (the stub), the exercise is "waiting for you"; a stub marked with
    :class:`~.registry.fallback` is checked as the student wrote it, and the verdict says that the
    cells below use vlmlib's version meanwhile.
    """
    wrapper = student if hasattr(student, "student_function") else None
    if _registry.waiting(exercise):   # a value exercise whose `with fallback(...)` block fell back
        verdict = Verdict(exercise, False, "its cell still raises NotImplementedError", hint, not_started=True,
                          stand_in=f"vlmlib's {', '.join(_registry.lookup(exercise).references)}")
    else:
        verdict = _judge(exercise, wrapper.student_function if wrapper else student, reference, cases, hint,
                         atol, rtol, time_limit, compare_fn)
    if verdict.not_started and wrapper:
        verdict.stand_in = wrapper.stand_in
    if verbose:
        print(verdict)
        if verdict.stand_in and wrapper:
            wrapper.announced = True   # said here, so the cells below need not repeat it
    return verdict


def _judge(exercise, student, reference, cases, hint, atol, rtol, time_limit, compare_fn) -> Verdict:
    if not callable(student):
        return Verdict(exercise, False, f"Pass your function itself to the check, not {safe_repr(student)}.", hint)
    try:
        cases = list(cases)
    except Exception as exc:   # a broken case generator is our bug, but must not crash the notebook
        return Verdict(exercise, False, f"The checker could not build its test cases ({exc}); please report this.")
    for number, case in enumerate(cases, 1):
        kwargs = case.kwargs or {}
        where = f" (test {number} of {len(cases)}{': ' + case.description if case.description else ''})"
        expected = reference(*_clone(case.args), **_clone(kwargs))
        try:
            actual = _call_with_time_limit(student, _clone(case.args), _clone(kwargs), time_limit)
        except _TimeLimit:
            return Verdict(exercise, False, f"Your function ran for more than {time_limit:g} s{where}. "
                                            "Is there a loop that never ends?", hint)
        except KeyboardInterrupt:
            raise
        except NotImplementedError as exc:
            what = re.sub(rf"^Exercise {re.escape(exercise)}\s*:\s*", "", _safe_str(exc))
            return Verdict(exercise, False, what or "its function still raises NotImplementedError", hint,
                           not_started=True)
        except BaseException as exc:   # anything the student's code raises, SystemExit included
            frames = traceback.extract_tb(exc.__traceback__)
            line = f" on line {frames[-1].lineno}" if frames else ""
            return Verdict(exercise, False, f"Your function raised {type(exc).__name__}: {_safe_str(exc)}"
                                            f"{line}{where}.", hint)
        try:
            problem = (compare_fn or (lambda a, e, n: compare(a, e, atol, rtol, n)))(actual, expected, "your result")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:   # e.g. the __eq__ of an object the student returned
            problem = f"the checker could not compare your result ({type(exc).__name__}); it is {safe_repr(actual)}"
        if problem:
            return Verdict(exercise, False, problem[0].upper() + problem[1:] + where, hint)
    return Verdict(exercise, True, f"All {len(cases)} tests pass.")
