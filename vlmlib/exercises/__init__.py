"""Exercise checkers, one module per chapter (``ch00``, ``ch01``, ...), on the framework in :mod:`.core`;
:mod:`.registry` keeps a chapter runnable while its exercises wait."""

from .core import Case, Verdict, check_function, compare
from .registry import EXERCISES, exercise, fallback, lookup

__all__ = ["Case", "Verdict", "check_function", "compare", "EXERCISES", "exercise", "fallback", "lookup"]
