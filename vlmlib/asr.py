"""Speech recognition with a tiny Whisper: ``transformers``' own classes at a small size (chapter 9).

Whisper (Radford et al., 2023) is an encoder–decoder transformer: the encoder reads the log-mel
spectrogram (two convolutions, the second with stride 2, halve its length), the decoder writes the
transcript token by token while attending to the encoder's states. This module builds
``WhisperForConditionalGeneration`` at a tiny :class:`ASRConfig` with the course's word-level
tokenizer (:func:`vlmlib.tokenizer.shapes_tokenizer`: one token per word), so that:

- training is the model's own loss: ``model(input_features=mel, labels=ids).loss`` (the labels are
  "w₁ … wₙ [EOS]"; the model shifts them right behind ``decoder_start_token_id`` = [BOS] itself);
- transcription is a plain ``model.generate(input_features)``: greedy decoding, which starts at
  [BOS] and stops at [EOS]. Real Whisper also forces task tokens (``<|startoftranscript|><|en|>
  <|transcribe|><|notimestamps|>``); a model with one language and one task needs none of them.

Clips are padded or cut to ``frames`` (Whisper: 3000 = 30 s; here 4 s, enough for ShapesWorld's
longest sentences), so ``max_source_positions`` is ``frames // 2``. :func:`vlmlib.wer.word_error_rate`
measures the transcripts (:func:`evaluate`).

Training to a low word error rate takes about 20 minutes on one CPU core, longer than a chapter may
run, so the package ships the trained model (``python -m tools.train_asr`` made it)::

    model, record = load_shipped_asr()          # frozen; record["metrics"] holds its measured WER
    transcribe(model, speech.log_mel(waves, max_frames=400))

:func:`train_asr` trains one through the artifact cache (a shorter run, or on a GPU).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import logging as hf_logging
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

from . import checks
from .settings import quiet_loading
from .audio_vit import augment, check_log_mel
from .tokenizer import shapes_tokenizer


@dataclass
class ASRConfig:
    """The size of the tiny Whisper: d_model, layers, heads and the clip length in frames (10 ms each)."""

    frames: int = 400                 # 4 s; the encoder sees frames // 2 positions
    d_model: int = 96
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    ffn_dim: int = 256
    max_target_positions: int = 24    # [BOS] + up to 22 words + [EOS]

    def __post_init__(self):
        for name in ("frames", "d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim", "max_target_positions"):
            setattr(self, name, checks.integer(getattr(self, name), f"ASRConfig.{name}", minimum=1))
        if self.frames % 2:
            raise ValueError(f"ASRConfig.frames must be even (Whisper's stride-2 stem halves it), got {self.frames}")
        if self.d_model % self.heads:
            raise ValueError(f"ASRConfig.heads {self.heads} must divide d_model {self.d_model}")

    def whisper(self) -> WhisperConfig:
        """The ``transformers`` configuration: 80 mel bins, the ShapesWorld vocabulary, [BOS]/[EOS]/[PAD]."""
        tok = shapes_tokenizer()
        return WhisperConfig(
            vocab_size=len(tok), num_mel_bins=80, d_model=self.d_model,
            encoder_layers=self.encoder_layers, decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.heads, decoder_attention_heads=self.heads,
            encoder_ffn_dim=self.ffn_dim, decoder_ffn_dim=self.ffn_dim,
            max_source_positions=self.frames // 2, max_target_positions=self.max_target_positions,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.bos_token_id,
            begin_suppress_tokens=None, suppress_tokens=None,   # Whisper's lists name ids of its own vocabulary
        )

    def to_dict(self) -> dict:
        return asdict(self)


def tiny_whisper(config: ASRConfig | None = None) -> WhisperForConditionalGeneration:
    """A randomly initialised ``WhisperForConditionalGeneration`` of ``config``'s size, ready for ``generate()``."""
    config = config if config is not None else ASRConfig()
    if not isinstance(config, ASRConfig):
        raise TypeError(f"config must be an ASRConfig, got {type(config).__name__}")
    model = WhisperForConditionalGeneration(config.whisper())
    tok = shapes_tokenizer()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tok.bos_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_length=config.max_target_positions, do_sample=False, num_beams=1)
    return model


def transcript_labels(texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Training targets (N, max_length): each text's word ids, then [EOS], then -100 (ignored by the loss).

    No [BOS]: the model puts ``decoder_start_token_id`` in front when it shifts the labels right.
    """
    texts = checks.text_list(texts, "texts")
    if not texts:
        raise ValueError("texts is empty: give at least one transcript")
    tok = shapes_tokenizer()
    rows = [row[1:] for row in tok(texts)["input_ids"]]                  # drop [BOS], keep [EOS]
    long = [t for t, r in zip(texts, rows) if len(r) + 1 > max_length]
    if long:
        raise ValueError(f"{len(long)} transcripts do not fit in max_target_positions={max_length} tokens, "
                         f"e.g. {long[0]!r}")
    unknown = sorted({w for t, r in zip(texts, rows) for w, i in zip(t.lower().split(), r) if i == tok.unk_token_id})
    if any(tok.unk_token_id in r for r in rows):
        raise ValueError(f"words outside the ShapesWorld vocabulary in texts: {unknown or 'some'}")
    return torch.tensor([r + [-100] * (max_length - len(r)) for r in rows], dtype=torch.long)


def _check_model(model) -> WhisperForConditionalGeneration:
    if not isinstance(model, WhisperForConditionalGeneration):
        raise TypeError(f"model must be a WhisperForConditionalGeneration (asr.tiny_whisper), got {type(model).__name__}")
    return model


def _check_features(model, log_mel) -> torch.Tensor:
    frames = 2 * model.config.max_source_positions
    return check_log_mel(log_mel, "log_mel", model.config.num_mel_bins, frames)


@torch.no_grad()
def transcribe(model: WhisperForConditionalGeneration, log_mel, batch_size: int = 128) -> list[str]:
    """Greedy transcripts of spectrograms (N, 80, frames) through ``model.generate`` (ids decoded to words)."""
    model = _check_model(model).eval()
    x = _check_features(model, log_mel)
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    tok = shapes_tokenizer()
    device = model.device
    out = []
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()     # Whisper's generate warns about its own internal suppress_tokens arguments
    try:
        for i in range(0, len(x), batch_size):
            ids = model.generate(x[i:i + batch_size].to(device), do_sample=False, num_beams=1)   # (B, ≤ max_length)
            out += tok.batch_decode(ids, skip_special_tokens=True)
    finally:
        hf_logging.set_verbosity(level)
    return out


def fit_asr(config: ASRConfig, log_mel, texts: Sequence[str], steps: int = 2000, batch: int = 32,
            lr: float = 1.5e-3, max_shift: int = 10, seed: int = 0):
    """Train a tiny Whisper on (spectrogram, transcript) pairs: ``(model, history, seconds)``.

    Each step draws ``batch`` clips, shifts each in time by up to ``max_shift`` frames, and
    minimises the model's own loss (cross-entropy of each next word given the audio and the words
    before it: teacher forcing).
    """
    from .training import train

    if not isinstance(config, ASRConfig):
        raise TypeError(f"config must be an ASRConfig, got {type(config).__name__}")
    X = check_log_mel(log_mel, "log_mel", 80, config.frames)
    texts = checks.text_list(texts, "texts")
    if len(texts) != len(X):
        raise ValueError(f"texts must hold one transcript per clip ({len(X)}), got {len(texts)}")
    Y = transcript_labels(texts, config.max_target_positions)
    steps, batch = checks.integer(steps, "steps", minimum=1), checks.integer(batch, "batch", minimum=1)
    lr, max_shift = checks.number(lr, "lr", low=0.0, low_open=True), checks.integer(max_shift, "max_shift", minimum=0)
    torch.manual_seed(checks.integer(seed, "seed", minimum=0))
    g = torch.Generator().manual_seed(seed)
    model = tiny_whisper(config)

    def loss_fn(step):
        i = torch.randint(len(X), (batch,), generator=g)
        y = Y[i]
        y = y[:, : int((y != -100).sum(1).max())]                           # drop all-padding columns
        return model(input_features=augment(X[i], max_shift, g), labels=y).loss

    start = time.perf_counter()
    history = train(model, loss_fn, steps, lr=lr, desc="tiny Whisper")
    return model.eval(), history, time.perf_counter() - start


def train_asr(config: ASRConfig, log_mel, texts: Sequence[str], steps: int = 2000, batch: int = 32,
              lr: float = 1.5e-3, max_shift: int = 10, seed: int = 0, name: str = "asr-whisper-tiny",
              data_key: dict | None = None, verbose: bool = True):
    """:func:`fit_asr` through the artifact cache; returns the Artifact (:func:`load_asr` makes the model).

    ``data_key`` says how the data were made and goes into the cache key with the recipe.
    """
    from .cache import Artifact, cached

    if not isinstance(config, ASRConfig):
        raise TypeError(f"config must be an ASRConfig, got {type(config).__name__}")
    recipe = {"model": config.to_dict(), "steps": checks.integer(steps, "steps", minimum=1),
              "batch": checks.integer(batch, "batch", minimum=1), "lr": checks.number(lr, "lr", low=0.0, low_open=True),
              "max_shift": checks.integer(max_shift, "max_shift", minimum=0), "seed": checks.integer(seed, "seed", minimum=0),
              "data": data_key if data_key is not None else {"n": len(texts)}}

    def build() -> Artifact:
        model, history, seconds = fit_asr(config, log_mel, texts, steps, batch, lr, max_shift, seed)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}   # untie: safetensors refuses shared memory
        return Artifact(name, recipe, state, {"train_seconds": seconds}, history)

    return cached(name, recipe, build, verbose=verbose)


def load_asr(artifact) -> WhisperForConditionalGeneration:
    """The tiny Whisper stored by :func:`train_asr`, in eval mode."""
    config = getattr(artifact, "config", None)
    if not isinstance(config, dict) or "model" not in config:
        raise TypeError("artifact must be what vlmlib.asr.train_asr returned")
    model = tiny_whisper(ASRConfig(**config["model"]))
    model.load_state_dict(artifact.state_dict)
    return model.eval()


# -- the shipped model ------------------------------------------------------------------------------
SHIPPED_NAME = "asr-whisper-tiny"
#: How the shipped model is trained and measured (tools/train_asr.py); the record beside it repeats it.
SHIPPED_RECIPE = {"n_train": 4000, "data_seed": 0, "steps": 2500, "batch": 32, "lr": 1.5e-3, "max_shift": 10, "seed": 0}
#: The evaluation sets: spoken sentences of the seen voices ("test": in-between speeds and pitches)
#: and of voices never heard in training ("held_out_voices").
EVAL_SETS = {"test": (300, 1), "held_out_voices": (300, 1)}


def weights_folder() -> Path:
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights")) / SHIPPED_NAME


def spoken_set(n: int, split: str, seed: int, frames: int = 400):
    """``n`` spoken sentences of ``split`` as (log-mel (n, 80, frames), transcripts)."""
    from .speech import log_mel, spoken_sentences

    data = spoken_sentences(n, split, seed)
    return log_mel(data.waves, max_frames=frames), data.texts


def evaluate(model: WhisperForConditionalGeneration, sets: dict | None = None) -> dict[str, float]:
    """Word error rate of greedy transcripts on each evaluation set: ``{"wer_test": …, "wer_held_out_voices": …}``."""
    from .wer import word_error_rate

    out = {}
    for split, (n, seed) in (sets or EVAL_SETS).items():
        mel, texts = spoken_set(n, split, seed, 2 * model.config.max_source_positions)
        out[f"wer_{split}"] = word_error_rate(texts, transcribe(model, mel))
    return out


def save_asr(model, config: ASRConfig, metrics: dict, history: dict, folder: Path | str | None = None) -> Path:
    """``save_pretrained`` the model into ``folder`` with ``record.json`` (config, recipe, metrics, loss history)."""
    folder = Path(folder) if folder is not None else weights_folder()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    record = {"config": config.to_dict(), "recipe": SHIPPED_RECIPE, "eval_sets": EVAL_SETS, "metrics": metrics,
              "history": history, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (folder / "record.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return folder


def load_shipped_asr(folder: Path | str | None = None) -> tuple[WhisperForConditionalGeneration, dict]:
    """The shipped tiny Whisper, frozen, and its record: ``(model, record)``.

    Raises ``FileNotFoundError`` when the folder is missing and ``ValueError`` when the weights fail
    their checksum.
    """
    folder = Path(folder) if folder is not None else weights_folder()
    record_path, weights = folder / "record.json", folder / "model.safetensors"
    if not record_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no speech recogniser in {folder}: run `python -m tools.train_asr`")
    record = json.loads(record_path.read_text())
    if hashlib.sha256(weights.read_bytes()).hexdigest() != record["weights_sha256"]:
        raise ValueError(f"{weights} fails its checksum: run `python -m tools.train_asr` again")
    model = tiny_whisper(ASRConfig(**record["config"]))
    with quiet_loading():
        model.load_state_dict(WhisperForConditionalGeneration.from_pretrained(folder).state_dict())
    model.requires_grad_(False)
    return model.eval(), record
