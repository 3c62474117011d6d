import numpy as np
import pytest
import torch

from vlmlib.exercises import Case, ExerciseNotDone, Verdict, check_function, compare
from vlmlib.exercises import ch00
from vlmlib.shapesworld import POSITIONS, position_name


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


def test_an_unstarted_exercise_stops_the_run_with_its_message(capsys):
    def stub(x):
        raise NotImplementedError("Exercise 9.9: double the tensor")
    with pytest.raises(ExerciseNotDone, match="Exercise 9.9: double the tensor"):
        check_function("9.9", stub, reference, CASES)
    assert "waiting for you" in capsys.readouterr().out
    verdict = check_function("9.9", stub, reference, CASES, stop_if_not_done=False, verbose=False)
    assert verdict.not_started and not verdict.passed


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
