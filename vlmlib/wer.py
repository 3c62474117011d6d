"""Word error rate, the metric of speech recognition (chapter 9).

A hypothesis is aligned with its reference word by word by the Levenshtein edit distance: the fewest
substitutions S, deletions D (a reference word missing) and insertions I (an extra word) that turn
the reference into the hypothesis. Over a corpus,

    WER = (S + D + I) / N,     N = the number of reference words,

summed over all utterances before dividing (a corpus WER, as jiwer computes it, not the mean of
per-sentence WERs). Insertions are unbounded, so WER can exceed 1. Words are split on white space
and compared exactly: normalise case and punctuation first if they should not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import checks


@dataclass(frozen=True)
class WordErrors:
    """The counts of one alignment (or a corpus of them): hits H, substitutions S, deletions D, insertions I."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def reference_words(self) -> int:
        """N = H + S + D."""
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        """S + D + I, the edit distance."""
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: "WordErrors") -> "WordErrors":
        return WordErrors(self.hits + other.hits, self.substitutions + other.substitutions,
                          self.deletions + other.deletions, self.insertions + other.insertions)


def _words(value, name: str) -> list[str]:
    if isinstance(value, (str, np.str_)):
        return str(value).split()
    words = checks.text_list(value, name)
    bad = [w for w in words if not w or len(w.split()) != 1]
    if bad:
        raise ValueError(f"{name} must be a string or a list of words without spaces, got {bad[:3]!r} in it")
    return words


def word_edit_distance(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> int:
    """The Levenshtein distance between two word sequences: the fewest substitutions, deletions and
    insertions that turn ``reference`` into ``hypothesis``. Each is a string (split on white space) or
    a list of words."""
    return align(reference, hypothesis).errors


def align(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> WordErrors:
    """The counts (H, S, D, I) of a minimum-cost alignment of ``hypothesis`` to ``reference``.

    Dynamic programming: d[i][j] is the distance between the first i reference words and the first j
    hypothesis words; d[i][0] = i (delete them all), d[0][j] = j (insert them all), and
    d[i][j] = min(d[i-1][j-1] + [r_i ≠ h_j], d[i-1][j] + 1, d[i][j-1] + 1). Following the choices
    back from d[N][M] gives the counts. Where several alignments cost the same, a match or
    substitution is preferred, then a deletion: the total S + D + I is the same for all of them.
    """
    ref, hyp = _words(reference, "reference"), _words(hypothesis, "hypothesis")
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), dtype=np.int64)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1, j] + 1, d[i, j - 1] + 1)
    hits = subs = dels = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            hits, subs = hits + (ref[i - 1] == hyp[j - 1]), subs + (ref[i - 1] != hyp[j - 1])
            i, j = i - 1, j - 1
        elif i > 0 and d[i, j] == d[i - 1, j] + 1:
            dels, i = dels + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return WordErrors(hits, subs, dels, ins)


def corpus_errors(references: Sequence[str], hypotheses: Sequence[str]) -> WordErrors:
    """The counts (H, S, D, I) summed over a corpus of (reference, hypothesis) pairs."""
    for name, value in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(value, (str, np.str_)):
            raise TypeError(f"{name} must be a list of sentences, got one string {value!r}; wrap it in a list")
    references = checks.text_list(references, "references")
    hypotheses = checks.text_list(hypotheses, "hypotheses")
    if len(hypotheses) != len(references):
        raise ValueError(f"hypotheses must have one transcript per reference ({len(references)}), got {len(hypotheses)}")
    total = WordErrors(0, 0, 0, 0)
    for r, h in zip(references, hypotheses):
        total = total + align(r, h)
    return total


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate (S + D + I) / N of transcripts ``hypotheses`` against ``references``.

    Both are lists of sentences of the same length; counts are summed over the corpus before
    dividing. The references must hold at least one word (N > 0).
    """
    total = corpus_errors(references, hypotheses)
    if total.reference_words == 0:
        raise ValueError("references hold no words (N = 0): the word error rate (S + D + I) / N is undefined")
    return total.errors / total.reference_words
