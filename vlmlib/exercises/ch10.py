"""Checkers for chapter 10, from language to code: 10.1 a program for a line of shapes (judged by
running it), 10.2 the allow-list that decides whether a program may run, 10.3 the unbiased pass@k
estimator."""

from __future__ import annotations

import numpy as np

from .. import programs as P
from ..shapesworld import COLOUR_NAMES, KINDS, SIZES
from .core import Case, Verdict, check_function, python_scalar, safe_repr
from .registry import exercise


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(int(np.random.default_rng(seed).integers(2**31)))


# -- 10.1: a program for a line of shapes ------------------------------------------------------------
def _line_cases(rng: np.random.Generator) -> list[Case]:
    """A row and a column of each count, then random lines (a new draw for each seed)."""
    fixed = [("red", "circle", "small", "top row", 3), ("blue", "square", "large", "left column", 2),
             ("green", "cross", "small", "middle row", 2), ("yellow", "triangle", "large", "right column", 3)]
    for _ in range(6):
        fixed.append((str(rng.choice(COLOUR_NAMES)), str(rng.choice(KINDS)), str(rng.choice(SIZES)),
                      str(rng.choice(P.LINES)), int(rng.integers(2, 4))))
    return [Case(args, description=f"“{P.line_description(*args)}”") for args in fixed]


def _line_spec(colour, kind, size, line, count):
    """What any right program must draw (the checker judges by running, not by the text)."""
    return {"line": line, "count": count, "colour": colour, "kind": kind, "size": size}


def _runs_and_meets(actual, spec, name: str) -> str | None:
    actual = python_scalar(actual)                     # np.str_ or a 0-d array of text is text too
    if not isinstance(actual, str):
        return f"{name} should be the program as a string, but it is {safe_repr(actual)}"
    result = P.passes(actual, spec)
    if result.ok:
        return None
    return f"{name} does not draw what the description asks. Running it gave: {result.reason}"


@exercise("10.1", line_program=P.line_program)
def check_line_program(fn, seed: int | None = None) -> Verdict:
    """Exercise 10.1: a program, as text, that draws a row or a column of shapes."""
    return check_function(
        "10.1", fn, _line_spec, _line_cases(_rng(seed)), compare_fn=_runs_and_meets,
        hint="rows are 'top row' (row 0), 'middle row' (1), 'bottom row' (2); columns 'left column' (col 0) "
             "to 'right column' (2). Return for example the text 'for col in range(3):\\n    scene.add(\"circle\", "
             "colour=\"red\", size=\"small\", cell=(0, col))' (an f-string makes it from the arguments).")


# -- 10.2: the allow-list ----------------------------------------------------------------------------
_ADD = 'scene.add("circle", colour="red", size="small", cell=(0, 2))'
#: Programs on which the exercise's rule and vlmlib's allow-list agree, with why each is (not) allowed.
_PROGRAMS = (
    (_ADD, "one scene.add call"),
    (f'{_ADD}\nscene.add("cross", colour="blue", size="large", cell=(2, 0))', "two scene.add calls"),
    ('for col in range(3):\n    scene.add("square", colour="green", size="small", cell=(1, col))', "a loop"),
    ('for row in range(1, 3):\n    scene.add("square", colour="cyan", size="large", cell=(row, 0))', "a loop from 1"),
    ("import os", "an import"),
    ("__import__('os').system('ls')", "__import__"),
    ("scene.__class__.__bases__", "an attribute other than add"),
    ("open('/etc/passwd')", "a call of open"),
    ("exec('import os')", "a call of exec"),
    (f"while True:\n    {_ADD}", "a while loop"),
    ('scene.add("circle", colour="red" * 10**9, size="small", cell=(0, 2))', "arithmetic (a huge string)"),
    ("(lambda: scene)().add('circle')", "a lambda"),
    ("def f():\n    return scene", "a function definition"),
    ('getattr(scene, "add")("circle", colour="red", size="small", cell=(0, 2))', "getattr"),
    ('scene.add(f"{scene}", colour="red", size="small", cell=(0, 2))', "an f-string"),
    ("x = scene", "an assignment"),
    ('scene.add("circle", colour="red"', "text Python cannot parse"),
    (f"for line in open('/etc/passwd'):\n    {_ADD}", "a loop over open(...)"),
    ("scene.remove('circle')", "a method other than add"),
    (f"if True:\n    {_ADD}", "an if statement"),
)


def _allowed_cases(rng: np.random.Generator) -> list[Case]:
    order = rng.permutation(len(_PROGRAMS))
    return [Case((_PROGRAMS[i][0],), description=f"{_PROGRAMS[i][1]}: {safe_repr(_PROGRAMS[i][0], 60)}")
            for i in order]


def _allowed_reference(source: str) -> bool:
    return P.allowed(source)[0]


def _same_verdict(actual, expected, name: str) -> str | None:
    actual = python_scalar(actual)
    if isinstance(actual, (bool, np.bool_)) and bool(actual) == expected:
        return None
    if not isinstance(actual, (bool, np.bool_)):
        return f"{name} should be True or False, but it is {safe_repr(actual)}"
    return f"{name} is {bool(actual)}, but this program {'is' if expected else 'is not'} in the language"


@exercise("10.2", allowed=_allowed_reference)
def check_allowed(fn, seed: int | None = None) -> Verdict:
    """Exercise 10.2: the allow-list, on programs a model (or an attacker) might write."""
    return check_function(
        "10.2", fn, _allowed_reference, _allowed_cases(_rng(seed)), compare_fn=_same_verdict,
        hint="parse with ast.parse inside try/except SyntaxError (return False), then for node in "
             "ast.walk(tree): refuse any node type outside the allowed tuple; an ast.Attribute must be "
             "'add' on the ast.Name 'scene'; an ast.Call's func must be that attribute or the ast.Name "
             "'range'. If nothing was refused, return True.")


# -- 10.3: pass@k ------------------------------------------------------------------------------------
def _pass_at_k_cases(rng: np.random.Generator) -> list[Case]:
    """Small hand-checked cases, the edges (no correct sample, all correct, n − c < k), then random ones
    with n up to 200 as in the Codex paper."""
    fixed = [(1, 1, 1), (1, 0, 1), (5, 1, 1), (5, 1, 5), (4, 2, 2), (10, 0, 3), (10, 10, 3), (10, 8, 3),
             (200, 1, 100), (200, 37, 1), (200, 37, 10)]
    for _ in range(8):
        n = int(rng.integers(1, 201))
        fixed.append((n, int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))))
    return [Case(args, description=f"n={args[0]}, c={args[1]}, k={args[2]}") for args in fixed]


@exercise("10.3", pass_at_k=P.pass_at_k)
def check_pass_at_k(fn, seed: int | None = None) -> Verdict:
    """Exercise 10.3: the chance that at least one of k samples, drawn from n with c correct, is correct."""
    return check_function(
        "10.3", fn, P.pass_at_k, _pass_at_k_cases(_rng(seed)), atol=1e-9, rtol=1e-7,
        hint="the k samples fail together in C(n − c, k) of the C(n, k) ways to choose them, so pass@k = "
             "1 − C(n − c, k) / C(n, k) (math.comb), which is 1 when n − c < k. For large n the product "
             "1 − ∏ over i from n − c + 1 to n of (1 − k / i) avoids huge numbers.")
