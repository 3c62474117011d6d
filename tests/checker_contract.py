"""What every exercise checker promises, shared by the chapters' checker tests (test_exercises_ch*.py).

A right answer passes for any seed, and so does the checker's own reference; a wrong answer fails
with a message and a hint (not "please report", which is the checker's own bug); broken student
code (it raises, returns None or NaN, exits, is still the stub, is not a function) fails politely,
and the stub counts as "not started". Each chapter adds its own wrong answers and its own broken
outputs (a NaN tensor of its shape, ...) to :data:`COMMON_MISTAKES`.
"""

from vlmlib.exercises import Verdict, lookup

#: Broken student code that any checker must survive; chapters add mistakes of their own shapes.
COMMON_MISTAKES = {
    "raises": lambda *a, **k: [][1],
    "returns None": lambda *a, **k: None,
    "returns NaN": lambda *a, **k: float("nan"),
    "exits": lambda *a, **k: exit(1),
    "runs into the stub": lambda *a, **k: (_ for _ in ()).throw(NotImplementedError("Exercise: write it")),
    "is not a function": 3,
}


def assert_accepts(number: str, solutions, capsys, seeds=range(3)) -> None:
    """The notebook's solution and the checker's reference pass for every seed. ``solutions`` is the
    notebook's solutions by name (the exercise's is taken), or a list of right answers to try."""
    ex = lookup(number)
    (name,) = ex.references
    solutions = [solutions[name]] if isinstance(solutions, dict) else list(solutions)
    for seed in seeds:
        for solution in [*solutions, ex.references[name]]:
            assert ex.check(solution, seed=seed), (number, seed)
    assert capsys.readouterr().out.count("correct!") == len(seeds) * (len(solutions) + 1)


def assert_rejects(number: str, wrong_answers, capsys) -> None:
    """Each wrong answer fails, is not taken for the untouched stub, and gets a message and a hint."""
    for k, wrong in enumerate(wrong_answers):
        verdict = lookup(number).check(wrong, seed=0)
        assert isinstance(verdict, Verdict) and not verdict.passed and not verdict.not_started, (number, k)
        assert verdict.message and verdict.hint and "please report" not in verdict.message, (number, k, verdict.message)
    assert f"✗ Exercise {number}" in capsys.readouterr().out


def assert_survives(number: str, mistake: str, student, capsys) -> None:
    """Broken student code fails politely; the stub is "waiting for you", anything else a ✗ verdict."""
    verdict = lookup(number).check(student, seed=0)
    assert isinstance(verdict, Verdict) and not verdict.passed and "please report" not in verdict.message
    assert verdict.not_started == (mistake == "runs into the stub")
    out = capsys.readouterr().out
    assert ("waiting for you" in out) if mistake == "runs into the stub" else (f"✗ Exercise {number}" in out)
