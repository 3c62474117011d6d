"""Chapter 9's data and features: eSpeak NG synthesis (cached), spoken ShapesWorld, and Whisper's log-mel
spectrogram computed from its definition and compared with transformers' WhisperFeatureExtractor.

eSpeak NG must be installed (`make audio`; CI installs it): these tests fail, not skip, without it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vlmlib import speech
from vlmlib.shapesworld import vocabulary


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path / "cache"))


def test_espeak_ng_is_installed():
    assert speech.espeak_version()[0].isdigit(), speech.espeak_version()
    variants = speech.voice_variants()
    for voice in speech.VOICES + speech.HELD_OUT_VOICES:
        assert voice.split("+")[1] in variants, voice


def test_synthesize_gives_a_16_khz_float_wave_and_caches_it(tmp_path, monkeypatch):
    wave = speech.synthesize("red circle", voice="en+m3", speed=160, pitch=50)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.3 < len(wave) / speech.SAMPLE_RATE < 1.5, len(wave)
    assert 0.05 < np.abs(wave).max() <= 1.0
    # the silence around the speech is trimmed to 50 ms
    loud = np.nonzero(np.abs(wave) > 0.01 * np.abs(wave).max())[0]
    assert loud[0] <= 0.06 * speech.SAMPLE_RATE and len(wave) - loud[-1] <= 0.06 * speech.SAMPLE_RATE
    files = list((tmp_path / "cache" / "speech").glob("*.npy"))
    assert len(files) == 1
    # a second call reads the cache: it works with espeak-ng gone
    monkeypatch.setattr(speech, "ESPEAK", "/nonexistent/espeak-ng")
    np.testing.assert_array_equal(speech.synthesize("red circle", voice="en+m3", speed=160, pitch=50), wave)


def test_voice_speed_and_pitch_change_the_sound():
    base = speech.synthesize("a small red circle", "en+m3", 160, 50)
    assert not np.array_equal(base, speech.synthesize("a small red circle", "en+f2", 160, 50)[: len(base)])
    assert len(speech.synthesize("a small red circle", "en+m3", 250, 50)) < 0.8 * len(base)
    assert not np.array_equal(base, speech.synthesize("a small red circle", "en+m3", 160, 80)[: len(base)])


def test_resampling_keeps_a_tone():
    t22 = np.arange(22050) / 22050
    t16 = np.arange(16000) / 16000
    for hz in (220.0, 1000.0, 5000.0):
        out = speech.resample(np.sin(2 * np.pi * hz * t22), 22050, 16000)
        assert len(out) == 16000
        np.testing.assert_allclose(out[500:-500], np.sin(2 * np.pi * hz * t16)[500:-500], atol=2e-3)
    # above the new Nyquist frequency (8 kHz) a tone is filtered out, not aliased
    assert np.abs(speech.resample(np.sin(2 * np.pi * 10000 * t22), 22050, 16000)[500:-500]).max() < 0.01


def test_a_missing_espeak_ng_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(speech, "ESPEAK", "espeak-ng-not-installed")
    speech.espeak_version.cache_clear()
    try:
        with pytest.raises(speech.EspeakMissing, match="make audio.*apt-get install espeak-ng"):
            speech.synthesize("red")
    finally:
        speech.espeak_version.cache_clear()


def test_a_voice_variant_missing_from_the_installed_espeak_ng_is_an_error(monkeypatch):
    """espeak-ng itself would speak with its default voice instead (VOICES are all in 1.50 and 1.51:
    `git ls-tree 1.50 'espeak-ng-data/voices/!v/'` in espeak-ng's repository; klatt5 and klatt6 are not in 1.50)."""
    monkeypatch.setattr(speech, "voice_variants", lambda: ("m1", "f2"))
    with pytest.raises(RuntimeError, match="no voice variant 'm3'"):
        speech.synthesize("red", voice="en+m3")
    with pytest.raises(RuntimeError, match="no voice variant"):
        speech.spoken_words(2, "held_out_voices")


def test_vlmlib_imports_without_espeak_ng():
    env = {**os.environ, "PATH": "/nonexistent"}
    code = "import vlmlib, vlmlib.speech as s; print(tuple(s.log_mel(s.np.zeros(1600)).shape))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(80, 3000)" in out.stdout


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="text"):
        speech.synthesize("  ")
    with pytest.raises(ValueError, match="voice"):
        speech.synthesize("red", voice="en+nobody")     # espeak-ng itself would silently use its default
    with pytest.raises(ValueError, match="speed"):
        speech.synthesize("red", speed=20)
    with pytest.raises(ValueError, match="pitch"):
        speech.synthesize("red", pitch=100)
    with pytest.raises(ValueError, match="split"):
        speech.spoken_words(4, split="validation")
    with pytest.raises(ValueError, match="words"):
        speech.spoken_words(4, words=["red", "red"])
    with pytest.raises(ValueError, match="shape"):
        speech.log_mel(np.zeros((2, 2, 1600)))
    with pytest.raises(ValueError, match="NaN"):
        speech.log_mel(np.full(1600, np.nan))
    with pytest.raises(TypeError, match="32768"):
        speech.log_mel(np.zeros(1600, dtype=np.int16))
    with pytest.raises(ValueError, match="max_frames"):
        speech.log_mel(np.zeros(1600), max_frames=1)


def test_spoken_words_are_balanced_and_split_by_voice():
    train = speech.spoken_words(20, "train", seed=0)
    assert len(train) == 20 and train.classes == speech.WORDS
    assert np.bincount(train.labels, minlength=10).tolist() == [2] * 10
    assert train.texts == [speech.WORDS[i] for i in train.labels]
    assert set(train.voices) <= set(speech.VOICES) and set(train.speeds) <= set(speech.SPEEDS)
    assert all(w.dtype == np.float32 and np.abs(w).max() <= 1.0 for w in train.waves)
    held = speech.spoken_words(6, "held_out_voices", seed=0, words=speech.DIRECTIONS)
    assert set(held.voices) <= set(speech.HELD_OUT_VOICES) and not set(speech.HELD_OUT_VOICES) & set(speech.VOICES)
    assert held.classes == speech.DIRECTIONS and set(held.texts) <= set(speech.DIRECTIONS)
    test = speech.spoken_words(6, "test", seed=0)
    assert set(test.speeds) <= set(speech.TEST_SPEEDS) and set(test.pitches) <= set(speech.TEST_PITCHES)
    # deterministic given the seed, the noise included; another seed draws another sample
    again = speech.spoken_words(20, "train", seed=0)
    assert again.texts == train.texts and all(np.array_equal(a, b) for a, b in zip(again.waves, train.waves))
    other = speech.spoken_words(20, "train", seed=1)
    assert other.voices != train.voices or other.texts != train.texts
    padded = train.padded()
    assert padded.shape == (20, train.lengths.max()) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[0, : train.lengths[0]], train.waves[0])


def test_the_noise_is_light():
    data = speech.spoken_words(4, "train", seed=3)
    for wave, voice, speed, pitch, text in zip(data.waves, data.voices, data.speeds, data.pitches, data.texts):
        clean = speech.synthesize(text, voice, int(speed), int(pitch)).astype(np.float64)
        noisy = wave.astype(np.float64)
        gain = noisy @ clean / (clean @ clean)        # the random loudness
        snr = 10 * np.log10(np.sum((gain * clean) ** 2) / np.sum((noisy - gain * clean) ** 2))
        assert 19 < snr < 41, snr


def test_spoken_sentences_use_shapesworlds_words():
    data = speech.spoken_sentences(8, "held_out_voices", seed=0)
    words = set(vocabulary())
    for text in data.texts:
        assert text and text == text.lower() and set(text.split()) <= words, text
        assert "?" not in text
    assert (data.labels == -1).all() and set(data.voices) <= set(speech.HELD_OUT_VOICES)
    assert data.seconds > 8 * 0.8


def test_mel_filter_bank_equals_transformers():
    from transformers.audio_utils import mel_filter_bank

    for n_freqs, n_mels, rate, f_min, f_max in [(201, 80, 16000, 0.0, 8000.0), (201, 128, 16000, 0.0, 8000.0),
                                                (513, 40, 22050, 20.0, 11025.0), (257, 64, 8000, 100.0, 3800.0)]:
        ours = speech.mel_filter_bank(n_freqs, n_mels, rate, f_min, f_max)
        ref = mel_filter_bank(n_freqs, n_mels, f_min, f_max, rate, norm="slaney", mel_scale="slaney")
        assert ours.shape == (n_mels, n_freqs) and ours.dtype == torch.float64
        np.testing.assert_allclose(ours.numpy(), ref.T, rtol=0, atol=1e-12)


def _whisper_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor()       # Whisper's defaults: 80 mel bins, 16 kHz, n_fft 400, hop 160, 30 s


def test_log_mel_equals_whispers_feature_extractor():
    extractor = _whisper_extractor()
    wave = speech.synthesize("what colour is the square?", "en+f2", 170, 60)
    wave = wave + np.float32(1e-3) * np.random.default_rng(0).standard_normal(len(wave)).astype(np.float32)
    ref = extractor(wave, sampling_rate=16000, return_tensors="np")["input_features"]      # (1, 80, 3000)
    for dtype in (torch.float32, torch.float64):
        ours = speech.log_mel(wave[None], dtype=dtype)
        assert ours.shape == (1, 80, 3000) and ours.dtype == dtype
        assert np.abs(ours.numpy() - ref).max() < 2e-4, (dtype, np.abs(ours.numpy() - ref).max())   # measured 3e-5
    assert speech.log_mel(wave).shape == (80, 3000)          # one wave in, one spectrogram out


def test_log_mel_in_float64_equals_the_extractors_steps_in_float64():
    """The extractor computes in float32; its own steps (torch.stft) in float64 agree with ours to rounding."""
    from transformers.audio_utils import mel_filter_bank

    wave = torch.from_numpy(speech.synthesize("a large blue cross", "en+klatt", 140, 30).astype(np.float64))
    x = torch.zeros(300 * 160, dtype=torch.float64)
    x[: len(wave)] = wave
    stft = torch.stft(x, 400, 160, window=torch.hann_window(400, dtype=torch.float64), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")).T @ power
    log_spec = mel.clamp(min=1e-10).log10()
    ref = (torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    ours = speech.log_mel(wave, max_frames=300, dtype=torch.float64)
    assert ours.shape == ref.shape == (80, 300)
    assert (ours - ref).abs().max() < 1e-10


def test_log_mel_of_a_batch_pads_each_clip_and_floors_it_by_its_own_maximum():
    extractor = _whisper_extractor()
    data = speech.spoken_words(3, "train", seed=0)
    quiet = data.waves[1] * np.float32(0.01)
    waves = [data.waves[0], quiet, data.waves[2][:3000]]
    ref = extractor(waves, sampling_rate=16000, max_length=120 * 160, return_tensors="np")["input_features"]
    ours = speech.log_mel(waves, max_frames=120)
    assert ours.shape == ref.shape == (3, 80, 120)
    assert np.abs(ours.numpy() - ref).max() < 2e-4
    # each clip's own maximum sets its floor: the quiet clip's maximum is its loud self's minus 1
    # (the power is 0.01² = 1e-4 times as large: log10 gives -4, then / 4)
    loud = speech.log_mel(data.waves[1], max_frames=120)
    assert torch.allclose(ours[1].amax(), loud.amax() - 1.0, atol=1e-4)
    # max_frames=None: the longest clip, rounded up to whole frames
    assert speech.log_mel(waves, max_frames=None).shape[-1] == -(-max(len(w) for w in waves) // 160)
    assert torch.equal(speech.log_mel(data, max_frames=50), speech.log_mel(data.waves, max_frames=50))


def test_a_long_batch_is_computed_in_chunks_with_the_same_result():
    waves = speech.spoken_words(20, "test", seed=0).waves
    batch = speech.log_mel(waves)                          # 20 clips of 30 s: more than one chunk
    assert batch.shape == (20, 80, 3000)
    for i in (0, 17, 19):
        assert torch.equal(batch[i], speech.log_mel(waves[i]))


def test_show_spectrogram_and_play():
    import matplotlib.pyplot as plt

    wave = speech.synthesize("red")
    fig = speech.show_spectrogram(speech.log_mel(wave, max_frames=None), wave=wave, title="red")
    assert len(fig.axes) == 3                 # the wave, the spectrogram, its colour bar
    plt.close(fig)
    audio = speech.play(wave)
    html = audio._repr_html_()
    assert "<audio" in html and "data:audio/wav;base64," in html
    assert speech.play(wave).data[24:28] == (16000).to_bytes(4, "little")     # the WAV header's sample rate
    with pytest.raises(ValueError, match="wave"):
        speech.play(np.zeros((2, 10)))
