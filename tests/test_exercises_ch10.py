"""Chapter 10's exercise checkers (10.1 a program for a line, 10.2 the allow-list, 10.3 pass@k): a right
answer passes for any seed, a wrong one is told what is wrong, and broken student code never crashes them."""

import ast
import math

import pytest

from checker_contract import COMMON_MISTAKES, assert_accepts, assert_rejects, assert_survives


SOLUTIONS = '''
def line_program(colour, kind, size, line, count):
    name, what = line.split()
    index = {"top": 0, "left": 0, "middle": 1, "bottom": 2, "right": 2}[name]
    cell = f"({index}, i)" if what == "row" else f"(i, {index})"
    return (f"for i in range({count}):\\n"
            f'    scene.add("{kind}", colour="{colour}", size="{size}", cell={cell})')


ALLOWED = (ast.Module, ast.Expr, ast.Call, ast.Attribute, ast.Name, ast.Constant, ast.keyword,
           ast.Tuple, ast.For, ast.Load, ast.Store)


def allowed(source):
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED):
            return False
        if isinstance(node, ast.Attribute) and not (
                node.attr == "add" and isinstance(node.value, ast.Name) and node.value.id == "scene"):
            return False
        if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Attribute)
                or (isinstance(node.func, ast.Name) and node.func.id == "range")):
            return False
    return True


def pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)
'''


def _solutions() -> dict:
    namespace = {"ast": ast, "math": math}
    exec(SOLUTIONS, namespace)
    return namespace


def _cells_program(colour, kind, size, line, count):
    """Right cells, but always three shapes: wrong for the lines of two."""
    from vlmlib.programs import line_program
    return line_program(colour, kind, size, line, 3)


WRONG = {
    "10.1": [lambda *a: 'scene.add("circle", colour="red", size="small", cell=(0, 2))',      # one shape
             lambda c, k, s, l, n: _solutions()["line_program"](c, k, s, l, n).replace("(i, ", "(1, ").replace(", i)", ", 1)"),
             _cells_program,                                                                 # wrong count
             lambda c, k, s, l, n: _solutions()["line_program"](c, k, "small" if s == "large" else "large", l, n),
             lambda *a: "import os"],
    "10.2": [lambda s: True, lambda s: False, lambda s: "import" not in s, lambda s: "yes"],
    "10.3": [lambda n, c, k: 1 - (1 - c / n) ** k,                                  # with replacement: biased
             lambda n, c, k: c / n,                                                 # pass@1 for every k
             lambda n, c, k: math.comb(n - c, k) / math.comb(n, k)],                # the complement
}

MISTAKES = {
    **COMMON_MISTAKES,
    "returns bytes": lambda *a, **k: b"scene.add('circle')",
}


@pytest.mark.parametrize("number", ["10.1", "10.2", "10.3"])
def test_chapter_10_checkers_accept_the_solution_for_any_seed(number, capsys):
    assert_accepts(number, _solutions(), capsys)


@pytest.mark.parametrize("number", ["10.1", "10.2", "10.3"])
def test_chapter_10_checkers_reject_wrong_answers_with_a_reason(number, capsys):
    assert_rejects(number, WRONG[number], capsys)


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
@pytest.mark.parametrize("number", ["10.1", "10.2", "10.3"])
def test_chapter_10_checkers_survive_broken_student_code(number, mistake, capsys):
    assert_survives(number, mistake, MISTAKES[mistake], capsys)


def test_the_allow_list_cases_are_balanced_and_agree_with_vlmlib():
    """Both verdicts occur, and the exercise's programs are judged by vlmlib exactly as their notes say."""
    from vlmlib.exercises.ch10 import _PROGRAMS
    from vlmlib.programs import allowed
    verdicts = [allowed(source)[0] for source, _ in _PROGRAMS]
    assert 3 <= sum(verdicts) <= len(verdicts) - 10
    assert all(v == (i < 4) for i, v in enumerate(verdicts))      # the first four are the benign ones
