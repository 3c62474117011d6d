"""A chapter stays runnable while its exercises wait: vlmlib's version stands in for an undone one.

Each chapter module registers its exercises with :func:`exercise`: the check function, and vlmlib's
version of every name the notebook's solution cell defines. A student copy's stub is marked with
:func:`fallback`::

    @fallback("5.1")
    def q_sample(x0, t, noise, alpha_bar):
        raise NotImplementedError("Exercise 5.1: ...")

Calls from later cells that meet the stub's ``NotImplementedError`` get vlmlib's result instead,
and the student is told so in one line; the checker still calls the student's own function and says
"waiting for you". A solution cell that defines values instead of functions becomes a ``with
fallback("N.M"):`` block: when its code raises ``NotImplementedError`` the block sets vlmlib's
values, and the checker reports the exercise as waiting.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Exercise", "EXERCISES", "exercise", "lookup", "fallback", "waiting"]


@dataclass(frozen=True)
class Exercise:
    """An exercise: its id ("5.1"), its check function and vlmlib's version of each name it defines."""

    id: str
    check: Callable
    references: dict[str, Any] = field(default_factory=dict)


EXERCISES: dict[str, Exercise] = {}
_WAITING: set[str] = set()   # value exercises whose block fell back (functions carry their own state)


def exercise(exercise_id: str, **references: Any) -> Callable[[Callable], Callable]:
    """Register the decorated check function as exercise ``exercise_id``'s, with vlmlib's versions."""
    def register(check: Callable) -> Callable:
        EXERCISES[exercise_id] = Exercise(exercise_id, check, dict(references))
        return check
    return register


def lookup(exercise_id: str) -> Exercise:
    """The registered exercise ``exercise_id`` (its chapter's module is imported on first use)."""
    if not isinstance(exercise_id, str) or not re.fullmatch(r"\d+\.\d+", exercise_id):
        raise ValueError(f"exercise_id must be a string like '5.1', got {exercise_id!r}")
    if exercise_id not in EXERCISES:
        try:
            importlib.import_module(f"{__package__}.ch{int(exercise_id.split('.')[0]):02d}")
        except ModuleNotFoundError:
            pass
    if exercise_id not in EXERCISES:
        raise ValueError(f"vlmlib has no exercise {exercise_id}; it knows {', '.join(sorted(EXERCISES)) or 'none'}")
    return EXERCISES[exercise_id]


def waiting(exercise_id: str) -> bool:
    """Whether the ``with fallback(exercise_id)`` block of a value exercise fell back to vlmlib's values."""
    return exercise_id in _WAITING


def _reference(ex: Exercise, name: str) -> Any:
    if name not in ex.references:
        raise ValueError(f"exercise {ex.id} defines {', '.join(sorted(ex.references))}, not {name!r}: "
                         "keep the names the exercise's cell gives")
    return ex.references[name]


class fallback:
    """Mark an exercise's function (decorator) or block of code (``with``) so the chapter runs on without it."""

    def __init__(self, exercise_id: str):
        self.exercise = lookup(exercise_id)

    # -- functions ----------------------------------------------------------------------------------
    def __call__(self, fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"@fallback({self.exercise.id!r}) decorates a function, got {fn!r}")
        ex, name = self.exercise, getattr(fn, "__name__", "?")
        reference = _reference(ex, name)
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run_on(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except NotImplementedError:
                pass   # (outside the handler, so a failure of the reference shows no student traceback)
            if not run_on.announced:
                print(f"Exercise {ex.id} is not done yet: using vlmlib's {name} so the chapter runs on.")
                run_on.announced = True
            bound = signature.bind(*args, **kwargs)
            return reference(*bound.args, **bound.kwargs)

        run_on.exercise = ex.id
        run_on.student_function = fn
        run_on.stand_in = f"vlmlib's {name}"
        run_on.announced = False
        return run_on

    # -- values ---------------------------------------------------------------------------------------
    def __enter__(self) -> "fallback":
        self._namespace = sys._getframe(1).f_globals
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        ex = self.exercise
        if kind is None:
            _WAITING.discard(ex.id)
            return False
        if not issubclass(kind, NotImplementedError):
            return False
        values = {name: copy.deepcopy(value) for name, value in ex.references.items()}
        self._namespace.update(values)
        _WAITING.add(ex.id)
        print(f"Exercise {ex.id} is not done yet: using vlmlib's {', '.join(values)} so the chapter runs on.")
        return True
