import ast
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tools import course
from vlmlib.exercises import EXERCISES, Case, Verdict, check_function, compare, fallback, lookup
from vlmlib.exercises import ch00
from vlmlib.shapesworld import COLOUR_NAMES, KINDS, POSITIONS, position_name


def reference(x):
    return x * 2


CASES = [Case((torch.arange(6.0).reshape(2, 3),)), Case((torch.ones(4, 1),))]


def run(fn, **kw):
    return check_function("9.9", fn, reference, CASES, hint="double it", verbose=False, **kw)


class Weird:
    def __repr__(self):
        raise RuntimeError("broken repr")

    def __eq__(self, other):
        raise RuntimeError("broken eq")


def forever(x):
    while True:
        pass


def exits(x):
    raise SystemExit(3)


@pytest.mark.parametrize("fn, words", [
    (lambda x: None, "is None. Did you forget a `return`"),
    (lambda x: 1 / 0, "raised ZeroDivisionError: division by zero"),
    (lambda x: x.T * 2, "should have shape (2, 3), but it has shape (3, 2)"),
    (lambda x: (x * 2).long(), "should hold floating-point values"),
    (lambda x: x * float("nan"), "contains NaN"),
    (lambda x: x * 3, "values differ (largest difference 5)"),
    (lambda x: (x * 2).numpy(), "should be a torch tensor"),
    (lambda x: Weird(), "should be a torch tensor, but it is <Weird object>"),
    (exits, "raised SystemExit"),
    (42, "Pass your function itself"),
])
def test_any_student_mistake_gives_a_friendly_verdict(fn, words):
    verdict = run(fn)
    assert isinstance(verdict, Verdict) and not verdict.passed
    assert words in verdict.message, verdict.message
    assert "Hint: double it" in str(verdict)


def test_a_function_that_never_returns_is_stopped():
    verdict = run(forever, time_limit=0.3)
    assert not verdict.passed and "ran for more than 0.3 s" in verdict.message


def test_student_code_that_catches_everything_is_still_stopped():
    def stubborn(x):
        while True:
            try:
                while True:
                    pass
            except Exception:
                pass
    assert "ran for more than" in run(stubborn, time_limit=0.3).message


def test_in_place_changes_do_not_corrupt_the_reference():
    def sneaky(x):
        x.mul_(2)
        return x
    assert run(sneaky).passed


def test_correct_code_passes_and_prints(capsys):
    verdict = check_function("9.9", reference, reference, CASES)
    assert verdict and "✓ Exercise 9.9: correct! All 2 tests pass." in capsys.readouterr().out


def test_an_unstarted_exercise_is_waiting_for_you_and_the_run_goes_on(capsys):
    def stub(x):
        raise NotImplementedError("Exercise 9.9: double the tensor")
    verdict = check_function("9.9", stub, reference, CASES)
    assert verdict.not_started and not verdict.passed
    out = capsys.readouterr().out
    assert "✎ Exercise 9.9 is waiting for you: double the tensor" in out and "Exercise 9.9: double" not in out


def test_compare_covers_the_common_result_types():
    assert compare(3.0, 3.0) is None and "should be 3" in compare(4.0, 3.0)
    assert "not a finite number" in compare(float("inf"), 1.0)
    assert "should be a number" in compare("3", 3)
    assert compare("red", "red") is None and "should be 'red'" in compare("blue", "red")
    assert "should be a list" in compare(1, [1]) and "should have 2 items" in compare([1], [1, 2])
    assert "item 1" in compare([1, 5], [1, 2])
    assert "2 of its 3 entries are wrong" in compare(np.array([1, 0, 0]), np.array([1, 2, 3]))
    assert compare(Weird(), 1) is not None


def test_chapter_0_checks_accept_the_solutions_and_reject_mistakes():
    def counts(c, k):
        out = np.zeros((6, 4), dtype=np.int64)
        np.add.at(out, (c, k), 1)
        return out

    def counts_with_fancy_indexing_bug(c, k):   # repeated pairs are counted once
        out = np.zeros((6, 4), dtype=np.int64)
        out[c, k] += 1
        return out

    assert ch00.check_colour_kind_counts(counts, seed=1)
    assert not ch00.check_colour_kind_counts(counts_with_fancy_indexing_bug)
    assert ch00.check_position_name(position_name, seed=2)
    assert not ch00.check_position_name(lambda x, y, s: POSITIONS[3 * int(3 * x / s) + int(3 * y / s)])  # x, y swapped
    assert not ch00.check_position_name(lambda x, y, s: POSITIONS[int(3 * x / s) + int(3 * y / s)])


def test_checks_use_fresh_random_inputs(monkeypatch):
    seen = []
    monkeypatch.setattr(ch00, "check_function", lambda *a, **k: seen.append(a[3]) or True)
    ch00.check_colour_kind_counts(None)
    ch00.check_colour_kind_counts(None)
    assert not np.array_equal(seen[0][-1].args[0], seen[1][-1].args[0])


# -- right answers in NumPy and torch scalar types (reliability review, requirement 3) --------------
def test_compare_accepts_numpy_and_torch_scalars_where_a_python_scalar_is_right():
    for right in (np.str_("top left"), np.array("top left")):
        assert compare(right, "top left") is None
    assert "should be 'top left', but it is 'top right'" in compare(np.str_("top right"), "top left")
    for right in (np.int64(3), np.int8(3), np.float32(3.0), np.array(3), torch.tensor(3), torch.tensor(3.0)):
        assert compare(right, 3) is None, right
    for right in (np.float32(0.25), np.float64(0.25), np.array(0.25), torch.tensor(0.25), torch.tensor(0.25).half()):
        assert compare(right, 0.25) is None, right
    assert compare(np.bool_(True), True) is None and compare(1, True) is not None
    assert compare(3, np.int64(3)) is None
    assert compare([np.int64(1), torch.tensor(2)], [1, 2]) is None
    assert ".item()" in compare(torch.tensor([0.25]), 0.25) and ".item()" in compare(np.array([3]), 3)
    assert "not a finite number" in compare(np.float32("nan"), 0.25)
    assert "far too large" in compare(10**400, 1.0)
    assert compare(torch.ones(2, dtype=torch.bfloat16), torch.ones(2)) is None


def _scalar_variants(result):
    """The reference's right answer in the other types a student may naturally return."""
    if isinstance(result, str):
        return [np.str_(result), np.array(result)]
    if isinstance(result, float):
        return [np.float64(result), np.float32(result), np.array(result), torch.tensor(result)]
    if isinstance(result, int) and not isinstance(result, bool):
        return [np.int64(result), np.array(result), torch.tensor(result)]
    if isinstance(result, list) and all(isinstance(v, int) for v in result):
        return [[np.int64(v) for v in result], np.array(result), torch.tensor(result), tuple(result)]
    return []


def test_every_checker_accepts_the_right_answer_in_numpy_types():
    covered = set()
    for number, ex in _exercises().items():
        reference = next(iter(ex.references.values()))
        for case in _cases(ex):
            result = reference(*case.args, **(case.kwargs or {}))
            for kind in range(len(_scalar_variants(result))):
                def typed(*args, _kind=kind, **kwargs):
                    return _scalar_variants(reference(*args, **kwargs))[_kind]
                verdict = ex.check(typed, seed=0)
                assert verdict.passed, (number, type(_scalar_variants(result)[kind]), verdict.message)
                covered.add(number)
            break
    assert {"0.2", "2.3", "4.1"} <= covered   # the checkers whose answer is a Python scalar or list


# -- every checker survives any student mistake -------------------------------------------------------
class Explodes:
    def __eq__(self, other):
        raise SystemExit("student's __eq__")

    def __float__(self):
        raise SystemExit("student's __float__")

    __hash__ = object.__hash__


MISTAKES = {
    "raises": lambda *a, **k: [][1],
    "returns None": lambda *a, **k: None,
    "returns text": lambda *a, **k: "nonsense",
    "returns NaN": lambda *a, **k: float("nan"),
    "returns a NaN tensor": lambda *a, **k: torch.full((2, 3), float("nan")),
    "returns a wrong-shaped array": lambda *a, **k: np.zeros((7, 1)),
    "returns an object that explodes": lambda *a, **k: Explodes(),
    "exits": lambda *a, **k: exit(1),
    "is not a function": 3,
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_every_checker_gives_a_friendly_verdict_for_any_mistake(mistake, capsys):
    for number, ex in _exercises().items():
        verdict = ex.check(MISTAKES[mistake], seed=0)
        assert isinstance(verdict, Verdict) and not verdict.passed and not verdict.not_started, number
        assert verdict.message and "please report" not in verdict.message, (number, verdict.message)
    assert "✗ Exercise" in capsys.readouterr().out


# -- the notebooks' exercises: registered, solvable, and skippable ------------------------------------
def _solution_cells() -> dict[str, str]:
    cells = {}
    for path in course.notebooks():
        for cell in course.read(path)["cells"]:
            if course.SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
                text = course.source(cell)
                number = course.EXERCISE_RE.search(text).group(1).split()[-1]
                assert number not in cells, f"exercise {number} appears twice"
                cells[number] = text
    return cells


SOLUTIONS = _solution_cells()


def _exercises():
    return {number: lookup(number) for number in SOLUTIONS}


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _cases(ex) -> list[Case]:
    """The cases the exercise's checker builds (captured, not run)."""
    module = inspect.getmodule(ex.check)
    seen = []
    original = module.check_function
    module.check_function = lambda exercise, student, reference, cases, **kw: seen.append(list(cases))
    try:
        ex.check(lambda: None, seed=0)
    finally:
        module.check_function = original
    return seen[0]


def _namespace() -> dict:
    """What the notebooks' earlier cells define that solution cells use."""
    from vlmlib import gridworld, motion

    return {"np": np, "torch": torch, "math": math, "F": F, "COLOUR_NAMES": COLOUR_NAMES, "KINDS": KINDS,
            "POSITIONS": POSITIONS, "M": motion, "G": gridworld}


def _defined(code: str) -> list[str]:
    return [node.name for node in ast.parse(code).body if isinstance(node, ast.FunctionDef)]


def test_the_notebooks_have_exercises_of_every_chapter():
    assert {n.split(".")[0] for n in SOLUTIONS} >= {"0", "1", "2", "3", "4", "5"}


@pytest.mark.parametrize("number", sorted(SOLUTIONS))
def test_each_exercise_has_vlmlibs_version_of_what_its_cell_defines_and_it_passes_the_check(number, capsys):
    ex = lookup(number)
    names = _defined(SOLUTIONS[number])
    assert names, f"exercise {number}'s cell defines no function; give it a value checker and values to register"
    assert sorted(ex.references) == sorted(names)
    solution = _namespace()
    exec(SOLUTIONS[number], solution)
    for name in names:
        theirs, ours = _params(solution[name]), inspect.signature(ex.references[name]).parameters
        assert list(ours)[:len(theirs)] == theirs and all(
            p.default is not p.empty for p in list(ours.values())[len(theirs):]), f"vlmlib's {name} takes other arguments"
        assert ex.check(ex.references[name], seed=1), f"vlmlib's {name} fails exercise {number}'s check"
    assert ex.check(solution[names[0]], seed=2), f"the notebook's solution of {number} fails its check"
    assert "correct!" in capsys.readouterr().out


@pytest.mark.parametrize("number", sorted(SOLUTIONS))
def test_a_skipped_exercise_waits_in_its_check_and_later_cells_get_vlmlibs_result(number, capsys):
    ex = lookup(number)
    name = _defined(SOLUTIONS[number])[0]
    student = {}
    exec(course.stub_for(SOLUTIONS[number]), student)        # the student copy's cell, left undone
    stub = student[name]
    case = _cases(ex)[0]

    verdict = ex.check(stub, seed=0)                          # the checker cell
    out = capsys.readouterr().out
    assert verdict.not_started and not verdict.passed
    assert f"✎ Exercise {number} is waiting for you" in out
    assert f"the cells below use vlmlib's {name}, so the chapter runs on" in out

    expected = ex.references[name](*case.args, **(case.kwargs or {}))
    assert compare(stub(*case.args, **(case.kwargs or {})), expected) is None   # a later cell
    assert capsys.readouterr().out == ""                       # the checker said it already

    student = {}
    exec(course.stub_for(SOLUTIONS[number]), student)         # run without its checker: one line, once
    for _ in range(2):
        assert compare(student[name](*case.args, **(case.kwargs or {})), expected) is None
    assert capsys.readouterr().out == f"Exercise {number} is not done yet: using vlmlib's {name} so the chapter runs on.\n"


def test_fallback_only_stands_in_for_an_exercise_not_done():
    ex = lookup("0.2")

    @fallback("0.2")
    def position_name(x, y, image_size):
        return "my answer"
    assert position_name(1, 1, 32) == "my answer"

    @fallback("0.2")
    def position_name(x, y, image_size):
        raise ValueError("a bug of mine")
    with pytest.raises(ValueError, match="a bug of mine"):   # a student's own bug is not hidden
        position_name(1, 1, 32)
    assert not ex.check(position_name, seed=0).not_started

    with pytest.raises(ValueError, match="defines position_name, not 'where'"):
        @fallback("0.2")
        def where(x, y, image_size):
            raise NotImplementedError
    with pytest.raises(ValueError, match="no exercise 42.1"):
        fallback("42.1")
    with pytest.raises(ValueError, match="a string like '5.1'"):
        fallback(5.1)


def test_a_value_exercise_falls_back_inside_its_with_block(monkeypatch, capsys):
    from vlmlib.exercises import exercise, registry

    @exercise("9.8", width=64)
    def check_width(value):
        return check_function("9.8", lambda: value, lambda: 64, [Case()], hint="64")

    namespace = {}
    stub = course.stub_for("# Exercise 9.8: set the width\nwidth = 64\n")
    assert "64" not in stub
    try:
        exec(stub, namespace)
        assert namespace["width"] == 64
        assert capsys.readouterr().out == "Exercise 9.8 is not done yet: using vlmlib's width so the chapter runs on.\n"
        verdict = check_width(namespace["width"])
        assert verdict.not_started and "the cells below use vlmlib's width" in str(verdict)
        exec(stub.replace("raise NotImplementedError", "width = 32  #"), namespace)   # the student's answer
        assert namespace["width"] == 32
        verdict = check_width(namespace["width"])
        assert not verdict.passed and not verdict.not_started and "should be 64" in verdict.message
    finally:
        EXERCISES.pop("9.8", None)
        registry._WAITING.discard("9.8")


# -- chapter 8's checkers (its notebook is not written yet) ----------------------------------------------
CHAPTER_8_SOLUTIONS = '''
def merge_visual_tokens(embeds, input_ids, features, image_token_id):
    out = embeds.clone()
    out[input_ids == image_token_id] = features.reshape(-1, features.shape[-1])
    return out


def trains(name, stage):
    return name.startswith("projector.") or (stage == 2 and name.startswith("language_model."))


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean()
'''

CHAPTER_8_WRONG = {
    "8.1": lambda e, i, f, t: e.masked_scatter((i == t)[..., None], f.transpose(0, 1).reshape(-1, f.shape[-1])),
    "8.2": lambda name, stage: not name.startswith("vision_tower.") if stage == 1 else True,
    "8.3": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))),
}


@pytest.mark.parametrize("number", ["8.1", "8.2", "8.3"])
def test_chapter_8_checkers_accept_the_solution_and_reject_mistakes(number, capsys):
    solution = _namespace()
    exec(CHAPTER_8_SOLUTIONS, solution)
    ex = lookup(number)
    (name,) = ex.references
    for seed in range(3):
        assert ex.check(solution[name], seed=seed), number
        assert ex.check(ex.references[name], seed=seed), number
    assert not ex.check(CHAPTER_8_WRONG[number], seed=0)
    for mistake, fn in MISTAKES.items():
        verdict = ex.check(fn, seed=0)
        assert isinstance(verdict, Verdict) and not verdict.passed and "please report" not in verdict.message, \
            (number, mistake, verdict.message)
    assert "correct!" in capsys.readouterr().out
