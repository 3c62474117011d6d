"""Exercise checkers, one module per chapter (``ch00``, ``ch01``, ...), on the framework in :mod:`.core`."""

from .core import Case, ExerciseNotDone, Verdict, check_function, compare

__all__ = ["Case", "ExerciseNotDone", "Verdict", "check_function", "compare"]
