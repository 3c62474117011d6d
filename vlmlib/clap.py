"""Audio–text contrastive learning: chapter 2's CLIP recipe with an audio encoder (CLAP, chapter 9).

CLAP (Elizalde et al., 2023) is CLIP with sound in place of images. Here nothing else changes
either: the audio encoder is chapter 9's :class:`~vlmlib.audio_vit.SpectrogramViT` (chapter 1's ViT on
log-mel patches), the text encoder is chapter 2's :class:`~vlmlib.clip.TextEncoder`, the loss is
:func:`vlmlib.clip.clip_loss`, and zero-shot classification and retrieval are chapter 2's
:func:`~vlmlib.clip.zero_shot_classifier`, :func:`~vlmlib.clip.zero_shot_predict` and
:func:`~vlmlib.clip.recall_at_k`::

    A_e = l2_normalize(audio_encoder(A) W_a)     T_e = l2_normalize(text_encoder(T) W_t)
    logits = t · A_e T_eᵀ                         loss = (CE(rows) + CE(columns)) / 2

Pairs are a spoken utterance and its transcript: the ten words of :data:`vlmlib.speech.WORDS`
("red", …, "cross") and the 24 two-word phrases of :data:`PHRASES` ("red circle", …), made by
:func:`spoken_pairs`. A batch never holds the same text twice: with a few dozen texts, a random batch
would hold "red" several times, and the loss would call the other "red" clips wrong matches.
(Whole spoken sentences, up to 3.5 s, were too hard for this budget: after 500 steps on 3000 of
them, recall@1 was below 10%.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .audio_vit import AudioViTConfig, SpectrogramViT, augment, check_log_mel, training_recipe
from .clip import (LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, CLIPConfig, TextEncoder, clip_loss, recall_at_k, tokenize,
                   zero_shot_classifier, zero_shot_predict)
from .shapesworld import COLOUR_NAMES, KINDS
from .speech import WORDS
from .tokenizer import shapes_tokenizer


@dataclass
class CLAPConfig:
    """An audio encoder (a spectrogram ViT), chapter 2's text transformer and a shared embedding space."""

    audio: AudioViTConfig = field(default_factory=lambda: AudioViTConfig(frames=160, patch_size=16))   # 1.6 s, 5 × 10 patches
    max_length: int = 16
    text_dim: int = 64
    text_depth: int = 2
    text_heads: int = 4
    embed_dim: int = 64

    def __post_init__(self):
        if isinstance(self.audio, dict):
            self.audio = AudioViTConfig(**self.audio)
        if not isinstance(self.audio, AudioViTConfig):
            raise TypeError(f"CLAPConfig.audio must be an AudioViTConfig, got {type(self.audio).__name__}")
        for name in ("max_length", "text_dim", "text_depth", "text_heads", "embed_dim"):
            setattr(self, name, checks.integer(getattr(self, name), f"CLAPConfig.{name}", minimum=1))
        self.text()

    def text(self) -> CLIPConfig:
        """Chapter 2's config, of which the text encoder reads its part (the ShapesWorld vocabulary)."""
        tok = shapes_tokenizer()
        return CLIPConfig(vocab_size=len(tok), max_length=self.max_length, text_dim=self.text_dim,
                          text_depth=self.text_depth, text_heads=self.text_heads, embed_dim=self.embed_dim,
                          eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)

    def to_dict(self) -> dict:
        return asdict(self)


class CLAP(nn.Module):
    """Two encoders, two projections into one space, and a learned temperature (as :class:`vlmlib.clip.CLIP`)."""

    def __init__(self, config: CLAPConfig):
        super().__init__()
        if not isinstance(config, CLAPConfig):
            raise TypeError(f"config must be a CLAPConfig, got {type(config).__name__}")
        self.config = c = config
        self.audio_encoder = SpectrogramViT(c.audio)
        self.text_encoder = TextEncoder(c.text())
        self.audio_projection = nn.Linear(c.audio.dim, c.embed_dim, bias=False)      # W_a
        self.text_projection = nn.Linear(c.text_dim, c.embed_dim, bias=False)        # W_t
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))              # t′ = log t

    def encode_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) log-mel spectrograms -> (B, E) unit-length audio embeddings A_e."""
        return F.normalize(self.audio_projection(self.audio_encoder.features(log_mel)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, E) unit-length text embeddings T_e."""
        return F.normalize(self.text_projection(self.text_encoder(input_ids)), dim=-1)

    def forward(self, log_mel: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """logits_per_audio (B_audio, B_text) = t · A_e T_eᵀ."""
        return self.encode_audio(log_mel) @ self.encode_text(input_ids).T * self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self, max_value: float = LOGIT_SCALE_MAX) -> None:
        """Keep the scale t = exp(t′) in [1, 100], as chapter 2's CLIP does after each step."""
        self.logit_scale.clamp_(0, max_value)


#: The two-word phrases of the training pairs and of the retrieval test: every colour with every kind.
PHRASES: tuple[str, ...] = tuple(f"{c} {k}" for c in COLOUR_NAMES for k in KINDS)


def spoken_pairs(n_words: int, n_phrases: int, split: str, seed: int, frames: int = 160):
    """Spoken words and phrases as ``(log_mel (n_words + n_phrases, 80, frames), texts)``.

    ``n_words`` clips of :data:`vlmlib.speech.WORDS`, then ``n_phrases`` of :data:`PHRASES`, from
    :func:`vlmlib.speech.spoken_words` (``split`` "train", "test" or "held_out_voices").
    """
    from .speech import log_mel, spoken_words

    waves, texts = [], []
    for n, words in ((n_words, None), (n_phrases, PHRASES)):
        if checks.integer(n, "n_words" if words is None else "n_phrases", minimum=0):
            data = spoken_words(n, split, seed) if words is None else spoken_words(n, split, seed, words=words)
            waves, texts = waves + data.waves, texts + data.texts
    if not waves:
        raise ValueError("n_words and n_phrases are both 0: ask for at least one clip")
    return log_mel(waves, max_frames=frames), texts


def _check_model(model) -> None:
    if not isinstance(model, CLAP):
        raise TypeError(f"model must be a vlmlib CLAP, got {type(model).__name__}")


@torch.no_grad()
def embed_audio(model: CLAP, log_mel, batch_size: int = 256) -> torch.Tensor:
    """Unit-length audio embeddings (N, E) of spectrograms (N, n_mels, frames)."""
    _check_model(model)
    c = model.config.audio
    x = check_log_mel(log_mel, "log_mel", c.n_mels, c.frames)
    model.eval()
    return torch.cat([model.encode_audio(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def embed_texts(model: CLAP, texts: Sequence[str]) -> torch.Tensor:
    """Unit-length text embeddings (N, E) of ShapesWorld strings."""
    _check_model(model)
    model.eval()
    return model.encode_text(tokenize(texts, model.config.max_length))


def zero_shot(model: CLAP, log_mel, classnames: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
    """Name each clip by text alone: the class whose prompt embedding is most similar (cosine), (N,).

    No classifier is trained: the classes are given as words at test time, put into ``templates``
    (``"{}"`` is the word itself) and embedded by the text encoder, as in chapter 2.
    """
    classifier = zero_shot_classifier(lambda prompts: embed_texts(model, prompts), classnames, templates)
    return zero_shot_predict(embed_audio(model, log_mel), classifier)


def retrieval(model: CLAP, log_mel, texts: Sequence[str], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k both ways for N clips and their N transcripts (clip i goes with text i).

    ``audio→text R@k``: the share of clips whose transcript is among the k most similar texts;
    ``text→audio R@k`` the other way. Texts that occur twice count as one correct item (any clip
    with the same transcript is a right answer).
    """
    texts = checks.text_list(texts, "texts")
    a, t = embed_audio(model, log_mel), None
    if len(texts) != len(a):
        raise ValueError(f"texts must hold one transcript per clip ({len(a)}), got {len(texts)}")
    unique = list(dict.fromkeys(texts))
    target = torch.tensor([unique.index(s) for s in texts])                   # (N,) each clip's text
    t = embed_texts(model, unique)                                           # (U, E)
    sim = a @ t.T                                                            # (N, U)
    out = {}
    for k in ks:
        out[f"audio→text R@{k}"] = recall_at_k(sim, min(k, len(unique)), target)
        # text → audio: a text's correct clips are all clips with that transcript
        top = sim.T.topk(min(k, len(a)), dim=1).indices                      # (U, k)
        out[f"text→audio R@{k}"] = (target[top] == torch.arange(len(unique))[:, None]).any(1).float().mean().item()
    return out


def distinct_batch(texts: Sequence[str], batch: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of up to ``batch`` items with pairwise different texts, drawn at random."""
    order = torch.randperm(len(texts), generator=generator).tolist()
    seen, picked = set(), []
    for i in order:
        if texts[i] not in seen:
            seen.add(texts[i])
            picked.append(i)
            if len(picked) == batch:
                break
    return torch.tensor(picked)


def train_clap(config: CLAPConfig, log_mel, texts: Sequence[str], steps: int = 1200, batch: int = 34,
               lr: float = 2e-3, max_shift: int = 8, seed: int = 0, name: str = "clap-spoken",
               data_key: dict | None = None, verbose: bool = True):
    """Train (or load from the cache) a CLAP on (spoken clip, transcript) pairs; returns the Artifact.

    ``data_key`` says how ``log_mel`` and ``texts`` were made and goes into the cache key. Load the
    model with :func:`load_clap`. The defaults are the measured recipe: with ``spoken_pairs(1500,
    1200, "train", 0)`` (34 distinct texts, so a batch of 34 holds each once at most) and
    :class:`CLAPConfig`'s default size, one run of 1200 steps took about 110 s on one busy core and named 95% of
    300 words of held-out voices (800 steps: 82%).
    """
    from .cache import Artifact, cached
    from .training import train

    if not isinstance(config, CLAPConfig):
        raise TypeError(f"config must be a CLAPConfig, got {type(config).__name__}")
    c = config.audio
    X = check_log_mel(log_mel, "log_mel", c.n_mels, c.frames)
    texts = checks.text_list(texts, "texts")
    if len(texts) != len(X):
        raise ValueError(f"texts must hold one transcript per clip ({len(X)}), got {len(texts)}")
    ids = tokenize(texts, config.max_length)                                 # (N, L), checked once here
    recipe = {"model": config.to_dict(), **training_recipe(steps, batch, lr, max_shift, seed, data_key, len(X), min_batch=2)}

    def build() -> Artifact:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = CLAP(config)

        def loss_fn(step):
            i = distinct_batch(texts, batch, g)
            logits = model(augment(X[i], max_shift, g), ids[i])             # (B, B)
            return clip_loss(logits), {"temperature scale": model.logit_scale.exp().item()}

        history = train(model, loss_fn, steps, lr=lr, desc="CLAP", after_step=lambda s: model.clamp_logit_scale_())
        return Artifact(name, recipe, {k: v.cpu() for k, v in model.state_dict().items()}, history=history)

    return cached(name, recipe, build, verbose=verbose)


def load_clap(artifact) -> CLAP:
    """The :class:`CLAP` stored by :func:`train_clap`, in eval mode."""
    config = getattr(artifact, "config", None)
    if not isinstance(config, dict) or "model" not in config:
        raise TypeError("artifact must be what vlmlib.clap.train_clap returned")
    model = CLAP(CLAPConfig(**config["model"]))
    model.load_state_dict(artifact.state_dict)
    return model.eval()
