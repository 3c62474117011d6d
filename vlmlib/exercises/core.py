"""The exercise-checker framework.

Introduced in notebook 00. A chapter's check function runs the student's code on fresh random
inputs of several sizes, compares with a reference and prints a friendly verdict with a hint. The
checker survives anything the student's code does: raising, returning ``None``, the wrong type,
shape or dtype, NaN, or running far too long. An exercise that has not been started yet (its
stub raises ``NotImplementedError``) stops "Run all" there, with the exercise's own message.
"""

from __future__ import annotations

import math
import signal
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

__all__ = ["Verdict", "ExerciseNotDone", "Case", "check_function", "compare", "safe_repr"]


@dataclass
class Verdict:
    """The result of a check: ``bool(verdict)`` is whether it passed."""

    exercise: str
    passed: bool
    message: str
    hint: str | None = None
    not_started: bool = False

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"✓ Exercise {self.exercise}: correct! {self.message}".rstrip()
        if self.not_started:
            return (f"✎ Exercise {self.exercise} is waiting for you: {self.message}\n"
                    "   Replace the `raise NotImplementedError(...)` line with your code, run that cell, then this one.")
        text = f"✗ Exercise {self.exercise}: not yet. {self.message}"
        if self.hint:
            text += f"\n   Hint: {self.hint}"
        return text

    __repr__ = __str__

    def _ipython_display_(self) -> None:
        # The check already printed the verdict; showing it again as a cell result would repeat it.
        pass


class ExerciseNotDone(NotImplementedError):
    """Raised by a check when the exercise's stub has not been replaced yet: "Run all" stops here."""

    def _render_traceback_(self) -> list[str]:   # IPython shows this instead of a long traceback
        return [f"ExerciseNotDone: {self}"]


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


def compare(actual: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4, name: str = "the result") -> str | None:
    """Explain how ``actual`` differs from ``expected``, or return ``None`` when they agree."""
    if actual is None and expected is not None:
        return f"{name} is None. Did you forget a `return` statement?"
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        kind = "torch tensor" if isinstance(expected, torch.Tensor) else "NumPy array"
        if isinstance(expected, torch.Tensor) and not isinstance(actual, torch.Tensor):
            return f"{name} should be a torch tensor, but it is {safe_repr(actual)}."
        if isinstance(expected, np.ndarray) and not isinstance(actual, np.ndarray):
            return f"{name} should be a NumPy array, but it is {safe_repr(actual)}."
        a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
        e = expected.detach().cpu().numpy() if isinstance(expected, torch.Tensor) else expected
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
    if isinstance(expected, (int, float, np.number)):
        if not isinstance(actual, (int, float, np.number, torch.Tensor)) or isinstance(actual, bool):
            return f"{name} should be a number, but it is {safe_repr(actual)}."
        try:
            value = float(actual)
        except Exception:
            return f"{name} should be a single number, but it is {safe_repr(actual)}."
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
    stop_if_not_done: bool = True,
    verbose: bool = True,
) -> Verdict:
    """Check ``student`` against ``reference`` on every case and print the verdict.

    ``compare_fn(actual, expected, name)`` may replace :func:`compare` for results that are equal
    in a looser sense (e.g. up to an ordering). When the student's function raises
    ``NotImplementedError`` (the stub) and ``stop_if_not_done`` is true, an
    :class:`ExerciseNotDone` with the stub's message stops the notebook run here.
    """
    verdict = _judge(exercise, student, reference, cases, hint, atol, rtol, time_limit, compare_fn)
    if verbose:
        print(verdict)
    if verdict.not_started and stop_if_not_done:
        raise ExerciseNotDone(verdict.message)
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
            return Verdict(exercise, False, str(exc) or f"Exercise {exercise} is not implemented yet", hint,
                           not_started=True)
        except BaseException as exc:   # anything the student's code raises, SystemExit included
            frames = traceback.extract_tb(exc.__traceback__)
            line = f" on line {frames[-1].lineno}" if frames else ""
            return Verdict(exercise, False, f"Your function raised {type(exc).__name__}: {_safe_str(exc)}"
                                            f"{line}{where}.", hint)
        try:
            problem = (compare_fn or (lambda a, e, n: compare(a, e, atol, rtol, n)))(actual, expected, "your result")
        except Exception as exc:
            problem = f"the checker could not compare your result ({type(exc).__name__}); it is {safe_repr(actual)}"
        if problem:
            return Verdict(exercise, False, problem[0].upper() + problem[1:] + where, hint)
    return Verdict(exercise, True, f"All {len(cases)} tests pass.")
