"""CLIP, small enough to read in one sitting (Radford et al., 2021).

Introduced in chapter 2; chapter 3 varies it; the text-to-image and LLaVA chapters load the
trained model with :func:`load_clip` and use its two halves on their own::

    model, artifact = load_clip()
    image_emb = model.encode_image(images)     # (B, E), unit length
    text_emb = model.encode_text(input_ids)    # (B, E), unit length

The names follow the pseudocode of the paper's Figure 3:

- ``I_f = image_encoder(I)``, ``T_f = text_encoder(T)``   (:class:`~vlmlib.vit.ViT`, :class:`TextEncoder`)
- ``I_e = l2_normalize(I_f W_i)``, ``T_e = l2_normalize(T_f W_t)``   (:meth:`CLIP.encode_image`, ``encode_text``)
- ``logits = t · I_e T_eᵀ`` with ``t = exp(t′)``             (:meth:`CLIP.forward`)
- ``loss = (CE(logits, rows) + CE(logits, columns)) / 2``   (:func:`clip_loss`)

The book's symbols (chapters 2 and 3): ``t`` is the *scale* that multiplies the cosine
similarities, and ``t′ = log t`` is the learned parameter ``logit_scale`` (the paper's pseudocode
calls that parameter ``t`` and writes ``np.exp(t)``; SigLIP's paper writes ``t = exp(t′)``). ``t′``
starts at log(1/0.07), so t = 14.3, and is clamped to at most log(100) after each optimiser step
(:meth:`CLIP.clamp_logit_scale_`), as OpenCLIP does. :func:`siglip_loss`
is the sigmoid loss of chapter 3. :func:`load_hf_clip` loads a real ``transformers`` CLIP.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .cache import Artifact, cached
from .shapesworld import COLOUR_NAMES, KINDS, POSITION_PHRASES, POSITIONS, SIZES, Shape, ShapesWorld
from .tokenizer import shapes_tokenizer
from .vit import Block, ViT, ViTConfig, _boolean

LOGIT_SCALE_INIT = math.log(1 / 0.07)     # 2.6593: exp = 14.29
LOGIT_SCALE_MAX = math.log(100.0)         # the logits are never scaled by more than 100


# -- the model --------------------------------------------------------------------------------------
@dataclass
class CLIPConfig:
    """The size of a CLIP: a ViT image encoder, a text transformer and a shared embedding space."""

    image_size: int = 32
    patch_size: int = 8              # 4×4 patches of 8×8 pixels: 16 tokens, fast on a CPU
    vision_dim: int = 96
    vision_depth: int = 2
    vision_heads: int = 4
    vocab_size: int = 64
    max_length: int = 16
    text_dim: int = 64
    text_depth: int = 2
    text_heads: int = 4
    mlp_ratio: int = 2
    embed_dim: int = 64
    causal: bool = True              # CLIP's text mask; False attends both ways, ignoring padding
    eos_id: int = 3                  # the tokenizer's [EOS]: the text feature is read there
    pad_id: int = 0

    def __post_init__(self):
        for name in ("image_size", "patch_size", "vision_dim", "vision_depth", "vision_heads", "vocab_size",
                     "max_length", "text_dim", "text_depth", "text_heads", "mlp_ratio", "embed_dim"):
            setattr(self, name, checks.integer(getattr(self, name), f"CLIPConfig.{name}", minimum=1))
        self.max_length = checks.integer(self.max_length, "CLIPConfig.max_length", minimum=2)   # [BOS] … [EOS]
        self.causal = _boolean(self.causal, "CLIPConfig.causal")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPConfig.patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.vision_dim % self.vision_heads:
            raise ValueError(f"CLIPConfig.vision_heads {self.vision_heads} must divide vision_dim {self.vision_dim}")
        if self.text_dim % self.text_heads:
            raise ValueError(f"CLIPConfig.text_heads {self.text_heads} must divide text_dim {self.text_dim}")
        for name in ("eos_id", "pad_id"):
            setattr(self, name, checks.integer(getattr(self, name), f"CLIPConfig.{name}", minimum=0,
                                               maximum=self.vocab_size - 1))
        if self.eos_id == self.pad_id:
            raise ValueError(f"CLIPConfig.eos_id and pad_id must differ, both are {self.eos_id}")

    def vision(self) -> ViTConfig:
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, dim=self.vision_dim,
                         depth=self.vision_depth, heads=self.vision_heads, mlp_ratio=self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)


class TextEncoder(nn.Module):
    """A transformer over token ids; the feature of a text is the final state at its [EOS] token."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = self.config = config
        self.token_embed = nn.Embedding(c.vocab_size, c.text_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.max_length, c.text_dim))
        self.blocks = nn.ModuleList(Block(c.text_dim, c.text_heads, c.mlp_ratio) for _ in range(c.text_depth))
        self.norm = nn.LayerNorm(c.text_dim)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, text_dim) features: the final state at each text's first [EOS]."""
        z = self.states(input_ids)                                            # (B, L, D)
        eos = (input_ids == self.config.eos_id).int().argmax(dim=1)           # (B,) first [EOS]
        return z[torch.arange(len(z), device=z.device), eos]                  # (B, D)

    def states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, text_dim): every token's final state (after the last LayerNorm).

        Chapter 6 conditions an image generator on these, as Imagen does with its frozen encoder.
        """
        c = self.config
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be an integer tensor of shape (B, L) (use clip.tokenize), "
                            f"got {_describe(input_ids)}")
        if input_ids.ndim != 2 or input_ids.dtype not in _INTEGER_DTYPES or input_ids.numel() == 0:
            raise ValueError(f"input_ids must be a non-empty integer tensor of shape (B, L) (use clip.tokenize), "
                             f"got {_describe(input_ids)}")
        B, L = input_ids.shape
        if L > c.max_length:
            raise ValueError(f"texts of {L} tokens are longer than max_length={c.max_length}")
        low, high = input_ids.aminmax()
        if low < 0 or high >= c.vocab_size:
            raise ValueError(f"input_ids must be token ids in [0, {c.vocab_size - 1}] (the config's vocab_size), "
                             f"got values in [{low.item()}, {high.item()}]")
        input_ids = input_ids.long()
        has_eos = input_ids == c.eos_id                                       # (B, L)
        if not bool(has_eos.any(dim=1).all()):
            raise ValueError("every row of input_ids must contain the [EOS] token "
                             f"(id {c.eos_id}): tokenize with the ShapesWorld tokenizer")
        z = self.token_embed(input_ids) + self.pos_embed[:, :L]                # (B, L, D)
        if c.causal:
            mask = torch.ones(L, L, dtype=torch.bool, device=z.device).tril()  # (L, L): i sees j <= i
        else:
            mask = (input_ids != c.pad_id)[:, None, None, :]                  # (B, 1, 1, L)
        for block in self.blocks:
            z = block(z, mask)
        return self.norm(z)


class CLIP(nn.Module):
    """Two encoders, two projections into one space, and a learned temperature."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        if not isinstance(config, CLIPConfig):
            raise TypeError(f"config must be a CLIPConfig, got {type(config).__name__}")
        self.config = c = config
        self.image_encoder = ViT(c.vision())
        self.text_encoder = TextEncoder(c)
        self.image_projection = nn.Linear(c.vision_dim, c.embed_dim, bias=False)     # W_i
        self.text_projection = nn.Linear(c.text_dim, c.embed_dim, bias=False)        # W_t
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))              # t′ = log t

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, E) unit-length image embeddings I_e.

        Float64 images are made float32 and uint8 images (0–255) are scaled to [0, 1] (by the ViT).
        """
        return F.normalize(self.image_projection(self.image_encoder.features(images)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, E) unit-length text embeddings T_e."""
        return F.normalize(self.text_projection(self.text_encoder(input_ids)), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """logits_per_image (B_img, B_txt) = t · I_e T_eᵀ with t = exp(t′); logits_per_text is its transpose."""
        return self.encode_image(images) @ self.encode_text(input_ids).T * self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self, max_value: float = LOGIT_SCALE_MAX) -> None:
        """Keep t′ = log t in [0, log 100], so the scale t stays in [1, 100] (OpenCLIP does this after each step)."""
        if max_value != LOGIT_SCALE_MAX:                  # the default needs no check: this runs every step
            max_value = checks.number(max_value, "max_value", low=0.0)
        self.logit_scale.clamp_(0, max_value)


_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


# -- the losses -------------------------------------------------------------------------------------
def _check_logits(logits: torch.Tensor, square: bool = True) -> None:
    """Shape and dtype only: the losses run every training step, and NaN logits give a NaN loss,
    which :func:`vlmlib.training.train` reports."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a float tensor of shape (B, B), got {_describe(logits)}")
    if logits.ndim != 2 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a float tensor of shape (B, B), got {_describe(logits)}")
    if square and logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be square (image i goes with text i), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("logits are empty: a batch needs at least one pair")


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """The symmetric contrastive loss: cross-entropy over each row and over each column.

    Row i of ``logits_per_image`` (B, B) scores image i against every text; the matching text is i.
    """
    _check_logits(logits_per_image)
    labels = torch.arange(len(logits_per_image), device=logits_per_image.device)   # (B,)
    loss_images = F.cross_entropy(logits_per_image, labels)      # each image picks its text
    loss_texts = F.cross_entropy(logits_per_image.T, labels)     # each text picks its image
    return (loss_images + loss_texts) / 2


def siglip_loss(logits: torch.Tensor, bias: torch.Tensor | float) -> torch.Tensor:
    """The sigmoid loss of SigLIP (Zhai et al., 2023): every pair is its own binary problem.

    ``logits`` (B, B) are t · I_e T_eᵀ; the label of pair (i, j) is +1 if i == j else −1;
    L = −(1/B) Σ_i Σ_j log σ(label_ij · (logits_ij + b)). ``bias`` is the single learned number b
    (a float or a one-element tensor, such as an ``nn.Parameter``).
    """
    _check_logits(logits)
    if isinstance(bias, torch.Tensor):
        if bias.numel() != 1 or not bias.is_floating_point():
            raise ValueError(f"bias must be one number (SigLIP's scalar b), got {_describe(bias)}")
        bias = bias.reshape(())
    else:
        bias = checks.number(bias, "bias")
    n = len(logits)
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1        # (B, B): +1 / −1
    return -F.logsigmoid(labels * (logits + bias)).sum() / n


# -- zero-shot classification and retrieval ---------------------------------------------------------
def tokenize(texts: Sequence[str], max_length: int = 16) -> torch.Tensor:
    """ShapesWorld texts -> (N, max_length) ids, with [BOS] … [EOS] and padding.

    A text that does not fit in ``max_length`` tokens ([BOS] and [EOS] included) is an error, never
    cut short: a cut caption would lose its [EOS], where the text encoder reads its feature.
    """
    texts = checks.text_list(texts, "texts")
    if not texts:
        raise ValueError("texts is empty: give at least one string")
    max_length = checks.integer(max_length, "max_length", minimum=2)
    tok = shapes_tokenizer()
    rows = tok(texts)["input_ids"]
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    if len(rows[longest]) > max_length:
        raise ValueError(f"max_length={max_length} is too short for texts[{longest}] ({texts[longest]!r}), which "
                         f"takes {len(rows[longest])} tokens with [BOS] and [EOS]")
    if any(tok.unk_token_id in row for row in rows):
        split = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str
        bad = sorted({w for t in texts for w, _ in split(t.lower()) if tok.convert_tokens_to_ids(w) == tok.unk_token_id})
        raise ValueError(f"words outside the ShapesWorld vocabulary: {bad}")
    pad = tok.pad_token_id
    return torch.tensor([row + [pad] * (max_length - len(row)) for row in rows], dtype=torch.long)


@torch.no_grad()
def embed_texts(model: CLIP, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """Unit-length text embeddings (N, E) of a list of strings."""
    _check_model(model)
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    model.eval()
    device = model.logit_scale.device
    ids = tokenize(texts, model.config.max_length).to(device)
    return torch.cat([model.encode_text(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])


@torch.no_grad()
def embed_images(model: CLIP, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Unit-length image embeddings (N, E) of images (N, 3, H, W) in [0, 1] (float64 and uint8 converted)."""
    _check_model(model)
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    c = model.config
    images = checks.images(images, "images", shape=(3, c.image_size, c.image_size), from_uint8=True)
    model.eval()
    device = model.logit_scale.device
    return torch.cat([model.encode_image(images[i:i + batch_size].to(device))
                      for i in range(0, len(images), batch_size)])


def _check_model(model) -> None:
    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a vlmlib CLIP, got {type(model).__name__}")


def zero_shot_classifier(embed: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                         templates: Sequence[str]) -> torch.Tensor:
    """One unit-length weight vector per class, from prompts: (C, E).

    Each template holds ``{}`` where the class name goes (``"a {} on the left"``). With several
    templates the prompts' normalised embeddings are averaged and re-normalised (prompt ensembling,
    as in CLIP and OpenCLIP). ``embed`` maps a list of strings to (N, E) embeddings.
    """
    if not callable(embed):
        raise TypeError(f"embed must be a function from a list of strings to embeddings (N, E), got {embed!r}")
    for name, value in (("classnames", classnames), ("templates", templates)):
        if isinstance(value, (str, np.str_)):
            raise ValueError(f"{name} must be a non-empty list of strings, got one string {value!r}; wrap it in a list")
    classnames, templates = checks.text_list(classnames, "classnames"), checks.text_list(templates, "templates")
    if not classnames:
        raise ValueError("classnames must be a non-empty list of names, got an empty list")
    if not templates:
        raise ValueError("templates must be a non-empty list of strings with '{}', got an empty list")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"each template must contain '{{}}' exactly once, got {bad[:3]!r}")
    prompts = [t.replace("{}", c) for c in classnames for t in templates]
    emb = embed(prompts)
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or len(emb) != len(prompts):
        raise ValueError(f"embed must return a tensor (N, E) with one row per prompt ({len(prompts)}), "
                         f"got {_describe(emb)}")
    emb = F.normalize(emb.float(), dim=-1)                                    # (C·T, E)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)        # (C, E)
    return F.normalize(emb, dim=-1)


def zero_shot_predict(image_embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """The predicted class of each image: argmax over classes of cosine similarity, (N,)."""
    for name, x in (("image_embeddings", image_embeddings), ("classifier", classifier)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {_describe(x)}")
    if image_embeddings.ndim != 2 or classifier.ndim != 2 or image_embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(f"expected image embeddings (N, E) and a classifier (C, E), got "
                         f"{tuple(image_embeddings.shape)} and {tuple(classifier.shape)}")
    return (image_embeddings @ classifier.T).argmax(dim=1)


def recall_at_k(similarity: torch.Tensor, k: int, targets: torch.Tensor | None = None) -> float:
    """The fraction of queries (rows) whose correct item is among their k most similar columns.

    By default the correct item of query i is column i; ``targets`` (N,) gives it otherwise.
    """
    if not isinstance(similarity, torch.Tensor):
        raise TypeError(f"similarity must be a tensor (queries, items), got {_describe(similarity)}")
    if similarity.ndim != 2 or similarity.numel() == 0 or not similarity.is_floating_point():
        raise ValueError(f"similarity must be a non-empty float tensor (queries, items), got {_describe(similarity)}")
    if torch.isnan(similarity).any():
        raise ValueError("similarity holds NaN values: the ranking would be meaningless")
    n, m = similarity.shape
    k = checks.integer(k, "k", minimum=1, maximum=m)
    if targets is None:
        if n != m:
            raise ValueError(f"without targets the similarity must be square, got shape {(n, m)}")
        targets = torch.arange(n, device=similarity.device)
    else:
        targets = checks.labels(targets, "targets", classes=m, length=n).to(similarity.device)
    top = similarity.topk(k, dim=1).indices                                   # (N, k)
    return (top == targets[:, None]).any(dim=1).float().mean().item()


# -- ShapesWorld prompts ----------------------------------------------------------------------------
#: For each attribute: templates that put the value in a sentence, ensembled over the other
#: attributes so that no single wording decides.
def attribute_templates(attribute: str) -> list[str]:
    """Prompt templates (with ``{}``) to classify one attribute of ShapesWorld images."""
    attribute = checks.choice(attribute, "attribute", ("colour", "kind", "size", "position"))
    if attribute == "colour":
        return [f"a {{}} {k}" for k in KINDS] + ["a {} shape"]
    if attribute == "kind":
        return ["a {}"] + [f"a {c} {{}}" for c in COLOUR_NAMES]
    if attribute == "size":
        return ["a {} shape"] + [f"a {{}} {k}" for k in KINDS]
    if attribute == "position":
        return ["a shape {}"] + [f"a {k} {{}}" for k in KINDS]
    raise ValueError(f"attribute must be 'colour', 'kind', 'size' or 'position', got {attribute!r}")


def attribute_classnames(attribute: str) -> list[str]:
    """The words that fill the templates of :func:`attribute_templates`."""
    names = {"colour": list(COLOUR_NAMES), "kind": list(KINDS), "size": list(SIZES),
             "position": [POSITION_PHRASES[p] for p in POSITIONS]}
    return names[checks.choice(attribute, "attribute", list(names))]


@torch.no_grad()
def zero_shot_accuracy(model: CLIP, images: torch.Tensor, labels: dict[str, np.ndarray],
                       attributes: Sequence[str] = ("colour", "kind", "size", "position"),
                       image_embeddings: torch.Tensor | None = None) -> dict[str, float]:
    """Zero-shot accuracy of each attribute, with the ensembled prompts of :func:`attribute_templates`.

    ``labels`` maps each attribute to the (N,) class indices of the images (``ShapesData.labels``).
    """
    _check_model(model)
    attributes = [checks.choice(a, "attributes[]", ("colour", "kind", "size", "position"))
                  for a in checks.text_list(attributes, "attributes")]
    img = image_embeddings if image_embeddings is not None else embed_images(model, images)
    if not isinstance(img, torch.Tensor) or img.ndim != 2:
        raise ValueError(f"image_embeddings must be a tensor (N, E), got {_describe(img)}")
    if not isinstance(labels, dict) or any(a not in labels for a in attributes):
        raise ValueError(f"labels must be a dict with the class indices of {attributes}, got "
                         f"{sorted(labels) if isinstance(labels, dict) else type(labels).__name__}")
    for a in attributes:
        checks.labels(labels[a], f"labels[{a!r}]", classes=len(attribute_classnames(a)), length=len(img))
    out = {}
    for a in attributes:
        clf = zero_shot_classifier(lambda t: embed_texts(model, t), attribute_classnames(a), attribute_templates(a))
        pred = zero_shot_predict(img, clf).cpu().numpy()
        out[a] = float((pred == np.asarray(labels[a])).mean())
    return out


# -- training data: captions that name all, or only some, of the attributes ------------------------
def partial_caption(shape: Shape, rng: np.random.Generator, colour: bool = True) -> str:
    """A caption that names a random non-empty subset of the shape's attributes.

    "a red shape", "a triangle on the left", "a large cross"… ``colour=False`` never names the
    colour and always names the kind (used for the grey copies of images).
    """
    if not isinstance(shape, Shape):
        raise TypeError(f"shape must be a ShapesWorld Shape (e.g. data.shapes[i][0]), got {type(shape).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    colour = _boolean(colour, "colour")
    while True:
        use = rng.random(4) < 0.5                 # colour, kind, size, position
        if not colour:
            use[0], use[1] = False, True
        if use.any():
            break
    words = ["a"] + ([shape.size] if use[2] else []) + ([shape.colour] if use[0] else [])
    words.append(shape.kind if use[1] else "shape")
    if use[3]:
        words.append(POSITION_PHRASES[shape.position])
    return " ".join(words)


@dataclass
class Recipe:
    """How a CLIP is trained on ShapesWorld (what the cache key is made of, with the model config)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    n_train: int = 40_000                 # training pairs (images); captions are redrawn each step
    p_partial: float = 0.5                # captions that name only some attributes
    p_grey: float = 0.8                   # images shown in grey, with captions that omit the colour
    hard_negatives: int = 4               # batches of groups that differ only in kind (1: random)
    loss: str = "clip"                    # "clip" (softmax) or "siglip" (sigmoid)
    siglip_bias: float | None = None      # SigLIP's initial bias b; None: -log(batch_size), see below
    world_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        # Checked here, before any data is built. Values are validated, not rewritten (1 stays 1, not
        # 1.0), so that a valid recipe keeps its cache key; NumPy scalars become Python numbers.
        for name, minimum in (("steps", 1), ("batch_size", 2), ("n_train", 2), ("world_seed", 0), ("seed", 0)):
            setattr(self, name, checks.integer(getattr(self, name), f"Recipe.{name}", minimum=minimum))
        self.hard_negatives = checks.integer(self.hard_negatives, "Recipe.hard_negatives", minimum=1,
                                             maximum=len(KINDS))
        checks.number(self.lr, "Recipe.lr", low=0.0, low_open=True)
        checks.number(self.weight_decay, "Recipe.weight_decay", low=0.0)
        checks.probability(self.p_partial, "Recipe.p_partial")
        checks.probability(self.p_grey, "Recipe.p_grey")
        self.loss = checks.choice(self.loss, "Recipe.loss", ("clip", "siglip"))
        if self.siglip_bias is not None:
            checks.number(self.siglip_bias, "Recipe.siglip_bias")
        for name in ("lr", "weight_decay", "p_partial", "p_grey", "siglip_bias"):
            if isinstance(getattr(self, name), (np.generic, torch.Tensor)):
                setattr(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict:
        return asdict(self)


def grey_copies(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) shown in grey: each pixel's luminance (0.299 R + 0.587 G + 0.114 B) in all
    three channels. Chapter 2's CLIP sees most of its training images this way."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 \
            or not images.dtype.is_floating_point:
        raise ValueError(f"images must be a float tensor (N, 3, H, W), got {_describe(images)}")
    grey = (images * torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype)[:, None, None]).sum(1, keepdim=True)
    return grey.expand_as(images).contiguous()


class CaptionedPool:
    """A fixed pool of training images; each draw gives a batch with freshly worded captions."""

    def __init__(self, world: ShapesWorld, n: int, p_partial: float, p_grey: float, seed: int,
                 hard_negatives: int = 1):
        if not isinstance(world, ShapesWorld):
            raise TypeError(f"world must be a ShapesWorld, got {type(world).__name__}")
        n = checks.integer(n, "n", minimum=1)
        p_partial, p_grey = checks.probability(p_partial, "p_partial"), checks.probability(p_grey, "p_grey")
        seed = checks.integer(seed, "seed", minimum=0)
        hard_negatives = checks.integer(hard_negatives, "hard_negatives", minimum=1, maximum=len(KINDS))
        data = world.sample(n, split="train", seed=seed, captions=None)
        self.images = data.tensor()                                          # (N, 3, H, W)
        self.grey = grey_copies(self.images)                                 # (N, 3, H, W)
        self.shapes = data.shapes
        self.p_partial, self.p_grey = p_partial, p_grey
        self.rng = np.random.default_rng([seed, 7])
        self.group = hard_negatives
        # Images that share colour, size and position, by kind: the hard negatives of each other.
        cell = (data.labels["colour"] * len(SIZES) + data.labels["size"]) * len(POSITIONS) + data.labels["position"]
        self.cells: dict[tuple[int, int], np.ndarray] = {}
        for key in np.unique(cell):
            for k in range(len(KINDS)):
                members = np.flatnonzero((cell == key) & (data.labels["kind"] == k))
                if len(members):
                    self.cells[(int(key), k)] = members
        self.cell, self.kind = cell, data.labels["kind"]

    def _indices(self, batch_size: int) -> np.ndarray:
        """Random images; with hard negatives, each joined by images that differ only in kind."""
        rng = self.rng
        batch_size = min(batch_size, len(self))
        if self.group == 1:
            return rng.choice(len(self), size=batch_size, replace=False)
        chosen: list[int] = []
        seen: set[int] = set()
        while len(chosen) < batch_size:
            anchor = int(rng.integers(len(self)))
            key, kind = int(self.cell[anchor]), int(self.kind[anchor])
            others = [k for k in rng.permutation(len(KINDS)) if k != kind and (key, k) in self.cells]
            group = [anchor] + [int(rng.choice(self.cells[(key, k)])) for k in others[: self.group - 1]]
            for i in group:
                if i not in seen and len(chosen) < batch_size:
                    seen.add(i)
                    chosen.append(i)
        return np.array(chosen)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, batch_size: int, max_length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of ``batch_size`` images (at most the pool's size) and their tokenized captions."""
        batch_size = checks.integer(batch_size, "batch_size", minimum=1)
        rng = self.rng
        idx = self._indices(batch_size)
        grey = rng.random(len(idx)) < self.p_grey
        texts = []
        for i, g in zip(idx, grey):
            shape = self.shapes[i][0]
            if g:
                texts.append(partial_caption(shape, rng, colour=False))
            elif rng.random() < self.p_partial:
                texts.append(partial_caption(shape, rng))
            else:
                texts.append(_full_caption(shape, rng))
        idx_t, grey_t = torch.from_numpy(idx), torch.from_numpy(grey)
        images = torch.where(grey_t[:, None, None, None], self.grey[idx_t], self.images[idx_t])
        return images, tokenize(texts, max_length)


def _full_caption(shape: Shape, rng: np.random.Generator) -> str:
    where = POSITION_PHRASES[shape.position]
    options = (f"a {shape.size} {shape.colour} {shape.kind} {where}",
               f"there is a {shape.size} {shape.colour} {shape.kind} {where}",
               f"{where} there is a {shape.size} {shape.colour} {shape.kind}")
    return options[int(rng.integers(len(options)))]


def _device(device) -> torch.device:
    from .settings import _device as settings_device

    return settings_device(device)


def _check_config_and_recipe(config, recipe) -> None:
    if not isinstance(config, CLIPConfig):
        raise TypeError(f"config must be a CLIPConfig, got {type(config).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")


def train_clip(config: CLIPConfig, recipe: Recipe, device: str | torch.device = "cpu",
               desc: str = "training CLIP") -> tuple[CLIP, dict[str, list[float]], float]:
    """Train a CLIP from scratch on ShapesWorld; return the model, its history and the seconds taken."""
    from .training import train

    _check_config_and_recipe(config, recipe)
    device = _device(device)
    torch.manual_seed(recipe.seed)
    world = ShapesWorld(seed=recipe.world_seed)
    pool = CaptionedPool(world, recipe.n_train, recipe.p_partial, recipe.p_grey, recipe.seed,
                         recipe.hard_negatives)
    model = CLIP(config).to(device)
    # SigLIP's paper starts at t = 10, b = -10, so that the first steps, when nearly every pair is a
    # negative one, are not large corrections. The default here is the book's own choice (chapter 3):
    # b = -log(n), for which sigmoid(b) ≈ 1/n, the share of positive pairs in a batch of n.
    b0 = recipe.siglip_bias if recipe.siglip_bias is not None else -math.log(recipe.batch_size)
    bias = nn.Parameter(torch.tensor(float(b0), device=device)) if recipe.loss == "siglip" else None
    if recipe.loss == "siglip":
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))        # SigLIP's initialisation of the scale: t = 10

    def loss_fn(step: int):
        images, ids = pool.batch(recipe.batch_size, config.max_length)
        logits = model(images.to(device), ids.to(device))                # (B, B)
        loss = clip_loss(logits) if bias is None else siglip_loss(logits, bias)
        return loss, {"temperature scale": model.logit_scale.exp().item()}

    params = list(model.parameters()) + ([bias] if bias is not None else [])
    start = time.perf_counter()
    history = train(model, loss_fn, recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
                    params=params, desc=desc, after_step=lambda step: model.clamp_logit_scale_())
    seconds = time.perf_counter() - start
    if bias is not None:
        history["bias"] = [bias.item()]
    return model, history, seconds


def default_settings(budget: str = "cpu") -> tuple[CLIPConfig, Recipe]:
    """The configuration and recipe of chapter 2's CLIP for a budget (``"cpu"`` or ``"gpu"``)."""
    budget = checks.choice(budget, "budget", ("cpu", "gpu"))
    if budget == "gpu":
        return CLIPConfig(patch_size=4, vision_dim=128, text_dim=128, embed_dim=128, vision_depth=4,
                          vision_heads=4), Recipe(steps=4000, batch_size=256, n_train=100_000)
    return CLIPConfig(), Recipe()


def build_clip(config: CLIPConfig, recipe: Recipe, name: str = "clip-shapes",
               device: str | torch.device = "cpu", verbose: bool = True) -> tuple[CLIP, Artifact]:
    """The trained CLIP for ``config`` and ``recipe``: from the cache, or trained now and cached."""
    _check_config_and_recipe(config, recipe)
    device = _device(device)
    key = {"model": config.to_dict(), "recipe": recipe.to_dict()}

    def build() -> Artifact:
        model, history, seconds = train_clip(config, recipe, device)
        world = ShapesWorld(seed=recipe.world_seed)
        metrics = {"train_seconds": seconds}
        for split in ("holdout", "test"):
            data = world.sample(1000, split=split, seed=99, captions=None)
            acc = zero_shot_accuracy(model, data.tensor(), data.labels)
            metrics.update({f"{split}_{k}": v for k, v in acc.items()})
        return Artifact(name, key, {k: v.cpu() for k, v in model.state_dict().items()}, metrics, history)

    art = cached(name, key, build, verbose=verbose)
    model = CLIP(config)
    model.load_state_dict(art.state_dict)
    model.eval()
    return model.to(device), art


def load_clip(budget: str | None = None, device: str | torch.device | None = None,
              verbose: bool = True) -> tuple[CLIP, Artifact]:
    """Chapter 2's trained CLIP (trained on first use, then loaded from the cache).

    ``model.encode_image`` and ``model.encode_text`` are its two halves; ``model.image_encoder`` is
    the ViT vision tower and ``model.text_encoder`` the text transformer.
    """
    from .settings import current

    settings = current()
    budget = budget or settings.budget
    device = _device(device) if device is not None else settings.device
    config, recipe = default_settings(budget)
    return build_clip(config, recipe, device=device, verbose=verbose)


def load_shipped(name: str, config: CLIPConfig | None = None, recipe: Recipe | None = None,
                 folder=None) -> tuple[CLIP, dict]:
    """A CLIP that ships inside the package, ``vlmlib/weights/<name>.{safetensors,json}``.

    Some rows of a chapter need a model that costs more than the chapter's time budget (chapter 2's
    CLIP trained without its data recipe, made by ``python -m tools.train_clip_plain``); it ships
    with vlmlib, as chapter 5's denoiser does. Returns ``(model, record)``, the record being the JSON
    (config, recipe, metrics, history). Raises ``LookupError`` when ``config`` or ``recipe`` is given
    and the shipped model was made with others (e.g. the GPU budget's recipe: train it then), and
    ``ValueError`` when the weights fail their checksum.
    """
    import hashlib
    import json
    from importlib.resources import files
    from pathlib import Path

    from safetensors.torch import load as load_safetensors

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be the name of a shipped checkpoint, e.g. 'clip-shapes-plain', got {name!r}")
    folder = Path(folder) if folder is not None else Path(str(files("vlmlib") / "weights"))
    meta, weights_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not meta.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no shipped checkpoint {name!r} in {folder}")
    record = json.loads(meta.read_text())
    for what, given in (("config", config), ("recipe", recipe)):
        if given is not None and record[what] != given.to_dict():
            raise LookupError(f"the shipped {name!r} was made with another {what}: {record[what]}")
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != record["weights_sha256"]:
        raise ValueError(f"{weights_path} fails its checksum: run `python -m tools.train_clip_plain` again")
    model = CLIP(CLIPConfig(**record["config"]))
    model.load_state_dict(load_safetensors(weights))
    return model.eval(), record


# -- the real thing ---------------------------------------------------------------------------------
def load_hf_clip(name_or_path: str = "openai/clip-vit-base-patch32", **kwargs):
    """A ``transformers`` CLIPModel and its processor, from the Hub or from a local folder.

    Returns ``(model, processor)``; the processor is ``None`` when the folder has none (e.g. a tiny
    model saved by a test). Raises ``OSError`` when the model cannot be found or downloaded.
    """
    import os

    from transformers import CLIPModel, CLIPProcessor

    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a model name or a folder, got {type(name_or_path).__name__}")
    if not name_or_path:
        raise ValueError("name_or_path must be a model name or a folder, got an empty string")
    model = CLIPModel.from_pretrained(name_or_path, **kwargs).eval()
    try:
        processor = CLIPProcessor.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, TypeError):
        processor = None
    return model, processor


@torch.no_grad()
def hf_zero_shot(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities (N_images, N_texts) of a ``transformers`` CLIPModel, from its two projections.

    ``pixel_values`` are what the model's processor returns (normalised, so not in [0, 1]);
    ``input_ids`` and ``attention_mask`` (N_texts, L) come from its tokenizer.
    """
    if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
        raise TypeError(f"model must be a transformers CLIPModel, got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    pixel_values = checks.images(pixel_values, "pixel_values", shape=(3, None, None), from_uint8=False).to(dtype)
    for name, x in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if x is None and name == "attention_mask":
            continue
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.dtype not in _INTEGER_DTYPES or x.numel() == 0:
            raise ValueError(f"{name} must be a non-empty integer tensor (N_texts, L), got {_describe(x)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    img = model.get_image_features(pixel_values=pixel_values).pooler_output     # (N, E)
    txt = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    return (img @ txt.T * model.logit_scale.exp()).softmax(dim=-1)
