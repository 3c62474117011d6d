"""Word error rate (chapter 9) against a table of cases counted by hand."""

import pytest

from vlmlib.wer import WordErrors, align, word_edit_distance, word_error_rate

# (reference, hypothesis, (hits, substitutions, deletions, insertions)), each counted by hand.
TABLE = [
    ("red circle top left", "red circle top left", (4, 0, 0, 0)),
    ("red circle top left", "blue circle top left", (3, 1, 0, 0)),
    ("red circle top left", "red circle left", (3, 0, 1, 0)),           # "top" missing
    ("red circle top left", "red big circle top left", (4, 0, 0, 1)),   # "big" added
    ("red circle top left", "", (0, 0, 4, 0)),
    ("red circle", "the red circle on the left", (2, 0, 0, 4)),         # WER 2: insertions are unbounded
    ("a b c d", "b c d e", (3, 0, 1, 1)),                               # a shift: one deletion, one insertion
    ("a b", "b a", (1, 0, 1, 1)),                                       # or two substitutions: both cost 2
    ("what colour is the square", "what color is square", (3, 1, 1, 0)),
    ("Red circle", "red circle", (1, 1, 0, 0)),                         # exact comparison: case counts
]


@pytest.mark.parametrize("ref, hyp, counts", TABLE)
def test_alignment_counts_match_the_hand_counted_table(ref, hyp, counts):
    result = align(ref, hyp)
    hits, subs, dels, ins = counts
    assert result.errors == subs + dels + ins == word_edit_distance(ref, hyp)
    assert result.reference_words == len(ref.split())
    if ref != "a b":                          # the one case with two equally cheap alignments
        assert result == WordErrors(*counts)


def test_corpus_wer_sums_counts_before_dividing():
    refs = ["red circle top left", "red circle"]
    hyps = ["blue circle top left", "the red circle on the left"]
    assert word_error_rate(refs, hyps) == pytest.approx((1 + 4) / (4 + 2))    # not the mean (0.25 + 2) / 2
    assert word_error_rate(refs, refs) == 0.0
    assert word_error_rate(["a b c"], ["x y"]) == pytest.approx(1.0)        # 2 substitutions + 1 deletion
    assert word_edit_distance(["red", "circle"], ["red"]) == 1             # lists of words work too


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match="references must be a list of sentences"):
        word_error_rate("red circle", "red circle")
    with pytest.raises(ValueError, match="one transcript per reference"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="N = 0"):
        word_error_rate([""], ["red"])
    with pytest.raises(TypeError, match="hypotheses must hold strings"):
        word_error_rate(["a"], [3])
    with pytest.raises(ValueError, match="without spaces"):
        word_edit_distance(["red circle"], ["red"])
