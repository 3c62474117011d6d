"""Chapter 9's exercise checkers 9.2 (the word-level edit distance) and 9.3 (zero-shot classification by
text prompts): a right answer passes for any seed, a wrong one is told what is wrong, and broken student
code never crashes them."""

import pytest
import torch
import torch.nn.functional as F

from checker_contract import COMMON_MISTAKES, assert_accepts, assert_rejects, assert_survives


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
    **COMMON_MISTAKES,
    "returns a NaN tensor": lambda *a, **k: torch.full((3,), float("nan")),
}


@pytest.mark.parametrize("number", ["9.2", "9.3"])
def test_checkers_accept_the_solution_for_any_seed(number, capsys):
    assert_accepts(number, _solutions(), capsys)


@pytest.mark.parametrize("number", ["9.2", "9.3"])
def test_checkers_reject_wrong_answers_with_a_reason(number, capsys):
    assert_rejects(number, WRONG[number], capsys)


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
@pytest.mark.parametrize("number", ["9.2", "9.3"])
def test_checkers_survive_broken_student_code(number, mistake, capsys):
    assert_survives(number, mistake, MISTAKES[mistake], capsys)


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
