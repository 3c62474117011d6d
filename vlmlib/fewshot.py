"""In-context few-shot captioning (chapter 8): what CLIP cannot do, at ShapesWorld size.

Flamingo (Alayrac et al., 2022) captions an image in a style it is shown only in its prompt: a few
interleaved (image, caption) examples, then the new image. It learns to do so from web pages where
images and text alternate. This module is the same idea at our scale.

A caption **style** (:data:`STYLES`) names which of a shape's attributes a caption gives, in which
order: ``("kind", "colour")`` writes "circle red and square blue". Most styles are used in training
(:data:`TRAIN_STYLES`); six (:data:`HELD_OUT_STYLES`) are never seen there, so following one can
only come from the examples in the prompt. A training sequence (:func:`interleaved_data`)
is 0 to 4 (image, caption) examples and one more image, every caption in the sequence in the same
style, in LLaVA-1.5's plain format (image tokens, then the caption, then [EOS]); the model learns
every caption of it, so it learns to continue a style it has seen in the sequence.
:func:`fewshot_scores` asks for captions of new images in each style after k examples and measures
how often the caption **follows the style** (each shape named by the style's attributes in the
style's order, whether or not they are right: :func:`follows`) and how often it is **exactly right**.
"""

from __future__ import annotations

import time
from itertools import permutations
from typing import Sequence

import numpy as np
import torch

from . import checks
from .llava import LlavaModel, apply_template, freeze_for_stage, llava_tokenizer
from .shapesworld import COLOUR_NAMES, KINDS, POSITION_PHRASES, SIZES, Shape, ShapesWorld

#: The attributes a style can name; ``position`` is written as ShapesWorld's phrase ("at the top left").
FIELDS = ("size", "colour", "kind", "position")
#: Caption styles: every order of one, two or three different attributes (40 styles), named by them.
STYLES: dict[str, tuple[str, ...]] = {" ".join(p): p for r in (1, 2, 3) for p in permutations(FIELDS, r)}
#: Styles never used in training: a caption in one of them can only follow the examples in the prompt.
HELD_OUT_STYLES = ("colour position", "kind size", "position colour", "size position kind", "kind colour size",
                   "position size colour")
TRAIN_STYLES = tuple(s for s in STYLES if s not in HELD_OUT_STYLES)
MAX_SHOTS = 4
_FIELD_OF = {**{c: "colour" for c in COLOUR_NAMES}, **{k: "kind" for k in KINDS}, **{s: "size" for s in SIZES}}
_PHRASES = sorted((p.split() for p in POSITION_PHRASES.values()), key=len, reverse=True)


def _style(style) -> tuple[str, ...]:
    return STYLES[checks.choice(style, "style", tuple(STYLES))]


def style_caption(shapes: Sequence[Shape], style: str) -> str:
    """The caption of a scene in a style: "circle red and square blue" for ``"kind colour"``."""
    fields = _style(style)
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, (list, tuple)) or not shapes or \
            not all(isinstance(s, Shape) for s in shapes):
        raise TypeError("shapes must be a non-empty list of Shape (one scene's ground truth, data.shapes[i])")
    parts = [" ".join(POSITION_PHRASES[s.position] if f == "position" else getattr(s, f) for f in fields)
             for s in shapes]
    return " and ".join(parts)


def signature(text: str) -> tuple[str, ...]:
    """The form of a caption: each word replaced by the attribute it names, a position phrase by
    ``"position"``; other words kept. ``signature("circle at the top") == ("kind", "position")``.
    Two captions follow the same style when their signatures are equal."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    words, out, i = text.split(), [], 0
    while i < len(words):
        phrase = next((p for p in _PHRASES if words[i:i + len(p)] == p), None)
        if phrase is not None:
            out.append("position")
            i += len(phrase)
        else:
            out.append(_FIELD_OF.get(words[i], words[i]))
            i += 1
    return tuple(out)


def follows(text: str, style: str) -> bool:
    """Whether a caption has the form of ``style``: every shape it names (the parts between "and")
    gives the style's attributes in the style's order, right or wrong. "circle small" follows
    ``"kind size"``; "small circle" does not."""
    fields = _style(style)
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    parts = text.split(" and ")
    return bool(text.strip()) and all(signature(part) == fields for part in parts)


def _messages(captions: Sequence[str | None]) -> list[dict]:
    """Interleaved messages: each image a user turn, each caption the assistant's; a final ``None``
    caption leaves the last image to be captioned."""
    messages: list[dict] = []
    for text in captions:
        messages.append({"role": "user", "content": [{"type": "image"}]})
        if text is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
    return messages


def interleaved_data(n: int, styles: Sequence[str] = TRAIN_STYLES, shots: Sequence[int] | None = None,
                     split: str = "train", seed: int = 0, world_seed: int = 0, max_shapes: int = 2):
    """``n`` interleaved sequences: ``(images, conversations, styles, scenes)``.

    Sequence i is k examples (image, caption) and one more image with its caption, k drawn from
    ``shots`` (default 0 to :data:`MAX_SHOTS`), every caption in the style ``styles[i]`` (drawn from
    ``styles``). ``images[i]`` is (k + 1, 3, 32, 32); ``scenes[i]`` the k + 1 scenes' shapes.
    """
    n = checks.integer(n, "n", minimum=1)
    styles = tuple(checks.choice(s, "styles", tuple(STYLES)) for s in checks.text_list(styles, "styles"))
    if not styles:
        raise ValueError("styles is empty: give at least one style")
    shots = tuple(range(MAX_SHOTS + 1)) if shots is None else tuple(
        checks.integer(k, "shots", minimum=0, maximum=MAX_SHOTS) for k in shots)
    if not shots:
        raise ValueError("shots is empty: give at least one number of examples")
    rng = np.random.default_rng([checks.integer(seed, "seed", minimum=0), 11])
    ks = [int(shots[int(j)]) for j in rng.integers(len(shots), size=n)]
    chosen = [styles[int(j)] for j in rng.integers(len(styles), size=n)]
    world = ShapesWorld(max_shapes=checks.integer(max_shapes, "max_shapes", minimum=1), seed=world_seed)
    data = world.sample(sum(k + 1 for k in ks), split=split, seed=seed, captions=None)
    pixels, images, convs, scenes, at = data.tensor(), [], [], [], 0
    for k, style in zip(ks, chosen):
        group = data.shapes[at:at + k + 1]
        images.append(pixels[at:at + k + 1])
        convs.append(_messages([style_caption(s, style) for s in group]))
        scenes.append(group)
        at += k + 1
    return images, convs, chosen, scenes


def train_interleaved(model: LlavaModel, images: Sequence[torch.Tensor], conversations: Sequence[list],
                      steps: int = 1500, batch_size: int = 16, lr: float = 3e-4, seed: int = 0,
                      desc: str = "interleaved training"):
    """Train on interleaved sequences (:func:`interleaved_data`), the projector and the language
    model as in stage 2, the loss on every caption; return ``(history, seconds)``."""
    from .training import train

    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    images, conversations = list(images), list(conversations)
    if not images or len(images) != len(conversations):
        raise ValueError(f"images and conversations must be non-empty lists of the same length, got "
                         f"{len(images)} and {len(conversations)}")
    freeze_for_stage(model, 2)
    batch = apply_template(conversations, model.n_patches, plain=True)
    device = next(model.projector.parameters()).device
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    start = time.perf_counter()

    def loss_fn(step: int):
        idx = torch.randint(len(images), (checks.integer(batch_size, "batch_size", minimum=1),), generator=g)
        width = int(mask[idx].sum(1).max())
        pixels = torch.cat([images[int(i)] for i in idx]).to(device)
        return model(pixels, ids[idx, :width], mask[idx, :width], labels=labels[idx, :width]).loss

    params = [p for p in model.parameters() if p.requires_grad]
    history = train(model, loss_fn, checks.integer(steps, "steps", minimum=1), lr=lr, weight_decay=0.0,
                    warmup=0.03, params=params, desc=desc)
    return history, time.perf_counter() - start


@torch.no_grad()
def fewshot_captions(model: LlavaModel, images: Sequence[torch.Tensor], example_captions: Sequence[Sequence[str]],
                     batch_size: int = 64, max_new_tokens: int = 24) -> list[str]:
    """Greedy captions of the last image of each group after its examples: ``images[i]`` is (k + 1, 3,
    H, W), ``example_captions[i]`` the k captions of its first k images."""
    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    images, example_captions = list(images), list(example_captions)
    if not images or len(images) != len(example_captions):
        raise ValueError("images and example_captions must be non-empty lists with one entry per query")
    for i, (group, caps) in enumerate(zip(images, example_captions)):
        if not isinstance(group, torch.Tensor) or group.ndim != 4 or len(group) != len(caps) + 1:
            raise ValueError(f"images[{i}] must be a tensor (k + 1, 3, H, W) for its {len(caps)} example(s) "
                             f"and the query, got {tuple(group.shape) if isinstance(group, torch.Tensor) else group!r}")
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    tok = llava_tokenizer()
    model.eval()
    device = next(model.projector.parameters()).device
    out: list[str] = []
    for i in range(0, len(images), batch_size):
        convs = [_messages(list(caps) + [None]) for caps in example_captions[i:i + batch_size]]
        batch = apply_template(convs, model.n_patches, plain=True, padding_side="left")
        pixels = torch.cat(images[i:i + batch_size]).to(device)
        new = model.generate(pixels, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens)
        out += [tok.decode(row, skip_special_tokens=True).strip() for row in new]
    return out


def fewshot_scores(model: LlavaModel, styles: Sequence[str] = HELD_OUT_STYLES, shots: Sequence[int] = (0, 1, 2, 4),
                   n: int = 100, split: str = "test", seed: int = 50) -> dict:
    """For each style and number of examples k: the share of ``n`` captions that follow the style
    (``"follows"``) and that are exactly right (``"exact"``), ``{style: {k: {...}}}``. The same
    query images are used for every k and style (only the examples before them change)."""
    styles = [checks.choice(s, "styles", tuple(STYLES)) for s in checks.text_list(styles, "styles")]
    shots = [checks.integer(k, "shots", minimum=0, maximum=MAX_SHOTS) for k in shots]
    n = checks.integer(n, "n", minimum=1)
    world = ShapesWorld(max_shapes=2)
    data = world.sample(n * (MAX_SHOTS + 1), split=split, seed=checks.integer(seed, "seed", minimum=0), captions=None)
    pixels = data.tensor().view(n, MAX_SHOTS + 1, *data.tensor().shape[1:])
    scenes = [data.shapes[j * (MAX_SHOTS + 1):(j + 1) * (MAX_SHOTS + 1)] for j in range(n)]
    out: dict = {}
    for style in styles:
        out[style] = {}
        for k in shots:
            groups = [torch.cat([pixels[j, 1:k + 1], pixels[j, :1]]) for j in range(n)]   # examples, then the query
            examples = [[style_caption(s, style) for s in scenes[j][1:k + 1]] for j in range(n)]
            said = fewshot_captions(model, groups, examples)
            truth = [style_caption(scenes[j][0], style) for j in range(n)]
            out[style][k] = {"follows": float(np.mean([follows(s, style) for s in said])),
                             "exact": float(np.mean([s.split() == t.split() for s, t in zip(said, truth)]))}
    return out
