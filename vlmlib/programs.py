"""Programs that draw ShapesWorld scenes: a tiny language, its safe interpreter, and pass@k.

Introduced in notebook 10 (*From language to code*). A small code model reads a description, such
as "three small red circles in the top row", and writes a program that draws it::

    for col in range(3):
        scene.add("circle", colour="red", size="small", cell=(0, col))

**The language.** A program is one statement per line, indented by four spaces inside a loop:

- ``scene.add(kind, colour=..., size=..., cell=(row, col))`` adds one shape. The kind is the one
  positional argument (a string); ``colour``, ``size`` and ``cell`` are keywords (the canonical text
  writes them in this order; any order runs). ``cell`` is a pair on ShapesWorld's 3×3 grid: row 0 is
  the top, column 0 the left, so ``cell=(0, 2)`` is the top right.
- ``for NAME in range(a)`` or ``range(a, b)``, with whole-number literals and at most
  :data:`MAX_ITERATIONS` (9) iterations, over a body of ``scene.add`` calls. Inside the body, the
  loop variable may stand for the row or the column of ``cell``. Loops do not nest.

That is all: no variables, arithmetic, other functions, imports or attributes. The language is
small on purpose: a program is checked before it runs, and what is not on the allow-list is refused
with a reason that names the line and the construct.

**Running a program without exec or eval.** Python's ``exec`` would run *anything* a model (or a
student) writes: ``__import__('os').system(...)``, an endless loop, a string of 10 GB. The course's
way, the usual one for a language of this size, has three steps:

1. *parse* the text with ``ast.parse`` (which only reads it: nothing runs), after capping its length
   (:data:`MAX_CHARS`); a text Python cannot read is a failure with the parser's message;
2. *check* the tree against an allow-list: a module of ``scene.add(...)`` expression statements and
   ``for`` loops over ``range(...)`` of literals; string and integer literals, the pair of ``cell``
   and the loop variable. The check turns the tree into a short list of instructions;
3. *interpret* the instructions with our own loop, which counts steps (:data:`STEP_LIMIT`) and
   watches the clock (:data:`TIME_LIMIT`), and places shapes in a scene.

The scene refuses what cannot be drawn: an unknown colour, kind or size, a cell outside the grid, a
cell that already holds a shape, a fourth shape, and an empty scene. Scenes hold 1 to
:data:`MAX_SHAPES` (3) shapes because the scene judge (:mod:`vlmlib.scene_judge`) was trained on
scenes of 1 to 3 shapes, and it must be able to read every drawn program. :func:`run` returns a
:class:`Result` and never raises on any text: every failure is a reason.

**The data** (:func:`dataset`). Each :class:`Example` has a description, a reference program in
the canonical text, a spec (what counts as correct) and a family:

- ``"scene"`` (5 in 10 examples): 1 to 3 shapes, described by :func:`vlmlib.shapesworld.caption`
  ("a small red circle at the top left and a large blue square in the centre"); correct means
  exactly these shapes (colour, kind, size, cell), in any order;
- ``"relation"`` (3 in 10): chapter 6's two-shape prompts ("a red circle to the left of a blue
  square"); the reference program picks one layout where the relation holds (sizes drawn); correct
  means :func:`vlmlib.scene_judge.faithful`: exactly two shapes, of the named pairs, in that relation;
- ``"line"`` (2 in 10): "three small red circles in the top row", "two large blue squares in the
  left column"; the reference program is a loop, and for two shapes it fills the first two cells of
  the line (``range(2)``); correct means exactly that many shapes of that colour, kind and size, all
  in that row or column (any two of its three cells for "two").

Splits follow ShapesWorld's held-out colour–kind pairs (:data:`vlmlib.shapesworld.HELD_OUT`):
``"train"`` and ``"test"`` never name a held-out pair (they are two streams of the same
distribution, so a test description may also occur in the training set: the families have only
hundreds to a few thousand distinct descriptions); every ``"holdout"`` description names at least one
held-out pair, a composition the model never saw.

**Judging.** :func:`check_scene` decides whether a scene meets a spec, with a reason. It is used on
the ground truth of a run (:func:`passes`: judged by execution) and on what the scene judge reads in
pixels (:func:`judge_pixels`), so programs and chapter 6's generated images are scored alike.
:func:`pass_at_k` is the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import checks
from .shapesworld import (COLOUR_NAMES, HELD_OUT, KINDS, NUMBER_WORDS, POSITION_PHRASES, POSITIONS, RELATIONS,
                          SIZES, Shape, caption, place)

#: A program longer than this is refused before it is parsed.
MAX_CHARS = 2000
#: The most iterations one loop may run.
MAX_ITERATIONS = 9
#: The most shapes in a scene (the scene judge reads scenes of 1 to 3 shapes).
MAX_SHAPES = 3
#: The most instructions a run may execute, and its wall-clock limit in seconds (a safety net: the
#: language itself bounds a run, but the interpreter does not rely on that).
STEP_LIMIT = 100
TIME_LIMIT = 1.0
#: The rows and columns that the "line" family names.
LINES: tuple[str, ...] = ("top row", "middle row", "bottom row", "left column", "middle column", "right column")
FAMILIES: tuple[str, ...] = ("scene", "relation", "line")
#: The families of examples 0..9, 10..19, ...: 5 scene, 3 relation, 2 line in every ten.
_CYCLE = ("scene", "relation", "scene", "line", "scene", "relation", "scene", "line", "scene", "relation")
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
_STREAM = {"train": 1, "test": 2, "holdout": 3}
_IMAGE_SIZE = 32
_JITTER = 0.0625            # ShapesWorld's centre jitter: ±2 px at 32 px


# -- cells ----------------------------------------------------------------------------------------
def cell_of(position: str) -> tuple[int, int]:
    """The ``(row, col)`` of a ShapesWorld position name: ``cell_of("top right") == (0, 2)``."""
    position = checks.choice(position, "position", POSITIONS)
    return divmod(POSITIONS.index(position), 3)


def position_of(cell: tuple[int, int]) -> str:
    """The position name of a ``(row, col)`` cell: ``position_of((1, 1)) == "centre"``."""
    if not isinstance(cell, (tuple, list)) or len(cell) != 2:
        raise TypeError(f"cell must be a (row, col) pair, got {checks._given(cell)}")
    row, col = checks.integer(cell[0], "row", 0, 2), checks.integer(cell[1], "col", 0, 2)
    return POSITIONS[3 * row + col]


def _line_cells(line: str) -> list[tuple[int, int]]:
    name, what = line.split()
    i = ("top", "middle", "bottom").index(name) if what == "row" else ("left", "middle", "right").index(name)
    return [(i, j) for j in range(3)] if what == "row" else [(j, i) for j in range(3)]


# -- the canonical text ---------------------------------------------------------------------------
def _add_line(kind: str, colour: str, size: str, cell: tuple[Any, Any], indent: str = "") -> str:
    return f'{indent}scene.add("{kind}", colour="{colour}", size="{size}", cell=({cell[0]}, {cell[1]}))'


def format_program(shapes: Sequence[Any]) -> str:
    """The canonical program that adds ``shapes`` (a list of :class:`~vlmlib.shapesworld.Shape` or of
    dicts with ``colour``, ``kind``, ``size`` and ``position``), one ``scene.add`` line each, in order."""
    from .scene_judge import _as_scene

    scene = _as_scene(shapes, "shapes")
    if not scene:
        raise ValueError("shapes is empty: a program adds at least one shape")
    return "\n".join(_add_line(s["kind"], s["colour"], s["size"], cell_of(s["position"])) for s in scene)


def line_program(colour: str, kind: str, size: str, line: str, count: int) -> str:
    """The canonical loop that puts ``count`` (2 or 3) shapes in the first cells of ``line`` (one of
    :data:`LINES`): a row loops over ``col``, a column over ``row``; two shapes use ``range(2)``."""
    colour, kind = checks.choice(colour, "colour", COLOUR_NAMES), checks.choice(kind, "kind", KINDS)
    size, line = checks.choice(size, "size", SIZES), checks.choice(line, "line", LINES)
    count = checks.integer(count, "count", 2, 3)
    (r, c), row_line = _line_cells(line)[0], line.endswith("row")
    var = "col" if row_line else "row"
    cell = (r, var) if row_line else (var, c)
    return f"for {var} in range({count}):\n" + _add_line(kind, colour, size, cell, indent="    ")


def line_description(colour: str, kind: str, size: str, line: str, count: int) -> str:
    """"three small red circles in the top row" (``count`` is 2 or 3, ``line`` one of :data:`LINES`)."""
    colour, kind = checks.choice(colour, "colour", COLOUR_NAMES), checks.choice(kind, "kind", KINDS)
    size, line = checks.choice(size, "size", SIZES), checks.choice(line, "line", LINES)
    count = checks.integer(count, "count", 2, 3)
    return f"{NUMBER_WORDS[count]} {size} {colour} {_PLURAL[kind]} in the {line}"


# -- the data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One problem: a description, a reference program (canonical text), what counts as correct, its family.

    ``spec`` is one of (see :func:`check_scene`):
    ``{"scene": [{"colour", "kind", "size", "position"}, ...]}`` (family ``"scene"``),
    ``{"shapes": [(colour, kind), (colour, kind)], "relation": phrase}`` (``"relation"``, the scene
    judge's two-shape spec) or ``{"line": "top row", "count": 3, "colour", "kind", "size"}`` (``"line"``).
    """

    description: str
    program: str
    spec: dict = field(hash=False)
    family: str


def _centre(position: str) -> tuple[float, float]:
    row, col = cell_of(position)
    return (col + 0.5) * _IMAGE_SIZE / 3, (row + 0.5) * _IMAGE_SIZE / 3


def _pairs_for(split: str) -> list[tuple[str, str]]:
    held = set(HELD_OUT)
    every = [(c, k) for c in COLOUR_NAMES for k in KINDS]
    return every if split == "holdout" else [p for p in every if p not in held]


def _draw_pairs(rng: np.random.Generator, split: str, count: int) -> list[tuple[str, str]]:
    """``count`` colour–kind pairs for a split: train and test from the pairs that are not held out;
    holdout from all pairs, drawn again until at least one is held out."""
    pairs = _pairs_for(split)
    while True:
        pick = [pairs[i] for i in rng.integers(len(pairs), size=count)]
        if split != "holdout" or any(p in HELD_OUT for p in pick):
            return pick


def _scene_example(rng: np.random.Generator, split: str) -> Example:
    count = int(rng.integers(1, MAX_SHAPES + 1))
    pairs = _draw_pairs(rng, split, count)
    cells = rng.permutation(len(POSITIONS))[:count]
    sizes = rng.integers(len(SIZES), size=count)
    shapes = [place(c, k, SIZES[s], *_centre(POSITIONS[p])) for (c, k), s, p in zip(pairs, sizes, cells)]
    spec = {"scene": [{"colour": s.colour, "kind": s.kind, "size": s.size, "position": s.position} for s in shapes]}
    return Example(caption(shapes, "full"), format_program(shapes), spec, "scene")


def _relation_example(rng: np.random.Generator, split: str) -> Example:
    while True:                                  # two different pairs: "a red circle ... a red circle" is vague
        (a, b) = _draw_pairs(rng, split, 2)
        if a != b:
            break
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    layouts = [(p, q) for p in range(9) for q in range(9) if p != q and _holds(relation, divmod(p, 3), divmod(q, 3))]
    p, q = layouts[int(rng.integers(len(layouts)))]
    sizes = rng.integers(len(SIZES), size=2)
    shapes = [place(c, k, SIZES[s], *_centre(POSITIONS[cell])) for (c, k), s, cell in zip((a, b), sizes, (p, q))]
    spec = {"shapes": [a, b], "relation": relation}
    return Example(f"a {a[0]} {a[1]} {relation} a {b[0]} {b[1]}", format_program(shapes), spec, "relation")


def _line_example(rng: np.random.Generator, split: str) -> Example:
    (colour, kind), = _draw_pairs(rng, split, 1)
    size = SIZES[int(rng.integers(len(SIZES)))]
    line = LINES[int(rng.integers(len(LINES)))]
    count = int(rng.integers(2, 4))
    spec = {"line": line, "count": count, "colour": colour, "kind": kind, "size": size}
    return Example(line_description(colour, kind, size, line, count), line_program(colour, kind, size, line, count),
                   spec, "line")


_MAKERS = {"scene": _scene_example, "relation": _relation_example, "line": _line_example}


def dataset(n: int, split: str = "train", seed: int = 0) -> list[Example]:
    """``n`` problems of a split (``"train"``, ``"test"`` or ``"holdout"``), the same for the same arguments.

    Example ``i`` is drawn from its own generator (seed, split, i), so ``dataset(10)`` is the start of
    ``dataset(100)``. Families cycle through a fixed pattern of ten: 5 scene, 3 relation, 2 line.
    """
    n = checks.integer(n, "n", minimum=0)
    split = checks.choice(split, "split", tuple(_STREAM))
    seed = checks.integer(seed, "seed", minimum=0)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, _STREAM[split], i])
        out.append(_MAKERS[_CYCLE[i % len(_CYCLE)]](rng, split))
    return out


def named_pairs(example: Example) -> list[tuple[str, str]]:
    """The colour–kind pairs an example's spec names (what the held-out splits are made of)."""
    if not isinstance(example, Example):
        raise TypeError(f"example must be an Example (from dataset), got {checks._given(example)}")
    spec = example.spec
    if "scene" in spec:
        return [(s["colour"], s["kind"]) for s in spec["scene"]]
    if "line" in spec:
        return [(spec["colour"], spec["kind"])]
    return [tuple(p) for p in spec["shapes"]]


# -- specs: what counts as correct ----------------------------------------------------------------
def _holds(relation: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether cell ``a`` = (row, col) stands in ``relation`` to cell ``b`` (as shapesworld.relations)."""
    (ra, ca), (rb, cb) = a, b
    return {"to the left of": ca < cb, "to the right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def _name(s: Mapping[str, str]) -> str:
    return f"a {s['size']} {s['colour']} {s['kind']} {POSITION_PHRASES[s['position']]}"


def check_spec(spec: Any, name: str = "spec") -> dict:
    """A spec, checked and normalised: one of :class:`Example`'s three forms, or any spec of
    :func:`vlmlib.scene_judge.check_spec` (chapter 6's one- and two-shape prompts)."""
    from .scene_judge import _as_scene
    from .scene_judge import check_spec as judge_spec

    if isinstance(spec, Mapping) and "scene" in spec:
        if set(spec) != {"scene"}:
            raise ValueError(f"a scene {name} has the one key 'scene', got {sorted(spec)}")
        scene = _as_scene(spec["scene"], f"{name}['scene']")
        if not 1 <= len(scene) <= MAX_SHAPES:
            raise ValueError(f"{name}['scene'] must hold 1 to {MAX_SHAPES} shapes, got {len(scene)}")
        return {"scene": scene}
    if isinstance(spec, Mapping) and "line" in spec:
        keys = {"line", "count", "colour", "kind", "size"}
        if set(spec) != keys:
            raise ValueError(f"a line {name} has exactly the keys {sorted(keys)}, got {sorted(spec)}")
        return {"line": checks.choice(spec["line"], f"{name}['line']", LINES),
                "count": checks.integer(spec["count"], f"{name}['count']", 2, 3),
                "colour": checks.choice(spec["colour"], f"{name}['colour']", COLOUR_NAMES),
                "kind": checks.choice(spec["kind"], f"{name}['kind']", KINDS),
                "size": checks.choice(spec["size"], f"{name}['size']", SIZES)}
    return judge_spec(spec, name)


def check_scene(scene: Any, spec: Any) -> tuple[bool, str]:
    """Whether ``scene`` meets ``spec``, and why not: ``(True, "")`` or ``(False, reason)``.

    ``scene`` is a list of :class:`~vlmlib.shapesworld.Shape` (a run's ground truth) or of the dicts
    that the scene judge reads (pixels); the same rules judge both. ``spec`` is checked by :func:`check_spec`.
    """
    from .scene_judge import _as_scene, faithful, two_shape_outcome

    scene, spec = _as_scene(scene), check_spec(spec)
    names = ", ".join(_name(s) for s in scene) or "no shape"
    if "scene" in spec:
        want = {s["position"]: s for s in spec["scene"]}
        have = {s["position"]: s for s in scene}
        missing = [_name(s) for p, s in want.items() if have.get(p) != s]
        extra = [_name(s) for p, s in have.items() if want.get(p) != s]
        if not missing and not extra:
            return True, ""
        return False, "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                + ([f"not asked for: {', '.join(extra)}"] if extra else []))
    if "line" in spec:
        cells = {POSITIONS[3 * r + c] for r, c in _line_cells(spec["line"])}
        shape = f"{spec['size']} {spec['colour']} {spec['kind']}"
        if len(scene) != spec["count"]:
            return False, f"expected {NUMBER_WORDS[spec['count']]} shapes, got {len(scene)}: {names}"
        for s in scene:
            if (s["size"], s["colour"], s["kind"]) != (spec["size"], spec["colour"], spec["kind"]):
                return False, f"expected every shape to be a {shape}, got {_name(s)}"
            if s["position"] not in cells:
                return False, f"{_name(s)} is not in the {spec['line']}"
        return True, ""
    if "shapes" in spec:
        if faithful(scene, spec):
            return True, ""
        (ca, ka), (cb, kb) = spec["shapes"]
        asked = f"a {ca or ''} {ka or 'shape'} {spec['relation']} a {cb or ''} {kb or 'shape'}".replace("  ", " ")
        return False, f"{two_shape_outcome(scene, spec)} (asked: {asked}; got: {names})"
    if faithful(scene, spec):
        return True, ""
    asked = ", ".join(f"{k}={v}" for k, v in spec.items())
    return False, f"expected exactly one shape with {asked}; got: {names}"
