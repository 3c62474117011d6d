"""Chapter 9's exercise checkers 9.2 (the word-level edit distance) and 9.3 (zero-shot classification by
text prompts): a right answer passes for any seed, a wrong one is told what is wrong, and broken student
code never crashes them."""

import pytest
import torch
import torch.nn.functional as F

from vlmlib.exercises import Verdict, lookup

SOLUTIONS = '''
def word_edit_distance(reference, hypothesis):
    d = [[i + j if i * j == 0 else 0 for j in range(len(hypothesis) + 1)] for i in range(len(reference) + 1)]
    for i in range(1, len(reference) + 1):
        for j in range(1, len(hypothesis) + 1):
            d[i][j] = min(d[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    return d[len(reference)][len(hypothesis)]


def zero_shot_classify(audio_embeddings, prompt_embeddings):
    a = F.normalize(audio_embeddings, dim=-1)
    t = F.normalize(prompt_embeddings, dim=-1)
    return (a @ t.T).argmax(dim=1)
'''


def _solutions() -> dict:
    namespace = {"torch": torch, "F": F}
    exec(SOLUTIONS, namespace)
    return namespace


def _positional_mismatches(ref, hyp):
    """Counts words that differ position by position, plus the difference in length (no alignment)."""
    return sum(r != h for r, h in zip(ref, hyp)) + abs(len(ref) - len(hyp))


def _no_insertions(ref, hyp):
    sol = _solutions()["word_edit_distance"]
    return sol(ref, hyp[:len(ref)])


WRONG = {
    "9.2": [_positional_mismatches,                                           # no alignment: a shift costs 4
            _no_insertions,                                                   # extra words ignored
            lambda r, h: abs(len(r) - len(h)),                                # only the length
            lambda r, h: _solutions()["word_edit_distance"](r, h) / max(len(r), 1),   # the rate, not the distance
            lambda r, h: str(_solutions()["word_edit_distance"](r, h))],      # a string
    "9.3": [lambda a, t: (a @ t.T).argmax(dim=1),                             # dot product, not cosine
            lambda a, t: (F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T).argmax(dim=0),   # wrong axis
            lambda a, t: (F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T).argmin(dim=1),   # least similar
            lambda a, t: F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T],                  # scores, not classes
}

MISTAKES = {
    "raises": lambda *a, **k: [][1],
    "returns None": lambda *a, **k: None,
    "returns NaN": lambda *a, **k: float("nan"),
    "returns a NaN tensor": lambda *a, **k: torch.full((3,), float("nan")),
    "exits": lambda *a, **k: exit(1),
    "runs into the stub": lambda *a, **k: (_ for _ in ()).throw(NotImplementedError("Exercise 9.x: write it")),
    "is not a function": 3,
}


@pytest.mark.parametrize("number", ["9.2", "9.3"])
def test_checkers_accept_the_solution_for_any_seed(number, capsys):
    ex = lookup(number)
    (name,) = ex.references
    solution = _solutions()[name]
    for seed in range(3):
        assert ex.check(solution, seed=seed), (number, seed)
        assert ex.check(ex.references[name], seed=seed), (number, seed)
    assert capsys.readouterr().out.count("correct!") == 6


@pytest.mark.parametrize("number", ["9.2", "9.3"])
def test_checkers_reject_wrong_answers_with_a_reason(number, capsys):
    ex = lookup(number)
    for k, wrong in enumerate(WRONG[number]):
        verdict = ex.check(wrong, seed=0)
        assert isinstance(verdict, Verdict) and not verdict.passed and not verdict.not_started, k
        assert verdict.message and verdict.hint and "please report" not in verdict.message, (k, verdict.message)
    assert "✗ Exercise" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
@pytest.mark.parametrize("number", ["9.2", "9.3"])
def test_checkers_survive_broken_student_code(number, mistake, capsys):
    verdict = lookup(number).check(MISTAKES[mistake], seed=0)
    assert isinstance(verdict, Verdict) and not verdict.passed and "please report" not in verdict.message
    assert verdict.not_started == (mistake == "runs into the stub")
    out = capsys.readouterr().out
    assert ("waiting for you" in out) if mistake == "runs into the stub" else ("✗ Exercise" in out)


def test_the_edit_distance_cases_hold_each_kind_of_error():
    from vlmlib.exercises.ch09 import _edit_distance_cases, _rng
    from vlmlib.wer import align

    counts = [align(*c.args) for c in _edit_distance_cases(_rng(0))]
    assert all(any(getattr(x, kind) > 0 for x in counts) for kind in ("substitutions", "deletions", "insertions"))
    assert any(x.reference_words == 0 for x in counts)                # an empty reference


def test_the_zero_shot_cases_tell_cosine_from_dot_product():
    from vlmlib.exercises.ch09 import _zero_shot_cases, _rng

    for case in _zero_shot_cases(_rng(0)):
        a, t = case.args
        assert a.shape[1] == t.shape[1]
    differ = [not torch.equal((a @ t.T).argmax(1), _solutions()["zero_shot_classify"](a, t))
              for a, t in (c.args for c in _zero_shot_cases(_rng(0)))]
    assert sum(differ) >= 3
