"""Checkers for chapter 9, speech and audio: 9.1 the mel filter bank, 9.2 the word-level edit
distance (word error rate), 9.3 zero-shot classification of spoken words by text prompts (CLAP)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..clip import zero_shot_predict
from ..speech import mel_filter_bank
from ..wer import word_edit_distance
from .core import Case, Verdict, check_function
from .registry import exercise


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(int(np.random.default_rng(seed).integers(2**31)))


def _filter_bank_cases(rng: np.random.Generator) -> list[Case]:
    """Whisper's bank, one wholly below 1 kHz (the linear part of the scale), one wholly above (the
    logarithmic part), and three drawn at random (a new draw for each seed)."""
    settings = [(201, 80, 16000, 0.0, 8000.0), (257, 12, 8000, 0.0, 800.0), (513, 24, 22050, 1500.0, 9000.0)]
    for _ in range(3):
        rate = int(rng.choice([8000, 16000, 22050, 44100]))
        n_fft = int(rng.choice([512, 1024])) * (2 if rate > 16000 else 1)
        f_min = float(rng.choice([0.0, 20.0, 60.0]))
        f_max = float(rng.choice([rate / 2, rate / 2.5]))
        settings.append((n_fft // 2 + 1, int(rng.choice([20, 40, 64])), rate, f_min, f_max))
    return [Case(s, description=f"n_freqs={s[0]}, n_mels={s[1]}, sample_rate={s[2]}, f_min={s[3]:g}, f_max={s[4]:g}")
            for s in settings]


def _filter_bank_reference(n_freqs, n_mels, sample_rate, f_min, f_max):
    return mel_filter_bank(n_freqs, n_mels, sample_rate, f_min, f_max)


@exercise("9.1", mel_filter_bank=mel_filter_bank)
def check_mel_filter_bank(fn, seed: int | None = None) -> Verdict:
    """Exercise 9.1: the Slaney mel filter bank, (n_mels, n_freqs)."""
    return check_function(
        "9.1", fn, _filter_bank_reference, _filter_bank_cases(_rng(seed)), atol=1e-6, rtol=1e-4,
        hint="return a torch tensor (n_mels, n_freqs). The FFT bins are at torch.linspace(0, sample_rate / 2, "
             "n_freqs) Hz. Slaney's mel scale is linear below 1000 Hz (mel = 3 f / 200) and logarithmic above "
             "(mel = 15 + 27 ln(f / 1000) / ln 6.4). Take n_mels + 2 edges evenly spaced in mels from f_min to "
             "f_max and turn them back into Hz; filter m rises from edge m to edge m + 1 and falls to edge m + 2 "
             "(torch.minimum of the two slopes, clamped at 0), then is multiplied by 2 / (edge[m + 2] - edge[m]).")


# --- exercises 9.2 and 9.3 follow here ---------------------------------------------------------------------
# -- 9.2: the word-level edit distance ----------------------------------------------------------------
_SOME_WORDS = ("red", "green", "blue", "circle", "square", "the", "a", "at", "top", "left", "is", "there")


def _edit_distance_cases(rng: np.random.Generator) -> list[Case]:
    """Hand-checked pairs (one error of each kind, a shift, empty sides, WER above 1) and random pairs."""
    fixed = [("red circle top left", "red circle top left", "identical"),
             ("red circle top left", "blue circle top left", "one substitution"),
             ("red circle top left", "red circle left", "one deletion"),
             ("red circle top left", "red big circle top left", "one insertion"),
             ("a b c d", "b c d e", "a shift: one deletion and one insertion (not four substitutions)"),
             ("red circle", "the red circle on the left", "four insertions"),
             ("red circle top left", "", "an empty hypothesis"),
             ("", "red circle", "an empty reference")]
    cases = [Case((r.split(), h.split()), description=f"{why}: {r.split()} → {h.split()}") for r, h, why in fixed]
    for _ in range(4):
        ref = list(rng.choice(_SOME_WORDS, size=int(rng.integers(1, 9))))
        hyp = [w for w in ref if rng.random() > 0.2]                                   # deletions
        hyp = [str(rng.choice(_SOME_WORDS)) if rng.random() < 0.2 else w for w in hyp]  # substitutions
        for _ in range(int(rng.integers(0, 3))):                                       # insertions
            hyp.insert(int(rng.integers(len(hyp) + 1)), str(rng.choice(_SOME_WORDS)))
        cases.append(Case(([str(w) for w in ref], hyp), description=f"{[str(w) for w in ref]} → {hyp}"))
    return cases


def _edit_distance_reference(reference, hypothesis):
    return word_edit_distance(list(reference), list(hypothesis))


@exercise("9.2", word_edit_distance=word_edit_distance)
def check_word_edit_distance(fn, seed: int | None = None) -> Verdict:
    """Exercise 9.2: the Levenshtein distance between two lists of words (S + D + I of the best alignment)."""
    return check_function(
        "9.2", fn, _edit_distance_reference, _edit_distance_cases(_rng(seed)),
        hint="d is a (len(ref) + 1) × (len(hyp) + 1) table: d[i][0] = i, d[0][j] = j, and "
             "d[i][j] = min(d[i-1][j-1] + (ref[i-1] != hyp[j-1]), d[i-1][j] + 1, d[i][j-1] + 1) "
             "(substitute or match, delete, insert). Return d[len(ref)][len(hyp)] as an int.")


# -- 9.3: zero-shot classification of spoken words by text prompts ------------------------------------
def _zero_shot_cases(rng: np.random.Generator) -> list[Case]:
    """Random embeddings whose lengths differ, so that dot products and cosines disagree."""
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    cases = []
    for n, c, e in ((5, 3, 4), (12, 10, 16), (1, 6, 8), (40, 4, 32)):
        audio = torch.randn(n, e, generator=g) * (0.1 + 3 * torch.rand(n, 1, generator=g))
        prompts = torch.randn(c, e, generator=g) * (0.1 + 5 * torch.rand(c, 1, generator=g))
        cases.append(Case((audio, prompts), description=f"{n} clips, {c} prompts, embeddings of {e} numbers, "
                                                        "of different lengths"))
    # a long prompt vector wins every dot product, but not every cosine
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    prompts = torch.tensor([[10.0, 3.0], [0.0, 0.5]])
    cases.append(Case((audio, prompts), description="prompt 0 is 20 times longer than prompt 1"))
    return cases


def _zero_shot_reference(audio_embeddings, prompt_embeddings):
    return zero_shot_predict(F.normalize(audio_embeddings, dim=-1), F.normalize(prompt_embeddings, dim=-1))


@exercise("9.3", zero_shot_classify=_zero_shot_reference)
def check_zero_shot_classify(fn, seed: int | None = None) -> Verdict:
    """Exercise 9.3: the class of each clip = argmax over prompts of the cosine similarity, (N,) int64."""
    return check_function(
        "9.3", fn, _zero_shot_reference, _zero_shot_cases(_rng(seed)),
        hint="cosine similarity is the dot product of unit vectors: normalise both sides with "
             "F.normalize(x, dim=-1), take audio @ prompts.T (N, C), and return .argmax(dim=1). "
             "Without normalising, a long prompt vector wins for every clip.")
