"""Checkers for chapter 9, speech and audio: 9.1 the mel filter bank."""

from __future__ import annotations

import numpy as np

from ..speech import mel_filter_bank
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
