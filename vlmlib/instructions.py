"""Chapter 8's instruction data, written from ShapesWorld's ground truth, and hallucination measured.

LLaVA (Liu et al., 2023) had text-only GPT-4 write its conversations from what COCO says about an
image (captions and object boxes): the writer never saw a pixel. This module does the same from
what ShapesWorld knows about a scene (every shape's colour, kind, size, cell and centre): each
:class:`Instruction` is a question about the image and its one right answer, tagged with its type
so that accuracy can be measured per type.

Types (:data:`QUESTION_TYPES`): ``colour``, ``kind``, ``position``, ``size`` (of a shape named
unambiguously), ``count`` (all shapes, or those of one colour), ``existence`` (yes or no, balanced),
``relation`` ("is the red circle to the left of the blue square?", yes or no, balanced), ``closer``
(a little reasoning, in three-shape scenes: "which shape is closer to the red circle?") and
``description`` (the detailed description: every shape with all its attributes).

:func:`mentioned_shapes` reads which (colour, kind) pairs a description names, and
:func:`hallucination` measures CHAIR (Rohrbach et al., 2018): the share of named shapes that are not
in the image (CHAIR_i) and the share of descriptions that name at least one (CHAIR_s).
:func:`corrupt_description` writes the *rejected* half of a preference pair: the faithful
description with one shape altered or one invented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .shapesworld import (COLOUR_NAMES, KINDS, NUMBER_WORDS, POSITION_PHRASES, RELATIONS, Shape, caption,
                          relations)

QUESTION_TYPES = ("colour", "kind", "position", "size", "count", "existence", "relation", "closer", "description")
#: Words these questions use that ShapesWorld's captions do not (the chat tokenizer adds them).
EXTRA_WORDS = ("which", "closer")
DESCRIBE = "what is in the picture?"


@dataclass(frozen=True)
class Instruction:
    """One question about an image, its right answer and its type (one of :data:`QUESTION_TYPES`)."""

    type: str
    question: str
    answer: str


def _scene(shapes) -> list[Shape]:
    if not isinstance(shapes, (list, tuple)) or not shapes or not all(isinstance(s, Shape) for s in shapes):
        raise TypeError("shapes must be a non-empty list of Shape (one scene's ground truth, data.shapes[i])")
    return list(shapes)


def _rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def _name(s: Shape) -> str:
    return f"{s.colour} {s.kind}"


def instructions(shapes: Sequence[Shape], rng: np.random.Generator) -> list[Instruction]:
    """Every type of question this scene can answer unambiguously, one of each (drawn with ``rng``).

    A shape is named by its colour and kind only when no other shape in the scene shares both; a
    question whose answer the image would not settle is left out, so a scene may lack some types.
    """
    shapes, rng = _scene(shapes), _rng(rng)
    pairs = [(s.colour, s.kind) for s in shapes]
    unique = [s for s in shapes if pairs.count((s.colour, s.kind)) == 1]
    kinds, colours = [s.kind for s in shapes], [s.colour for s in shapes]
    out: list[Instruction] = []

    def pick(items):
        return items[int(rng.integers(len(items)))]

    one_kind = [s for s in shapes if kinds.count(s.kind) == 1]
    if one_kind:
        s = pick(one_kind)
        out.append(Instruction("colour", f"what colour is the {s.kind}?", s.colour))
    one_colour = [s for s in shapes if colours.count(s.colour) == 1]
    if one_colour:
        s = pick(one_colour)
        out.append(Instruction("kind", f"what shape is the {s.colour} one?", s.kind))
    if unique:
        s = pick(unique)
        out.append(Instruction("position", f"where is the {_name(s)}?", s.position))
        s = pick(unique)
        out.append(Instruction("size", f"what size is the {_name(s)}?", s.size))
    if rng.random() < 0.5:
        out.append(Instruction("count", "how many shapes are there?", NUMBER_WORDS[len(shapes)]))
    else:
        c = pick(list(COLOUR_NAMES))
        out.append(Instruction("count", f"how many {c} shapes are there?", NUMBER_WORDS[colours.count(c)]))
    if rng.random() < 0.5:
        c, k = pick(pairs)
        out.append(Instruction("existence", f"is there a {c} {k}?", "yes"))
    else:
        c, k = pick([(c, k) for c in COLOUR_NAMES for k in KINDS if (c, k) not in pairs])
        out.append(Instruction("existence", f"is there a {c} {k}?", "no"))
    ordered = [(a, b) for a in unique for b in unique if a is not b and relations(a, b)]
    if ordered:
        a, b = pick(ordered)
        true = relations(a, b)
        if rng.random() < 0.5:
            out.append(Instruction("relation", f"is the {_name(a)} {pick(true)} the {_name(b)}?", "yes"))
        else:
            rel = pick([r for r in RELATIONS if r not in true])
            out.append(Instruction("relation", f"is the {_name(a)} {rel} the {_name(b)}?", "no"))
    if len(shapes) == 3 and len(unique) == 3:
        for ref in rng.permutation(3):
            r = shapes[int(ref)]
            others = sorted((math.hypot(o.x - r.x, o.y - r.y), i) for i, o in enumerate(shapes) if o is not r)
            (d1, i1), (d2, _) = others
            if d1 < 0.75 * d2:            # clearly closer, so the answer does not hang on a pixel
                out.append(Instruction("closer", f"which shape is closer to the {_name(r)}?",
                                       f"the {_name(shapes[i1])}"))
                break
    out.append(Instruction("description", DESCRIBE, caption(shapes, "full")))
    return out


def mentioned_shapes(text: str) -> list[tuple[str, str]]:
    """The (colour, kind) pairs a description names, in order: "a small red circle at the top and a
    blue square" -> [("red", "circle"), ("blue", "square")]. A kind without a colour is not counted."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    words = text.replace("?", " ").replace(".", " ").split()
    return [(w, words[i + 1]) for i, w in enumerate(words[:-1]) if w in COLOUR_NAMES and words[i + 1] in KINDS]


def hallucination(descriptions: Sequence[str], scenes: Sequence[Sequence[Shape]]) -> dict[str, float]:
    """CHAIR (Rohrbach et al., 2018) for descriptions of ShapesWorld scenes.

    ``chair_i``: the share of named shapes (a colour and a kind) that are not in the scene;
    ``chair_s``: the share of descriptions that name at least one such shape; ``named``: shapes named
    per description; ``recall``: the share of the scenes' shapes that are named.
    """
    if isinstance(descriptions, str) or not isinstance(descriptions, (list, tuple)):
        raise TypeError("descriptions must be a list of strings, one per scene")
    if not isinstance(scenes, (list, tuple)) or len(scenes) != len(descriptions) or not descriptions:
        raise ValueError(f"scenes must be a list with one scene per description ({len(descriptions)}), "
                         f"got {len(scenes) if isinstance(scenes, (list, tuple)) else type(scenes).__name__}")
    named = wrong = bad = found = total = 0
    for text, shapes in zip(descriptions, scenes):
        truth = {(s.colour, s.kind) for s in _scene(shapes)}
        said = mentioned_shapes(text)
        n_wrong = sum(p not in truth for p in said)
        named, wrong, bad = named + len(said), wrong + n_wrong, bad + (n_wrong > 0)
        found, total = found + len(truth & set(said)), total + len(truth)
    return {"chair_i": wrong / named if named else 0.0, "chair_s": bad / len(descriptions),
            "named": named / len(descriptions), "recall": found / total}


def corrupt_description(shapes: Sequence[Shape], rng: np.random.Generator) -> str:
    """The faithful description with one hallucination: a shape's colour or kind changed to one that
    makes a pair absent from the scene, or an invented shape added (each a third of the time)."""
    shapes, rng = _scene(shapes), _rng(rng)
    present = {(s.colour, s.kind) for s in shapes}
    u = rng.random()
    if u < 2 / 3:
        i = int(rng.integers(len(shapes)))
        s = shapes[i]
        if u < 1 / 3:
            options = [c for c in COLOUR_NAMES if (c, s.kind) not in present]
            new = Shape(options[int(rng.integers(len(options)))], s.kind, s.size, s.position, s.x, s.y, s.radius)
        else:
            options = [k for k in KINDS if (s.colour, k) not in present]
            new = Shape(s.colour, options[int(rng.integers(len(options)))], s.size, s.position, s.x, s.y, s.radius)
        return caption(shapes[:i] + [new] + shapes[i + 1:], "full")
    absent = [(c, k) for c in COLOUR_NAMES for k in KINDS if (c, k) not in present]
    c, k = absent[int(rng.integers(len(absent)))]
    free = [p for p in POSITION_PHRASES if p not in {s.position for s in shapes}]
    where = free[int(rng.integers(len(free)))] if free else shapes[0].position
    size = ("small", "large")[int(rng.integers(2))]
    invented = Shape(c, k, size, where, 0.0, 0.0, 1.0)
    return caption(shapes + [invented], "full")


def instruction_types(items: Sequence[Instruction]) -> dict[str, int]:
    """How many instructions of each type a list holds (every type listed, zeros included)."""
    items = list(items)
    if not all(isinstance(i, Instruction) for i in items):
        raise TypeError("items must be Instructions (from instructions())")
    return {t: sum(i.type == t for i in items) for t in QUESTION_TYPES}

