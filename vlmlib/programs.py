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

The canonical text (:func:`format_program`, :func:`line_program`, what the reference programs are
written in) uses double quotes, four spaces of indentation and Unix line ends; comments, blank
lines, single quotes and other indentation that Python reads are accepted too.

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
distribution, so a test description may also occur in the training set: there are only 480 line
and 1,520 relation descriptions, and 360 of one shape; scenes of two and three shapes rarely repeat);
every ``"holdout"`` description names at least one held-out pair, a composition the model never saw.

**Judging.** :func:`check_scene` decides whether a scene meets a spec, with a reason. It is used on
the ground truth of a run (:func:`passes`: judged by execution) and on what the scene judge reads in
pixels (:func:`judge_pixels`), so programs and chapter 6's generated images are scored alike.
:func:`pass_at_k` is the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import ast
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import checks
from . import judge as J
from .scene_judge import _as_scene, _model, faithful, two_shape_outcome
from .scene_judge import check_spec as _judge_spec
from .shapesworld import (COLOUR_NAMES, HELD_OUT, KINDS, NUMBER_WORDS, POSITION_PHRASES, POSITIONS, RELATIONS,
                          SIZES, Shape, caption, draw, place)

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
    return _judge_spec(spec, name)


def check_scene(scene: Any, spec: Any) -> tuple[bool, str]:
    """Whether ``scene`` meets ``spec``, and why not: ``(True, "")`` or ``(False, reason)``.

    ``scene`` is a list of :class:`~vlmlib.shapesworld.Shape` (a run's ground truth) or of the dicts
    that the scene judge reads (pixels); the same rules judge both. ``spec`` is checked by :func:`check_spec`.
    """
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


# -- checking: from text to instructions ----------------------------------------------------------
class _Refused(Exception):
    """A program that cannot run; the message is the reason shown to the writer."""


@dataclass(frozen=True)
class _Add:
    line: int
    kind: Any
    colour: Any
    size: Any
    cell: tuple[Any, Any]          # ints, or the loop variable's name


@dataclass(frozen=True)
class _Loop:
    line: int
    var: str
    start: int
    stop: int
    body: tuple[_Add, ...]


#: Statements that are not in the language, by how a reason names them.
_STATEMENTS = {
    ast.Import: "import is", ast.ImportFrom: "import is", ast.While: "while loops are", ast.If: "if statements are",
    ast.FunctionDef: "def (functions) is", ast.AsyncFunctionDef: "def (functions) is", ast.ClassDef: "class is",
    ast.Assign: "assignments are", ast.AugAssign: "assignments are", ast.AnnAssign: "assignments are",
    ast.With: "with is", ast.AsyncWith: "with is", ast.AsyncFor: "async for is", ast.Try: "try is",
    ast.Raise: "raise is", ast.Return: "return is", ast.Delete: "del is", ast.Global: "global is",
    ast.Nonlocal: "nonlocal is", ast.Pass: "pass is", ast.Break: "break is", ast.Continue: "continue is",
    ast.Assert: "assert is", ast.Match: "match is",
}
#: Expressions refused wherever they appear, by how a reason names them.
_EXPRESSIONS = {
    ast.Lambda: "lambda is", ast.JoinedStr: "f-strings are", ast.NamedExpr: ":= is", ast.Await: "await is",
    ast.Yield: "yield is", ast.YieldFrom: "yield is", ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are", ast.DictComp: "comprehensions are", ast.GeneratorExp: "comprehensions are",
}
_SHOW = 40                          # the most characters of source a reason quotes


def _show(source: str, node: ast.AST) -> str:
    """The source text of ``node`` (no recursion over the tree), shortened for a reason."""
    text = ast.get_source_segment(source, node) or type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= _SHOW else text[:_SHOW - 1] + "…"


def _refuse(node: ast.AST, message: str) -> _Refused:
    return _Refused(f"line {getattr(node, 'lineno', '?')}: {message}")


def _banned(statement: ast.AST) -> None:
    """Refuse what no program may hold anywhere: names and attributes with underscores, lambda,
    f-strings and the like. ``ast.walk`` visits the tree with a queue (no recursion), so a deeply
    nested expression cannot exhaust the stack here."""
    found = []
    for node in ast.walk(statement):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            found.append((node, f"attribute {node.attr} is not allowed"))
        elif isinstance(node, ast.Name) and node.id.startswith("__"):
            found.append((node, f"name {node.id} is not allowed"))
        elif type(node) in _EXPRESSIONS:
            found.append((node, f"{_EXPRESSIONS[type(node)]} not allowed"))
    if found:                                  # the first in the text (the innermost of a chain a.b.c)
        node, message = min(found, key=lambda f: (f[0].lineno, f[0].end_lineno, f[0].end_col_offset))
        raise _refuse(node, message)


def _literal_int(node: ast.AST) -> int | None:
    """The value of an integer literal such as ``2`` or ``-1``; None for anything else (True too)."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sign * node.value
    return None


def _string(node: ast.AST, what: str, example: str, source: str) -> str:
    if isinstance(node, ast.Constant) and type(node.value) is str:
        return node.value
    raise _refuse(node, f"{what} must be a string such as {example}, got {_show(source, node)}")


def _add(node: ast.AST, source: str, var: str | None) -> _Add:
    """An expression statement: it must be a ``scene.add(...)`` call with the allowed arguments."""
    call = node.value
    func = getattr(call, "func", None)
    if not (isinstance(call, ast.Call) and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id == "scene"):
        got = f"{_show(source, func)}(...)" if isinstance(call, ast.Call) else _show(source, call)
        raise _refuse(node, f"only scene.add(...) calls are allowed, got {got}")
    if func.attr != "add":
        raise _refuse(node, f"scene has only the method add, got scene.{func.attr}")
    usage = 'scene.add("circle", colour="red", size="small", cell=(0, 2))'
    if any(isinstance(a, ast.Starred) for a in call.args):
        raise _refuse(node, f"scene.add(*...) is not allowed; write the arguments out: {usage}")
    if any(k.arg is None for k in call.keywords):
        raise _refuse(node, f"scene.add(**...) is not allowed; write the arguments out: {usage}")
    if len(call.args) != 1:
        raise _refuse(node, f"scene.add takes the kind as its one positional argument, got {len(call.args)}: {usage}")
    kind = _string(call.args[0], "the kind", '"circle"', source)
    given = {k.arg: k.value for k in call.keywords}
    unknown = [k for k in given if k not in ("colour", "size", "cell")]
    if unknown:
        raise _refuse(node, f"scene.add has no keyword {unknown[0]}; it takes colour=, size= and cell=")
    missing = [k for k in ("colour", "size", "cell") if k not in given]
    if missing:
        raise _refuse(node, f"scene.add needs colour=, size= and cell=; {' and '.join(missing)} missing: {usage}")
    colour = _string(given["colour"], "colour", '"red"', source)
    size = _string(given["size"], "size", '"small"', source)
    cell = given["cell"]
    if not isinstance(cell, ast.Tuple) or len(cell.elts) != 2:
        raise _refuse(node, f"cell must be a pair (row, col) such as (0, 2), got {_show(source, cell)}")
    parts = []
    for part in cell.elts:
        value = _literal_int(part)
        if value is not None:
            parts.append(value)
        elif isinstance(part, ast.Name) and part.id == var:
            parts.append(var)
        elif isinstance(part, ast.Name):
            where = f"only the loop variable {var} can be used here" if var else "there is no loop variable here"
            raise _refuse(node, f"unknown name {part.id} in cell; {where}")
        else:
            raise _refuse(node, f"the row and col of cell must be whole numbers or the loop variable, "
                                f"got {_show(source, part)}")
    return _Add(node.lineno, kind, colour, size, tuple(parts))


def _loop(node: ast.For, source: str) -> _Loop:
    if not isinstance(node.target, ast.Name):
        raise _refuse(node, f"the loop variable must be one name such as col, got {_show(source, node.target)}")
    var = node.target.id
    if var in ("scene", "range"):
        raise _refuse(node, f"the loop variable cannot be called {var}")
    it = node.iter
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"):
        raise _refuse(node, f"a loop must run over range(...), got {_show(source, it)}")
    bounds = [_literal_int(a) for a in it.args]
    if it.keywords or not 1 <= len(bounds) <= 2 or None in bounds:
        raise _refuse(node, f"range takes 1 or 2 whole-number literals such as range(3) or range(1, 3), "
                            f"got {_show(source, it)}")
    start, stop = (0, bounds[0]) if len(bounds) == 1 else bounds
    count = max(0, stop - start)             # not len(range(...)): that overflows for huge literals
    if count > MAX_ITERATIONS:
        raise _refuse(node, f"{_show(source, it)} has {count} iterations; at most {MAX_ITERATIONS} are allowed")
    if node.orelse:
        raise _refuse(node, "for ... else is not allowed")
    body = []
    for statement in node.body:
        if isinstance(statement, (ast.For, ast.AsyncFor, ast.While)):
            raise _refuse(statement, "loops inside loops are not allowed (a program has one level of loops)")
        if not isinstance(statement, ast.Expr):
            raise _statement_refused(statement)
        body.append(_add(statement, source, var))
    return _Loop(node.lineno, var, start, stop, tuple(body))


def _statement_refused(node: ast.AST) -> _Refused:
    what = _STATEMENTS.get(type(node), f"{type(node).__name__} is")
    return _refuse(node, f"{what} not allowed; a program is scene.add(...) calls and for loops over range(...)")


def _compile(source: str) -> list:
    """Parse and check ``source``; the instructions it stands for. Raises ``_Refused`` with a reason."""
    if len(source) > MAX_CHARS:
        raise _Refused(f"the program is {len(source)} characters long; at most {MAX_CHARS} are allowed")
    try:
        with warnings.catch_warnings():           # "invalid escape sequence" and the like: not the writer's concern here
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="exec")
    except SyntaxError as e:
        where = f"line {e.lineno}: " if e.lineno else ""
        raise _Refused(f"{where}Python cannot read this: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        raise _Refused(f"Python cannot read this: {type(e).__name__}: {str(e)[:80]}") from None
    instructions = []
    for node in tree.body:
        _banned(node)
        if isinstance(node, ast.Expr):
            instructions.append(_add(node, source, None))
        elif isinstance(node, ast.For):
            instructions.append(_loop(node, source))
        else:
            raise _statement_refused(node)
    return instructions


def allowed(source: str) -> tuple[bool, str]:
    """Whether ``source`` is a program of the language: parsed and checked against the allow-list,
    nothing run. ``(True, "")``, or ``(False, reason)``. A program can be allowed and still fail when
    it runs (an unknown colour, a cell outside the grid): :func:`run` says so."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a program as a string, got {checks._given(source)}")
    try:
        _compile(source)
    except _Refused as e:
        return False, str(e)
    return True, ""


# -- interpreting: instructions to a scene ---------------------------------------------------------
@dataclass
class Result:
    """What running a program gave: ``ok`` and, when not, the ``reason``; the ``shapes`` placed (ground
    truth) and the ``image`` (3, 32, 32) drawn from them (None when the program failed)."""

    ok: bool
    reason: str
    shapes: list[Shape] = field(default_factory=list)
    image: torch.Tensor | None = None


def _interpret(instructions: list) -> list[tuple[str, str, str, tuple[int, int]]]:
    """Run the instructions: (kind, colour, size, cell) per shape. Raises ``_Refused`` with a reason."""
    deadline = time.perf_counter() + TIME_LIMIT
    steps, placed = 0, {}

    def add(op: _Add, env: dict[str, int]) -> None:
        nonlocal steps
        steps += 1
        if steps > STEP_LIMIT:
            raise _Refused(f"line {op.line}: the program ran more than {STEP_LIMIT} steps")
        if time.perf_counter() >= deadline:
            raise _Refused(f"line {op.line}: the program ran past its time limit of {TIME_LIMIT} s")
        for value, what, options in ((op.kind, "kind", KINDS), (op.colour, "colour", COLOUR_NAMES),
                                     (op.size, "size", SIZES)):
            if value not in options:
                raise _Refused(f"line {op.line}: unknown {what} {value[:_SHOW]!r}; the {what}s are {', '.join(options)}")
        cell = tuple(env[p] if isinstance(p, str) else p for p in op.cell)
        if not all(0 <= p <= 2 for p in cell):
            shown = ", ".join(str(p) if abs(p) < 1000 else "…" for p in cell)
            raise _Refused(f"line {op.line}: cell ({shown}) is outside the 3×3 grid (row and col go from 0 to 2)")
        if cell in placed:
            line, kind, colour, size = placed[cell]
            raise _Refused(f"line {op.line}: cell {cell} already holds the {size} {colour} {kind} of line {line}")
        if len(placed) == MAX_SHAPES:
            raise _Refused(f"line {op.line}: a scene holds at most {MAX_SHAPES} shapes (the scene judge reads "
                           f"scenes of 1 to {MAX_SHAPES})")
        placed[cell] = (op.line, op.kind, op.colour, op.size)

    for op in instructions:
        if isinstance(op, _Add):
            add(op, {})
        else:
            for value in range(op.start, op.stop):
                for inner in op.body:
                    add(inner, {op.var: value})
    if not placed:
        raise _Refused("the program adds no shape; a scene needs 1 to 3")
    return [(kind, colour, size, cell) for cell, (_, kind, colour, size) in placed.items()]


def run(source: str, seed: int = 0) -> Result:
    """Check and run a program; never raises on any text (failures are a :class:`Result` with a reason).

    Each shape is placed (:func:`vlmlib.shapesworld.place`) at its cell's centre plus ShapesWorld's
    ±2 px jitter and radius jitter, drawn from ``seed``, and the scene is drawn with
    :func:`vlmlib.shapesworld.draw` (the same ``seed``).
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a program as a string, got {checks._given(source)}")
    seed = checks.integer(seed, "seed", minimum=0)
    try:
        placed = _interpret(_compile(source))
    except _Refused as e:
        return Result(False, str(e))
    rng = np.random.default_rng([seed, 10])
    shapes = []
    for kind, colour, size, (row, col) in placed:
        x = (col + 0.5) * _IMAGE_SIZE / 3 + rng.uniform(-_JITTER, _JITTER) * _IMAGE_SIZE
        y = (row + 0.5) * _IMAGE_SIZE / 3 + rng.uniform(-_JITTER, _JITTER) * _IMAGE_SIZE
        shapes.append(place(colour, kind, size, x, y, _IMAGE_SIZE, rng=rng))
    return Result(True, "", shapes, draw(shapes, _IMAGE_SIZE, seed=seed))


def passes(source: str, spec: Any, seed: int = 0) -> Result:
    """Run ``source`` and judge its scene by ground truth (:func:`check_scene`): ``ok`` when it ran and
    meets ``spec``; otherwise ``reason`` says what failed (the run, or the spec)."""
    spec = check_spec(spec)
    result = run(source, seed)
    if result.ok:
        result.ok, result.reason = check_scene(result.shapes, spec)
    return result


def judge_pixels(images: Any, specs: Sequence[Any], model=None) -> list[tuple[bool, str]]:
    """Judge images by what the scene judge reads in their pixels: per image ``(ok, reason)``, ok when the
    judge calls it a valid scene (validity > 0.5) and the scene it reads meets the spec
    (:func:`check_scene`, the rule used on ground truth). Works for drawn programs and for chapter 6's
    generated images alike. ``model=None`` uses the shipped judge."""
    model = _model(model)
    images = J.check_images(images)
    if isinstance(specs, Mapping) or not isinstance(specs, (list, tuple)):
        raise TypeError(f"specs must be a list of specs, one per image, got {checks._given(specs)}")
    if len(specs) != len(images):
        raise ValueError(f"specs must hold one spec per image ({len(images)}), got {len(specs)}")
    specs = [check_spec(s, f"specs[{i}]") for i, s in enumerate(specs)]
    scenes, validity = model.read_scenes(images), model.validity(images).tolist()
    out = []
    for scene, spec, v in zip(scenes, specs, validity):
        if v <= 0.5:
            out.append((False, f"the judge sees no valid ShapesWorld scene (validity {v:.2f})"))
        else:
            ok, reason = check_scene(scene, spec)
            out.append((ok, reason and f"the judge reads: {reason}"))
    return out


# -- pass@k ---------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021):
    the chance that at least one of ``k`` samples drawn without replacement from the ``n`` is correct,
    1 − C(n−c, k)/C(n, k), computed as 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which needs no huge binomials.
    (1 − (1 − c/n)^k, drawing with replacement, is biased.)"""
    n = checks.integer(n, "n", minimum=1)
    c = checks.integer(c, "c", minimum=0, maximum=n)
    k = checks.integer(k, "k", minimum=1, maximum=n)
    if n - c < k:                           # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_table(correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[int, float]:
    """pass@k for each k of ``ks``, averaged over problems; ``correct[i]`` holds whether each sample of
    problem ``i`` was correct (every problem needs at least max(ks) samples)."""
    if isinstance(correct, (str, bytes)) or not isinstance(correct, (list, tuple)) or not correct:
        raise TypeError(f"correct must be a non-empty list with one list of booleans per problem, "
                        f"got {checks._given(correct)}")
    counts = []
    for i, row in enumerate(correct):
        if not isinstance(row, (list, tuple)) or not all(isinstance(b, (bool, np.bool_)) for b in row):
            raise TypeError(f"correct[{i}] must be a list of booleans (one per sample), got {checks._given(row)}")
        counts.append((len(row), int(sum(row))))
    if isinstance(ks, (int, np.integer)) or not isinstance(ks, (list, tuple)) or not ks:
        raise TypeError(f"ks must be a non-empty list of integers such as [1, 5], got {checks._given(ks)}")
    fewest = min(n for n, _ in counts)
    ks = [checks.integer(k, f"ks[{i}]", minimum=1) for i, k in enumerate(ks)]
    if max(ks) > fewest:
        raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per problem; one problem has {fewest}")
    return {k: float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in ks}
