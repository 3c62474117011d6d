"""Speech for chapter 9: spoken ShapesWorld, and sound as an image (the log-mel spectrogram).

Introduced in notebook 09. Utterances of the course's language ("red", "a small red circle at the
top left", "what colour is the square?") are synthesised offline with eSpeak NG, a formant
synthesiser (Debian's ``espeak-ng`` package: ``make audio`` installs it; in Colab the first cell runs
``apt-get install espeak-ng``). Each voice is English with one of eSpeak NG's voice variants; some
voices are held out of training (:data:`HELD_OUT_VOICES`) so that accuracy on unseen voices can be
measured. Synthesis is cached on disk, so a second run reads the waves back.

- :func:`synthesize` speaks one text: a float32 wave at 16 kHz (Whisper's rate) in [-1, 1];
- :func:`spoken_words` (classification: the six colours and four kinds) and :func:`spoken_sentences`
  (speech recognition: captions, relations and questions) draw a :class:`SpokenData` for a split:
  "train", "test" (the training voices at other speeds and pitches) or "held_out_voices";
- :func:`play` gives an audio player, :func:`show_spectrogram` a picture.

:func:`log_mel` computes Whisper's input features from their definition (STFT with a periodic Hann
window, power spectrum, Slaney mel filter bank, log10, a floor 8 below the maximum, rescaling); the
tests show it equal to ``transformers``' ``WhisperFeatureExtractor``. :func:`mel_filter_bank` is
exercise 9.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import wave as _wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .cache import cache_dir
from .shapesworld import COLOUR_NAMES, KINDS, POSITIONS, SIZES, Shape, questions, relation_caption, varied_caption

# --- the features: Whisper's log-mel spectrogram -------------------------------------------------
SAMPLE_RATE = 16_000     # Hz, Whisper's rate
N_FFT = 400              # 25 ms windows
HOP_LENGTH = 160         # 10 ms between frames
N_MELS = 80              # mel bins (Whisper large-v3 uses 128)
CHUNK_FRAMES = 3000      # Whisper pads or cuts every clip to 30 s = 3000 frames

# --- the data: spoken ShapesWorld ----------------------------------------------------------------
ESPEAK = "espeak-ng"
#: Bumped whenever synthesis or its post-processing (trimming, resampling) changes: old cache is stale.
SPEECH_VERSION = 1
#: The voices that training and the "test" split use: English with eSpeak NG's voice variants (all
#: of them in eSpeak NG 1.50, Ubuntu 22.04's and Colab's version, and in 1.51, Debian 12's).
VOICES: tuple[str, ...] = (
    "en+m1", "en+m2", "en+m3", "en+m5", "en+m6", "en+m7", "en+m8",
    "en+f1", "en+f2", "en+f4", "en+f5",
    "en+klatt", "en+klatt2", "en+klatt4", "en+croak",
)
#: Voices never heard in training: the "held_out_voices" split (one male, one female, one Klatt voice).
HELD_OUT_VOICES: tuple[str, ...] = ("en+m4", "en+f3", "en+klatt3")
#: Speaking rates (words per minute) and pitches (0-99) of the training split and of the held-out voices.
SPEEDS: tuple[int, ...] = (140, 170, 200)
PITCHES: tuple[int, ...] = (30, 50, 70)
#: The "test" split: the training voices at speeds and pitches between those of training.
TEST_SPEEDS: tuple[int, ...] = (155, 185)
TEST_PITCHES: tuple[int, ...] = (40, 60)
#: The spoken words of the classification task: the six colours and the four kinds.
WORDS: tuple[str, ...] = COLOUR_NAMES + KINDS
#: Four direction commands, for a larger command set (``spoken_words(words=WORDS + DIRECTIONS)``).
DIRECTIONS: tuple[str, ...] = ("up", "down", "left", "right")
SPLITS: tuple[str, ...] = ("train", "test", "held_out_voices")
_SPLIT_STREAM = {"train": 1, "test": 2, "held_out_voices": 3}
_TRIM_MARGIN = 0.05      # seconds of silence kept before and after the speech
_SNR_DB = (20.0, 40.0)   # light additive Gaussian noise: signal-to-noise ratio drawn in this range
_GAIN = (0.3, 0.9)       # peak amplitude drawn in this range


class EspeakMissing(RuntimeError):
    """eSpeak NG is not installed."""


def _install_advice() -> str:
    return ("eSpeak NG is needed to synthesise speech, and the program 'espeak-ng' was not found. "
            "Install it with `make audio` (from the repository), or `sudo apt-get install espeak-ng` "
            "(Debian/Ubuntu); in Colab run `!apt-get -qq install espeak-ng` in a cell.")


@lru_cache(maxsize=None)
def espeak_version() -> str:
    """The installed eSpeak NG's version ("1.51"); raises :class:`EspeakMissing` if it is not installed."""
    if shutil.which(ESPEAK) is None:
        raise EspeakMissing(_install_advice())
    out = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"text-to-speech:\s*(\S+)", out)
    return found.group(1) if found else out.strip()


@lru_cache(maxsize=None)
def voice_variants() -> tuple[str, ...]:
    """The names of eSpeak NG's voice variants ("m3", "f2", "klatt", ...): ``"en+" + name`` is a voice."""
    espeak_version()
    out = subprocess.run([ESPEAK, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return tuple(m.group(1) for m in re.finditer(r"!v/(\S+)", out))


def _check_voice(voice) -> str:
    if not isinstance(voice, str):
        raise TypeError(f"voice must be a string such as 'en+m3', got {checks._given(voice)}")
    language, _, variant = voice.partition("+")
    if voice == "en" or (language == "en" and variant in voice_variants()):
        return voice
    if voice in VOICES or voice in HELD_OUT_VOICES:       # espeak-ng would silently use its default voice
        raise RuntimeError(f"eSpeak NG {espeak_version()} has no voice variant {variant!r}; "
                           "chapter 9 needs eSpeak NG 1.50 or later")
    raise ValueError(f"voice must be 'en' or 'en+<variant>' with one of eSpeak NG's variants "
                     f"({', '.join(voice_variants()[:12])}, ...; `espeak-ng --voices=variant` lists them), "
                     f"got {voice!r}")


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono samples and the rate of a WAV file in memory (espeak-ng's --stdout header gives no length)."""
    with _wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise RuntimeError(f"espeak-ng wrote an unexpected WAV ({w.getnchannels()} channels, "
                               f"{8 * w.getsampwidth()} bits)")
        rate = w.getframerate()
        frames = w.readframes(w.getnframes())   # reads to the end of the data
    return np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2"), rate


def resample(wave: np.ndarray, rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` resampled from ``rate`` to ``new_rate`` Hz (polyphase filtering, scipy's resample_poly)."""
    from scipy.signal import resample_poly

    rate, new_rate = checks.integer(rate, "rate", minimum=1), checks.integer(new_rate, "new_rate", minimum=1)
    if rate == new_rate:
        return np.asarray(wave, dtype=np.float64)
    g = math.gcd(rate, new_rate)
    return resample_poly(np.asarray(wave, dtype=np.float64), new_rate // g, rate // g)


def _trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut the silence before and after the speech, keeping :data:`_TRIM_MARGIN` seconds of it."""
    loud = np.nonzero(np.abs(x) > threshold * np.abs(x).max())[0] if x.size and np.abs(x).max() > 0 else []
    if len(loud) == 0:
        return x
    margin = int(_TRIM_MARGIN * SAMPLE_RATE)
    return x[max(0, loud[0] - margin): loud[-1] + margin + 1]


def _cache_path(text: str, voice: str, speed: int, pitch: int):
    key = json.dumps([SPEECH_VERSION, espeak_version(), text, voice, speed, pitch])
    return cache_dir() / "speech" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


def _synthesize_int16(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """The trimmed utterance at 16 kHz as int16 samples, from the cache or from espeak-ng."""
    path = _cache_path(text, voice, speed, pitch)
    try:
        return np.load(path)
    except (FileNotFoundError, ValueError, OSError):
        pass
    try:
        run = subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"],
                             input=text.encode(), capture_output=True, check=True)
    except FileNotFoundError:
        raise EspeakMissing(_install_advice()) from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"espeak-ng failed on {text!r} with voice {voice!r}: "
                           f"{exc.stderr.decode().strip()}") from None
    raw, rate = _read_wav(run.stdout)
    x = _trim(resample(raw.astype(np.float64), rate, SAMPLE_RATE))
    x = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, x)
        os.replace(tmp, path)     # atomic: a reader sees the whole file or none
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return x


def synthesize(text: str, voice: str = "en+m3", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` with eSpeak NG: a float32 mono wave at 16 kHz in [-1, 1], silence trimmed.

    ``voice`` is ``"en+<variant>"`` (:data:`VOICES`, :data:`HELD_OUT_VOICES` or any variant that
    ``espeak-ng --voices=variant`` lists), ``speed`` the rate in words per minute (80-450) and
    ``pitch`` 0-99. Cached on disk (``cache_dir()/speech``), keyed by all four and eSpeak NG's version.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {checks._given(text)}")
    voice = _check_voice(voice)
    speed = checks.integer(speed, "speed", minimum=80, maximum=450)
    pitch = checks.integer(pitch, "pitch", minimum=0, maximum=99)
    return _synthesize_int16(text.strip(), voice, speed, pitch).astype(np.float32) / 32768.0


# --- spoken ShapesWorld --------------------------------------------------------------------------

@dataclass
class SpokenData:
    """A sample of spoken ShapesWorld: waves with what was said, by whom, how fast and how high."""

    waves: list[np.ndarray]           # one float32 wave per utterance, 16 kHz, lengths differ
    texts: list[str]                  # the words said (lower case, no punctuation)
    labels: np.ndarray                # (N,) int64: the index in `classes` (words), -1 for sentences
    voices: list[str]
    speeds: np.ndarray                # (N,) words per minute
    pitches: np.ndarray               # (N,) 0-99
    split: str
    classes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.waves)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64: each wave's number of samples."""
        return np.array([len(w) for w in self.waves], dtype=np.int64)

    @property
    def seconds(self) -> float:
        """The total duration in seconds."""
        return float(self.lengths.sum()) / SAMPLE_RATE

    def padded(self, length: int | None = None) -> np.ndarray:
        """(N, T) float32: the waves zero-padded (or cut) to ``length`` samples (default: the longest)."""
        length = int(self.lengths.max()) if length is None else checks.integer(length, "length", minimum=1)
        out = np.zeros((len(self.waves), length), dtype=np.float32)
        for i, w in enumerate(self.waves):
            out[i, : min(len(w), length)] = w[:length]
        return out


def _grid(split: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    if split == "train":
        return VOICES, SPEEDS, PITCHES
    if split == "test":
        return VOICES, TEST_SPEEDS, TEST_PITCHES
    return HELD_OUT_VOICES, SPEEDS, PITCHES


def _words_only(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


def _random_shape(rng: np.random.Generator, position: str | None = None) -> Shape:
    pick = lambda options: options[int(rng.integers(len(options)))]
    return Shape(pick(COLOUR_NAMES), pick(KINDS), pick(SIZES), position or pick(POSITIONS), 0.0, 0.0, 1.0)


def random_sentence(rng: np.random.Generator) -> str:
    """One sentence of ShapesWorld's language, as it is spoken: a caption (half of them), a relation
    between two shapes (one in ten) or a question about a scene of one or two shapes ("?" kept, so
    that eSpeak NG says it as a question)."""
    rng = _check_rng(rng)
    r = rng.random()
    if r < 0.5:
        return varied_caption([_random_shape(rng)], rng)
    if r < 0.6:
        a, b = rng.choice(len(POSITIONS), size=2, replace=False)
        return relation_caption([_random_shape(rng, POSITIONS[a]), _random_shape(rng, POSITIONS[b])], rng)
    scene = [_random_shape(rng)]
    if rng.random() < 0.5:
        scene.append(_random_shape(rng, POSITIONS[(POSITIONS.index(scene[0].position) + 1 + int(rng.integers(8))) % 9]))
    qa = questions(scene, rng)
    return qa[int(rng.integers(len(qa)))][0]


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {checks._given(rng)}")
    return rng


def _speak_all(jobs: list[tuple[str, str, int, int]], workers: int | None) -> list[np.ndarray]:
    """Synthesise every (text, voice, speed, pitch), in parallel espeak-ng processes."""
    espeak_version()            # a clear error before starting threads
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: _synthesize_int16(*job), jobs))


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random loudness, and light Gaussian noise at a random signal-to-noise ratio."""
    x = x.astype(np.float64)
    peak = np.abs(x).max()
    if peak > 0:
        x = x / peak * rng.uniform(*_GAIN)
    rms = np.sqrt(np.mean(x**2)) if x.size else 0.0
    x = x + rng.standard_normal(x.shape) * rms * 10 ** (-rng.uniform(*_SNR_DB) / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _spoken(n: int, split: str, seed: int, texts_of, classes, workers) -> SpokenData:
    n = checks.integer(n, "n", minimum=1)
    split = checks.choice(split, "split", SPLITS)
    seed = checks.integer(seed, "seed", minimum=0)
    voices, speeds, pitches = _grid(split)
    for voice in voices:
        _check_voice(voice)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], 9])
    spoken, labels = texts_of(rng, n)
    who = [voices[i] for i in rng.integers(len(voices), size=n)]
    rate = np.array(speeds)[rng.integers(len(speeds), size=n)]
    high = np.array(pitches)[rng.integers(len(pitches), size=n)]
    raw = _speak_all(list(zip(spoken, who, rate.tolist(), high.tolist())), workers)
    waves = [_augment(x, rng) for x in raw]
    return SpokenData(waves, [_words_only(t) for t in spoken], np.asarray(labels, dtype=np.int64), who,
                      rate.astype(np.int64), high.astype(np.int64), split, tuple(classes))


def spoken_words(n: int, split: str = "train", seed: int = 0, words: Sequence[str] = WORDS,
                 workers: int | None = None) -> SpokenData:
    """``n`` single spoken words for classification (``labels`` index ``words``; balanced classes).

    ``split``: "train" (the :data:`VOICES` at :data:`SPEEDS` and :data:`PITCHES`), "test" (the same
    voices at the in-between :data:`TEST_SPEEDS` and :data:`TEST_PITCHES`) or "held_out_voices"
    (:data:`HELD_OUT_VOICES`, never in training, at the training speeds and pitches).
    """
    words = tuple(checks.text_list(words, "words"))
    if not words or any(not w.strip() for w in words) or len(set(words)) != len(words):
        raise ValueError(f"words must be distinct non-empty words, got {list(words)}")

    def texts_of(rng, n):
        labels = rng.permutation(np.arange(n) % len(words))
        return [words[i] for i in labels], labels

    return _spoken(n, split, seed, texts_of, words, workers)


def spoken_sentences(n: int, split: str = "train", seed: int = 0, workers: int | None = None) -> SpokenData:
    """``n`` spoken sentences of ShapesWorld (:func:`random_sentence`) for speech recognition;
    ``texts`` are the words said. ``split`` as in :func:`spoken_words`."""

    def texts_of(rng, n):
        return [random_sentence(rng) for _ in range(n)], np.full(n, -1)

    return _spoken(n, split, seed, texts_of, (), workers)


# --- sound as an image ---------------------------------------------------------------------------

def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4)."""
    f = torch.as_tensor(f, dtype=torch.float64)
    log_part = 15.0 + torch.log(f.clamp(min=1e-10) / 1000.0) * (27.0 / math.log(6.4))
    return torch.where(f >= 1000.0, log_part, 3.0 * f / 200.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    return torch.where(m >= 15.0, 1000.0 * torch.exp((m - 15.0) * (math.log(6.4) / 27.0)), 200.0 * m / 3.0)


def mel_filter_bank(n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
                    f_min: float = 0.0, f_max: float = SAMPLE_RATE / 2) -> torch.Tensor:
    """(n_mels, n_freqs) float64: triangular filters evenly spaced on Slaney's mel scale, Slaney-normalised.

    Filter m rises from edge ``f[m]`` to a peak at ``f[m+1]`` and falls to ``f[m+2]``, where the
    ``n_mels + 2`` edges are evenly spaced in mels from ``f_min`` to ``f_max``; each is scaled by
    ``2 / (f[m+2] - f[m])`` (equal area). The FFT bins lie at ``linspace(0, sample_rate / 2, n_freqs)``.
    Exercise 9.1.
    """
    n_freqs = checks.integer(n_freqs, "n_freqs", minimum=2)
    n_mels = checks.integer(n_mels, "n_mels", minimum=1)
    sample_rate = checks.integer(sample_rate, "sample_rate", minimum=1)
    f_min = checks.number(f_min, "f_min", low=0.0)
    f_max = checks.number(f_max, "f_max", low=f_min, high=sample_rate / 2)
    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)                       # (F,)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                     dtype=torch.float64))                                         # (M+2,)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]                    # (M, 1)
    rising = (bins - lower) / (centre - lower)                                                     # (M, F)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0) * (2.0 / (upper - lower))


def _as_batch(waves, dtype: torch.dtype) -> tuple[list[torch.Tensor], bool]:
    """The waves as a list of 1-D tensors, and whether one wave (not a batch) was given."""
    if isinstance(waves, SpokenData):
        waves = waves.waves
    if isinstance(waves, (np.ndarray, torch.Tensor)):
        t = torch.as_tensor(waves)
        if t.ndim not in (1, 2):
            raise ValueError(f"waves must be one wave (T,) or a batch (N, T), got shape {tuple(t.shape)}")
        single = t.ndim == 1
        items = [t] if single else list(t)
    elif isinstance(waves, (list, tuple)) and waves:
        single, items = False, [torch.as_tensor(np.asarray(w)) if not isinstance(w, torch.Tensor) else w for w in waves]
    else:
        raise TypeError(f"waves must be an array or tensor (T,) or (N, T), or a non-empty list of 1-D waves, "
                        f"got {checks._given(waves)}")
    out = []
    for i, w in enumerate(items):
        if w.ndim != 1 or len(w) == 0:
            raise ValueError(f"wave {i} must be a non-empty 1-D array of samples, got {checks._given(w)}")
        if not w.is_floating_point():
            raise TypeError(f"wave {i} must hold float samples in [-1, 1], got {checks._given(w)}"
                            + ("; divide 16-bit samples by 32768" if w.dtype == torch.int16 else ""))
        w = w.detach().cpu().to(dtype)
        if not torch.isfinite(w).all():
            raise ValueError(f"wave {i} holds NaN or infinite values")
        out.append(w)
    return out, single


def log_mel(waves, n_mels: int = N_MELS, max_frames: int | None = CHUNK_FRAMES,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Whisper's log-mel spectrogram of 16 kHz ``waves``: (N, n_mels, frames), or (n_mels, frames) for one wave.

    Each wave is zero-padded or cut to ``max_frames * 160`` samples (Whisper: 3000 frames = 30 s;
    ``None``: the longest wave, rounded up to whole frames). Then, as ``WhisperFeatureExtractor``:

    1. frames of 400 samples every 160 (the signal reflected by 200 at both ends), times a periodic
       Hann window ``w[n] = 0.5 - 0.5 cos(2π n / 400)``;
    2. power spectrum ``|rfft|²`` (201 bins), the last frame dropped;
    3. the mel spectrogram: :func:`mel_filter_bank` (0-8000 Hz) times the power spectrum;
    4. ``log10(max(mel, 1e-10))``, floored at (the clip's maximum - 8), then ``(x + 4) / 4``.

    Float samples in [-1, 1] (int16 is refused: divide by 32768). Long batches are computed a few
    clips at a time, so memory stays small.
    """
    n_mels = checks.integer(n_mels, "n_mels", minimum=1)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    items, single = _as_batch(waves, dtype)
    if max_frames is None:
        length = -(-max(len(w) for w in items) // HOP_LENGTH) * HOP_LENGTH
    else:
        length = checks.integer(max_frames, "max_frames", minimum=2) * HOP_LENGTH
    filters = mel_filter_bank(N_FFT // 2 + 1, n_mels, SAMPLE_RATE, 0.0, 8000.0).to(dtype)   # (M, 201)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(N_FFT, dtype=dtype) / N_FFT)  # periodic Hann
    chunk = max(1, 2**23 // (length + N_FFT))        # clips at a time: about 80 MB of frames in float32
    out = [_log_mel_chunk(items[i: i + chunk], length, window, filters) for i in range(0, len(items), chunk)]
    features = torch.cat(out)                                                        # (N, M, T)
    return features[0] if single else features


def _log_mel_chunk(items: list[torch.Tensor], length: int, window: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(len(items), length, dtype=window.dtype)                          # (N, S)
    for i, w in enumerate(items):
        x[i, : min(len(w), length)] = w[:length]
    x = F.pad(x[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[:, 0]           # (N, S + 400)
    frames = x.unfold(-1, N_FFT, HOP_LENGTH)                                         # (N, S/160 + 1, 400)
    spectrum = torch.fft.rfft(frames * window, dim=-1)                               # (N, T + 1, 201)
    power = (spectrum.real**2 + spectrum.imag**2)[:, :-1]                            # (N, T, 201)
    mel = power @ filters.T                                                          # (N, T, M)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return ((log_spec + 4.0) / 4.0).transpose(1, 2).contiguous()                     # (N, M, T)


def show_spectrogram(features, wave: np.ndarray | None = None, title: str | None = None, ax=None):
    """Draw a log-mel spectrogram (n_mels, frames) as an image (time → right, frequency ↑), with the
    wave above it when given. Returns the figure."""
    import matplotlib.pyplot as plt

    spec = torch.as_tensor(features).detach().cpu().float()
    if spec.ndim == 3 and len(spec) == 1:
        spec = spec[0]
    if spec.ndim != 2:
        raise ValueError(f"features must be one spectrogram (n_mels, frames), got shape {tuple(spec.shape)}")
    if ax is not None:
        fig, axes = ax.figure, [ax]
    elif wave is not None:
        fig, axes = plt.subplots(2, 1, figsize=(7, 4), sharex=True, layout="constrained",
                                 gridspec_kw={"height_ratios": [1, 2]})
    else:
        fig, a = plt.subplots(figsize=(7, 2.8), layout="constrained")
        axes = [a]
    if wave is not None and ax is None:
        w = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
        axes[0].plot(np.arange(len(w)) / SAMPLE_RATE, w, lw=0.5, color="0.2")
        axes[0].set(ylabel="amplitude")
    frames = spec.shape[1]
    image = axes[-1].imshow(spec.numpy(), origin="lower", aspect="auto", cmap="magma",
                            extent=(0, frames * HOP_LENGTH / SAMPLE_RATE, 0, spec.shape[0]))
    axes[-1].set(xlabel="seconds", ylabel="mel bin")
    fig.colorbar(image, ax=list(axes), pad=0.01, label="log-mel")
    if title:
        axes[0].set_title(title)
    return fig


def play(wave, rate: int = SAMPLE_RATE):
    """An audio player for ``wave`` (an ``<audio>`` element in Jupyter and in the rendered book)."""
    from IPython.display import Audio

    w = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError(f"wave must be one non-empty 1-D wave, got {checks._given(wave)}")
    return Audio(w, rate=checks.integer(rate, "rate", minimum=1))
