"""Chapter 9's exercise checkers (9.1 the mel filter bank): a right answer passes for any seed (in float64 or
float32), a wrong one is told what is wrong, and broken student code never crashes them."""

import math

import numpy as np
import pytest
import torch

from checker_contract import COMMON_MISTAKES, assert_accepts, assert_rejects, assert_survives

SOLUTIONS = '''
def mel_filter_bank(n_freqs, n_mels, sample_rate, f_min, f_max):
    def to_mel(f):
        f = torch.as_tensor(f, dtype=torch.float64)
        return torch.where(f < 1000, 3 * f / 200, 15 + 27 * torch.log(f / 1000) / math.log(6.4))

    def to_hz(m):
        return torch.where(m < 15, 200 * m / 3, 1000 * torch.exp((m - 15) * math.log(6.4) / 27))

    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)            # (F,)
    edges = to_hz(torch.linspace(float(to_mel(f_min)), float(to_mel(f_max)), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]         # (M, 1)
    rising = (bins - lower) / (centre - lower)                                          # (M, F)
    falling = (upper - bins) / (upper - centre)
    return torch.minimum(rising, falling).clamp(min=0) * 2 / (upper - lower)
'''


def _solution():
    namespace = {"torch": torch, "math": math}
    exec(SOLUTIONS, namespace)
    return namespace["mel_filter_bank"]


def _bank(n_freqs, n_mels, sample_rate, f_min, f_max, to_mel, to_hz, bins=None, norm=True, dtype=torch.float64):
    """A filter bank built like the solution, with one step changed."""
    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=dtype) if bins is None else bins.to(dtype)
    edges = to_hz(torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2, dtype=dtype))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = torch.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)).clamp(min=0)
    return bank * 2 / (upper - lower) if norm else bank


def _slaney_mel(f):
    return 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)


def _slaney_hz(m):
    return torch.where(m < 15, 200 * m / 3, 1000 * torch.exp((m - 15) * math.log(6.4) / 27))


def _htk_mel(f):
    return 2595 * math.log10(1 + f / 700)


def _htk_hz(m):
    return 700 * (10 ** (m / 2595) - 1)


WRONG = {
    "the HTK mel scale": lambda n, m, sr, lo, hi: _bank(n, m, sr, lo, hi, _htk_mel, _htk_hz),
    "no Slaney normalisation": lambda n, m, sr, lo, hi: _bank(n, m, sr, lo, hi, _slaney_mel, _slaney_hz, norm=False),
    "edges evenly spaced in Hz": lambda n, m, sr, lo, hi: _bank(n, m, sr, lo, hi, float, lambda x: x),
    "bins at k·sr/n_fft, one bin short of Nyquist": lambda n, m, sr, lo, hi: _bank(
        n, m, sr, lo, hi, _slaney_mel, _slaney_hz, bins=torch.arange(n) * sr / (2 * n)),
    "transposed (n_freqs, n_mels)": lambda *a: _solution()(*a).T,
    "a NumPy array": lambda *a: _solution()(*a).numpy(),
}

MISTAKES = {
    **COMMON_MISTAKES,
    "returns a NaN tensor": lambda n, m, *a: torch.full((m, n), float("nan")),
}


def test_chapter_9_checker_accepts_the_solution_for_any_seed(capsys):
    solution = _solution()
    assert_accepts("9.1", [solution, lambda *a: solution(*a).float()], capsys)   # float64 or float32


def test_the_solution_equals_transformers_filter_bank():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(_solution()(201, 80, 16000, 0.0, 8000.0).numpy(), ref.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mistake", WRONG, ids=list(WRONG))
def test_chapter_9_checker_rejects_wrong_answers_with_a_reason(mistake, capsys):
    assert_rejects("9.1", [WRONG[mistake]], capsys)


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_chapter_9_checker_survives_broken_student_code(mistake, capsys):
    assert_survives("9.1", mistake, MISTAKES[mistake], capsys)
