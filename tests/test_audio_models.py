"""Chapter 9's models on stand-in spectrograms: the spectrogram ViT (AST idea), CLAP and the tiny Whisper."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmlib import asr, audio_vit, clap
from vlmlib.audio_vit import AudioClassifier, AudioViTConfig, SpectrogramViT
from vlmlib.vit import ViT, patchify

torch.set_num_threads(1)


def _tiny_vit():
    return AudioViTConfig(n_mels=20, frames=30, patch_size=5, dim=16, depth=1, heads=2)


def test_spectrogram_vit_is_chapter_1s_vit_on_rectangular_patches():
    torch.manual_seed(0)
    c = _tiny_vit()
    model = SpectrogramViT(c)
    assert isinstance(model, ViT) and c.num_patches == 4 * 6
    x = torch.randn(3, 20, 30)
    z = model(x)
    assert z.shape == (3, 1 + 24, 16) and model.features(x).shape == (3, 16)
    # Eq. 1 by hand: patches of the one-channel image, row by row (mel bands), through E, plus E_pos.
    tokens = patchify(x[:, None], 5) @ model.patch_embed.proj.weight.T + model.patch_embed.proj.bias
    expected = torch.cat([model.cls_token.expand(3, -1, -1), tokens], 1) + model.pos_embed
    torch.testing.assert_close(model.embed(x), expected)
    # the patch at (mel band 1, time step 2) holds exactly those values
    torch.testing.assert_close(patchify(x[:, None], 5)[:, 1 * 6 + 2], x[:, 5:10, 10:15].reshape(3, -1))


def test_spectrogram_vit_refuses_bad_input_clearly():
    model = SpectrogramViT(_tiny_vit())
    with pytest.raises(ValueError, match=r"log_mel must have shape \(B, 20, 30\), got \(20, 30\); add a batch"):
        model(torch.randn(20, 30))
    with pytest.raises(ValueError, match=r"\(B, 20, 30\)"):
        model(torch.randn(2, 20, 40))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 20, 30), float("nan")))
    with pytest.raises(TypeError, match="log_mel must be a float tensor"):
        model([[0.0]])
    with pytest.raises(ValueError, match="patch_size 7 must divide n_mels 80"):
        AudioViTConfig(patch_size=7)
    with pytest.raises(TypeError, match="config must be an AudioViTConfig"):
        SpectrogramViT(object())


def _toy_words(n, c, g):
    """Stand-in spectrograms: class k is a bright horizontal band at mel rows 4k..4k+3, at a random time."""
    labels = torch.randint(4, (n,), generator=g)
    x = torch.randn(n, c.n_mels, c.frames, generator=g) * 0.1
    for i, k in enumerate(labels.tolist()):
        t0 = int(torch.randint(0, c.frames - 10, (1,), generator=g))
        x[i, 4 * k:4 * k + 4, t0:t0 + 10] += 1.0
    return x, labels


def test_a_short_training_run_learns_stand_in_words(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    c = _tiny_vit()
    x, y = _toy_words(256, c, g)
    art = audio_vit.train_word_classifier(c, x, y, classes=4, steps=60, batch=32, lr=3e-3, max_shift=3, verbose=False)
    assert art.history["loss"][-1] < 0.5 * art.history["loss"][0]
    model = audio_vit.load_word_classifier(art)
    xt, yt = _toy_words(64, c, g)
    assert audio_vit.accuracy(model, xt, yt) > 0.8
    with pytest.raises(ValueError, match="labels"):
        audio_vit.accuracy(model, xt, yt[:3])


def test_augment_shifts_in_time_only():
    x = torch.arange(4 * 3 * 8, dtype=torch.float32).reshape(4, 3, 8) + 1
    out = audio_vit.augment(x, 2, torch.Generator().manual_seed(1))
    shifts = []
    for i in range(4):
        matches = [s for s in range(-2, 3)
                   if torch.equal(out[i, :, max(s, 0):8 + min(s, 0)], x[i, :, max(-s, 0):8 - max(s, 0)])
                   and bool((torch.cat([out[i, :, :max(s, 0)], out[i, :, 8 + min(s, 0):]], 1) == x[i].min()).all())]
        assert len(matches) == 1, i            # a pure shift in time, the gap filled with the clip's minimum
        shifts.append(matches[0])
    assert len(set(shifts)) > 1
    assert torch.equal(audio_vit.augment(x, 0), x)


# -- CLAP ------------------------------------------------------------------------------------------
def _tiny_clap():
    return clap.CLAPConfig(audio=_tiny_vit(), text_dim=16, text_depth=1, text_heads=2, embed_dim=8)


def test_clap_reuses_chapter_2s_parts_and_its_logits_are_scaled_cosines():
    from vlmlib.clip import TextEncoder, tokenize
    torch.manual_seed(0)
    model = clap.CLAP(_tiny_clap())
    assert isinstance(model.text_encoder, TextEncoder) and isinstance(model.audio_encoder, SpectrogramViT)
    x, ids = torch.randn(3, 20, 30), tokenize(["red", "a blue square", "what colour is the circle"])
    a, t = model.encode_audio(x), model.encode_text(ids)
    assert a.shape == t.shape == (3, 8)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(model(x, ids), F.cosine_similarity(a[:, None], t[None], dim=-1) * model.logit_scale.exp())


def test_clap_training_pulls_pairs_together_and_zero_shot_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    c = _tiny_clap()
    words = ["red", "green", "blue", "yellow"]
    x, y = _toy_words(256, c.audio, g)
    art = clap.train_clap(c, x, [words[k] for k in y], steps=80, batch=4, lr=3e-3, max_shift=3, verbose=False)
    assert np.mean(art.history["loss"][-10:]) < 0.5 * np.mean(art.history["loss"][:10])
    model = clap.load_clap(art)
    xt, yt = _toy_words(64, c.audio, g)
    assert (clap.zero_shot(model, xt, words) == yt).float().mean() > 0.8
    r = clap.retrieval(model, xt, [words[k] for k in yt], ks=(1,))
    assert set(r) == {"audio→text R@1", "text→audio R@1"} and r["audio→text R@1"] > 0.8


def test_distinct_batches_never_repeat_a_text():
    texts = ["red"] * 50 + ["blue"] * 50 + ["a red circle"]
    i = clap.distinct_batch(texts, 8, torch.Generator().manual_seed(0))
    assert sorted(texts[k] for k in i.tolist()) == ["a red circle", "blue", "red"]


def test_clap_refuses_bad_input_clearly():
    model = clap.CLAP(_tiny_clap())
    with pytest.raises(ValueError, match="outside the ShapesWorld vocabulary"):
        clap.embed_texts(model, ["a purple elephant"])
    with pytest.raises(ValueError, match="one transcript per clip"):
        clap.retrieval(model, torch.randn(2, 20, 30), ["red"])
    with pytest.raises(TypeError, match="model must be a vlmlib CLAP"):
        clap.embed_audio(object(), torch.randn(2, 20, 30))
    with pytest.raises(TypeError, match="CLAPConfig.audio must be an AudioViTConfig"):
        clap.CLAPConfig(audio=3)


# -- the tiny Whisper ------------------------------------------------------------------------------
def _tiny_asr():
    return asr.ASRConfig(frames=40, d_model=32, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=64,
                         max_target_positions=8)


def test_tiny_whisper_is_transformers_whisper_and_its_loss_is_next_word_cross_entropy():
    torch.manual_seed(0)
    model = asr.tiny_whisper(_tiny_asr()).eval()
    tok = asr.shapes_tokenizer()
    assert model.config.max_source_positions == 20 and model.config.vocab_size == len(tok)
    x = torch.randn(2, 80, 40)
    labels = asr.transcript_labels(["red circle", "a blue square on the left"], 8)
    assert labels[0].tolist()[:3] == [tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("circle"), tok.eos_token_id]
    assert labels[0, 3:].eq(-100).all()
    out = model(input_features=x, labels=labels)
    # the same loss by hand: the decoder reads [BOS] + labels[:-1] and predicts labels
    dec_in = torch.cat([torch.full((2, 1), tok.bos_token_id), labels[:, :-1].clamp(min=0)], 1)
    logits = model(input_features=x, decoder_input_ids=dec_in).logits
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)))
    assert model.model.encoder(x).last_hidden_state.shape == (2, 20, 32)


def test_plain_generate_decodes_greedily_and_stops_at_eos():
    torch.manual_seed(0)
    model = asr.tiny_whisper(_tiny_asr()).eval()
    tok = asr.shapes_tokenizer()
    x = torch.randn(2, 80, 40)
    ids = model.generate(x)
    assert ids.shape[0] == 2 and ids.shape[1] <= 8
    # greedy by hand: start at [BOS], append the argmax each step
    dec = torch.full((2, 1), tok.bos_token_id)
    for _ in range(ids.shape[1] - (ids[:, 0] == tok.bos_token_id).all().int().item()):
        nxt = model(input_features=x, decoder_input_ids=dec).logits[:, -1].argmax(-1)
        dec = torch.cat([dec, nxt[:, None]], 1)
    start = 0 if (ids[:, 0] == tok.bos_token_id).all() else 1
    finished = (dec[:, start:start + ids.shape[1]] == tok.eos_token_id).cumsum(1) > 0
    assert torch.equal(ids[~finished[:, :ids.shape[1]]], dec[:, start:start + ids.shape[1]][~finished[:, :ids.shape[1]]])
    assert all(isinstance(t, str) for t in asr.transcribe(model, x))


def test_a_short_whisper_run_lowers_the_loss_and_learns_a_stand_in_transcript(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    c = _tiny_asr()
    vit_like = AudioViTConfig(n_mels=80, frames=40, patch_size=10)
    x, y = _toy_words(128, vit_like, g)
    texts = ["red circle", "blue square", "green cross", "yellow triangle"]
    art = asr.train_asr(c, x, [texts[k] for k in y], steps=80, batch=16, lr=3e-3, max_shift=2, verbose=False)
    assert np.mean(art.history["loss"][-10:]) < 0.3 * np.mean(art.history["loss"][:10])
    model = asr.load_asr(art)
    xt, yt = _toy_words(32, vit_like, g)
    from vlmlib.wer import word_error_rate
    assert word_error_rate([texts[k] for k in yt], asr.transcribe(model, xt)) < 0.2


def test_asr_refuses_bad_input_clearly():
    model = asr.tiny_whisper(_tiny_asr())
    with pytest.raises(ValueError, match=r"log_mel must have shape \(B, 80, 40\)"):
        asr.transcribe(model, torch.randn(2, 80, 3000))
    with pytest.raises(TypeError, match="WhisperForConditionalGeneration"):
        asr.transcribe(object(), torch.randn(2, 80, 40))
    with pytest.raises(ValueError, match="do not fit"):
        asr.transcript_labels(["there is a red circle at the top left and a blue square"], 8)
    with pytest.raises(ValueError, match="outside the ShapesWorld vocabulary"):
        asr.transcript_labels(["a purple elephant"], 8)
    with pytest.raises(ValueError, match="frames must be even"):
        asr.ASRConfig(frames=41)


def test_spoken_pairs_gives_words_then_phrases_as_log_mel():
    mel, texts = clap.spoken_pairs(2, 3, "test", 0, frames=160)
    assert mel.shape == (5, 80, 160) and len(texts) == 5
    assert texts[0] in clap.WORDS and texts[2] in clap.PHRASES and len(texts[2].split()) == 2
    with pytest.raises(ValueError, match="both 0"):
        clap.spoken_pairs(0, 0, "test", 0)
