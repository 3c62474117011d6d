"""ShapesWorld: the small procedural world that every chapter trains on.

Introduced in notebook 00. An image holds one or more shapes; each shape has a **colour**, a
**kind**, a **size** and a **position** (a cell of a 3×3 grid), drawn with light jitter on a noisy
background. From the same ground truth come captions ("a large red circle at the top left"),
question–answer pairs ("what colour is the circle?" → "red") and integer attribute labels.

Some colour–kind combinations are **held out** of the training split (by default, for example, no
purple triangle is ever seen in training), so that zero-shot and compositional generalisation can
be measured. Everything is deterministic given the world's seed, the split and the sample seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from . import checks

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.16, 0.14),
    "green": (0.16, 0.74, 0.22),
    "blue": (0.20, 0.36, 0.96),
    "yellow": (0.96, 0.86, 0.12),
    "purple": (0.64, 0.26, 0.86),
    "cyan": (0.12, 0.84, 0.90),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
#: How each position reads inside a sentence.
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
#: How one shape can stand to another, read from their grid cells (chapter 6's two-shape prompts).
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": COLOUR_NAMES, "kind": KINDS, "size": SIZES, "position": POSITIONS,
}
#: Colour–kind combinations never shown in the training split (one per kind, one per colour).
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"), ("yellow", "circle"), ("cyan", "cross"), ("green", "square"),
)
SPLITS = ("train", "test", "holdout", "all")
#: Bumped whenever rendering or sampling changes, so that models cached for the old world are retrained.
RENDER_VERSION = 2
_SPLIT_STREAM = {"train": 1, "test": 2, "holdout": 3, "all": 4}

# Geometry, as fractions of the image size.
_RADIUS = {"small": 0.11, "large": 0.16}
_JITTER = 0.0625         # centre jitter inside the grid cell: ±2 px at 32 px, one 4-px patch period
_RADIUS_JITTER = 0.01


@dataclass(frozen=True)
class Shape:
    """One shape in a scene: its attributes and where it was drawn (in pixels)."""

    colour: str
    kind: str
    size: str
    position: str
    x: float
    y: float
    radius: float

    def __post_init__(self):
        # A fast test first: ShapesWorld.sample makes one Shape per drawn shape.
        if (type(self.colour) is str and type(self.kind) is str and type(self.size) is str
                and type(self.position) is str and self.colour in COLOURS and self.kind in _KIND_SET
                and self.size in _SIZE_SET and self.position in POSITION_PHRASES and type(self.x) is float and type(self.y) is float
                and type(self.radius) is float and self.radius > 0):
            return
        for name, options in (("colour", COLOUR_NAMES), ("kind", KINDS), ("size", SIZES), ("position", POSITIONS)):
            object.__setattr__(self, name, checks.choice(getattr(self, name), f"Shape.{name}", options))
        for name in ("x", "y", "radius"):
            object.__setattr__(self, name, checks.number(getattr(self, name), f"Shape.{name}"))
        if self.radius <= 0:
            raise ValueError(f"Shape.radius must be > 0, got {self.radius}")

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.kind}"


def position_name(x: float, y: float, image_size: int) -> str:
    """The grid cell (one of :data:`POSITIONS`) that holds pixel ``(x, y)``; x grows right, y down."""
    image_size = checks.integer(image_size, "image_size", minimum=1)
    x, y = checks.number(x, "x"), checks.number(y, "y")
    if not (0 <= x < image_size and 0 <= y < image_size):
        raise ValueError(f"(x, y) must lie inside the image [0, {image_size}), got ({x}, {y})")
    col = min(int(3 * x / image_size), 2)
    row = min(int(3 * y / image_size), 2)
    return POSITIONS[3 * row + col]


def _check_choice(value: str, options: Sequence[str], what: str) -> str:
    try:
        return checks.choice(value, what, options)
    except ValueError:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(options)}") from None


def _check_scene(shapes, name: str = "shapes") -> list[Shape]:
    """One scene: a non-empty list of at most 4 :class:`Shape` (``data.shapes[i]``)."""
    if isinstance(shapes, Shape):
        raise TypeError(f"{name} must be a list of Shape (one scene, e.g. data.shapes[i]), got one Shape; "
                        "wrap it in a list")
    if not isinstance(shapes, (list, tuple)):
        raise TypeError(f"{name} must be a list of Shape (one scene, e.g. data.shapes[i]), got {type(shapes).__name__}")
    bad = [i for i, s in enumerate(shapes) if not isinstance(s, Shape)]
    if bad:
        raise TypeError(f"{name} must hold Shape objects; item {bad[0]} is {type(shapes[bad[0]]).__name__}")
    if not 1 <= len(shapes) <= len(NUMBER_WORDS) - 1:
        raise ValueError(f"{name} must hold 1 to {len(NUMBER_WORDS) - 1} shapes (one scene), got {len(shapes)}")
    return list(shapes)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def caption(shapes: Sequence[Shape], style: str = "full") -> str:
    """A caption for a scene. ``style='full'`` names every attribute; ``'short'`` leaves out the size."""
    style = checks.choice(style, "style", ("full", "short"))
    if isinstance(shapes, (list, tuple)) and len(shapes) == 0:
        raise ValueError("shapes is empty: a scene needs at least one shape to be captioned")
    shapes = _check_scene(shapes)
    parts = []
    for s in shapes:
        words = [s.size, s.colour, s.kind] if style == "full" else [s.colour, s.kind]
        parts.append("a " + " ".join(words) + " " + POSITION_PHRASES[s.position])
    return " and ".join(parts)


_TEMPLATES = (
    "a {size} {colour} {kind} {where}",
    "there is a {size} {colour} {kind} {where}",
    "a {colour} {kind} {where}",
    "a picture of a {size} {colour} {kind} {where}",
    "{where} there is a {colour} {kind}",
    "a {size} {colour} {kind}",
)


def varied_caption(shapes: Sequence[Shape], rng: np.random.Generator) -> str:
    """A caption drawn from several templates; some leave out the size or the position."""
    shapes, rng = _check_scene(shapes), _check_rng(rng)
    parts = []
    for s in shapes:
        t = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        parts.append(t.format(size=s.size, colour=s.colour, kind=s.kind, where=POSITION_PHRASES[s.position]))
    return " and ".join(parts)


def relations(a: Shape, b: Shape) -> list[str]:
    """Every phrase of :data:`RELATIONS` that is true of shape ``a`` relative to shape ``b``.

    Read from their grid cells: "to the left of" when ``a``'s column is left of ``b``'s, "above" when
    its row is higher. Two shapes in different cells always have at least one relation.
    """
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, Shape):
            raise TypeError(f"{name} must be a Shape, got {type(s).__name__}")
    pa, pb = POSITIONS.index(a.position), POSITIONS.index(b.position)
    (ra, ca), (rb, cb) = divmod(pa, 3), divmod(pb, 3)
    out = []
    if ca != cb:
        out.append(RELATIONS[0] if ca < cb else RELATIONS[1])
    if ra != rb:
        out.append(RELATIONS[2] if ra < rb else RELATIONS[3])
    return out


def relation_caption(shapes: Sequence[Shape], rng: np.random.Generator) -> str:
    """"a red circle to the left of a blue square": a two-shape scene named by one true relation.

    The relation is drawn from :func:`relations` (when two hold, either may be named).
    """
    shapes, rng = _check_scene(shapes), _check_rng(rng)
    if len(shapes) != 2:
        raise ValueError(f"relation_caption needs a scene of exactly 2 shapes, got {len(shapes)}")
    a, b = shapes
    true = relations(a, b)
    if not true:
        raise ValueError("the two shapes share a grid cell: no relation can be named")
    rel = true[int(rng.integers(len(true)))]
    return f"a {a.colour} {a.kind} {rel} a {b.colour} {b.kind}"


def questions(shapes: Sequence[Shape], rng: np.random.Generator | None = None) -> list[tuple[str, str]]:
    """Question–answer pairs about a scene, answerable from the image alone."""
    shapes = _check_scene(shapes)
    rng = _check_rng(rng) if rng is not None else np.random.default_rng(0)
    qa: list[tuple[str, str]] = [("how many shapes are there?", NUMBER_WORDS[len(shapes)])]
    kinds, colours = [s.kind for s in shapes], [s.colour for s in shapes]
    pairs = [(s.colour, s.kind) for s in shapes]
    for s in shapes:
        if kinds.count(s.kind) == 1:
            qa.append((f"what colour is the {s.kind}?", s.colour))
        if colours.count(s.colour) == 1:
            qa.append((f"what shape is the {s.colour} one?", s.kind))
        else:
            qa.append((f"what shape is {POSITION_PHRASES[s.position]}?", s.kind))
        if pairs.count((s.colour, s.kind)) == 1:     # otherwise "the red circle" is ambiguous
            qa.append((f"where is the {s.colour} {s.kind}?", s.position))
            qa.append((f"what size is the {s.colour} {s.kind}?", s.size))
    present = {(s.colour, s.kind) for s in shapes}
    s = shapes[int(rng.integers(len(shapes)))]
    qa.append((f"is there a {s.colour} {s.kind}?", "yes"))
    absent = [(c, k) for c in COLOUR_NAMES for k in KINDS if (c, k) not in present]
    c, k = absent[int(rng.integers(len(absent)))]
    qa.append((f"is there a {c} {k}?", "no"))
    return qa


def vocabulary() -> list[str]:
    """Every word that ShapesWorld's captions, questions and answers use, in a fixed order."""
    words: list[str] = []
    def add(text: str) -> None:
        for w in text.split():
            if w not in words:
                words.append(w)
    for t in _TEMPLATES:
        add(t.replace("{size}", "").replace("{colour}", "").replace("{kind}", "").replace("{where}", ""))
    for p in POSITION_PHRASES.values():
        add(p)
    add("and how many shapes are there ? what colour is the shape one where size is yes no")
    for group in (COLOUR_NAMES, KINDS, SIZES, NUMBER_WORDS, POSITIONS):
        for w in group:
            add(w)
    for r in RELATIONS:                   # appended last, so the ids of the words above never change
        add(r)
    add(".")                              # ends a sentence in the language model's text (chapter 6)
    return words


@dataclass
class ShapesData:
    """A sample of ShapesWorld: images with their ground truth."""

    images: np.ndarray                       # (N, H, W, 3) float32 in [0, 1]
    shapes: list[list[Shape]]                # ground truth, one list per image
    labels: dict[str, np.ndarray]            # attribute -> (N,) int64, for the first shape
    split: str
    captions: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.images, np.ndarray) or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"ShapesData.images must be an array (N, H, W, 3), got "
                             f"{getattr(self.images, 'shape', type(self.images).__name__)}")
        n = len(self.images)
        if not isinstance(self.shapes, list) or len(self.shapes) != n:
            raise ValueError(f"ShapesData.shapes must be a list with one scene per image ({n}), got "
                             f"{len(self.shapes) if isinstance(self.shapes, list) else type(self.shapes).__name__}")
        if not isinstance(self.labels, dict) or any(len(v) != n for v in self.labels.values()):
            raise ValueError(f"ShapesData.labels must map attribute names to one label per image ({n})")
        self.split = _check_choice(self.split, SPLITS, "split")
        if self.captions and len(self.captions) != n:
            raise ValueError(f"ShapesData.captions must be empty or hold one caption per image ({n}), "
                             f"got {len(self.captions)}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, list[Shape]]:
        return self.images[i], self.shapes[i]

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The images as a float tensor (N, 3, H, W) in [0, 1], as PyTorch models expect."""
        device = _device(device)
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).contiguous().to(device)

    def label_tensors(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The labels as int64 tensors, attribute -> (N,)."""
        device = _device(device)
        return {k: torch.from_numpy(v).to(device) for k, v in self.labels.items()}


class ShapesWorld:
    """A generator of ShapesWorld scenes.

    Args:
        image_size: side of the square images in pixels (at least 16).
        max_shapes: the most shapes in one image (1 to 4); each image gets 1..max_shapes.
        noise: standard deviation of the pixel noise.
        held_out: colour–kind pairs kept out of the ``train`` split.
        seed: the world's seed; with the split and the sample seed it fixes every image.
    """

    def __init__(self, image_size: int = 32, max_shapes: int = 1, noise: float = 0.03,
                 held_out: Iterable[tuple[str, str]] = HELD_OUT, seed: int = 0):
        try:
            image_size = checks.integer(image_size, "image_size", minimum=16)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be an integer of at least 16, got {image_size!r}") from None
        try:
            max_shapes = checks.integer(max_shapes, "max_shapes", minimum=1, maximum=4)
        except (TypeError, ValueError):
            raise ValueError(f"max_shapes must be an integer from 1 to 4, got {max_shapes!r}") from None
        try:
            noise = checks.number(noise, "noise", low=0.0, high=0.5)
        except (TypeError, ValueError):
            raise ValueError(f"noise must be a number in [0, 0.5], got {noise!r}") from None
        seed = checks.integer(seed, "seed", minimum=0)
        held = _check_held_out(held_out)
        self.image_size, self.max_shapes, self.noise, self.seed = int(image_size), int(max_shapes), float(noise), int(seed)
        self.held_out = held
        all_combos = [(ci, ki) for ci in range(len(COLOUR_NAMES)) for ki in range(len(KINDS))]
        held_idx = {(COLOUR_NAMES.index(c), KINDS.index(k)) for c, k in held}
        self._combos = {
            "train": [ck for ck in all_combos if ck not in held_idx],
            "test": [ck for ck in all_combos if ck not in held_idx],
            "holdout": sorted(held_idx),
            "all": all_combos,
        }
        if not self._combos["holdout"]:
            self._combos["holdout"] = all_combos
        if not self._combos["train"]:
            raise ValueError("held_out leaves no colour–kind combination for training")
        yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
        self._xx, self._yy = xx, yy

    def __repr__(self) -> str:
        return (f"ShapesWorld(image_size={self.image_size}, max_shapes={self.max_shapes}, noise={self.noise}, "
                f"held_out={len(self.held_out)} pairs, seed={self.seed})")

    def is_held_out(self, colour: str, kind: str) -> bool:
        """Whether the pair ``(colour, kind)`` is kept out of the training split."""
        return (_check_choice(colour, COLOUR_NAMES, "colour"), _check_choice(kind, KINDS, "kind")) in self.held_out

    def combos(self, split: str) -> list[tuple[str, str]]:
        """The colour–kind pairs that a split draws from."""
        _check_choice(split, SPLITS, "split")
        return [(COLOUR_NAMES[c], KINDS[k]) for c, k in self._combos[split]]

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, n: int, split: str = "train", seed: int = 0, captions: str | None = "full") -> ShapesData:
        """Draw ``n`` images of a split. The same arguments always give the same images.

        ``captions`` is ``'full'``, ``'short'``, ``'varied'`` or ``None`` (no captions).
        """
        try:
            n = checks.integer(n, "n", minimum=0)
        except (TypeError, ValueError):
            raise ValueError(f"n must be a non-negative integer, got {n!r}") from None
        split = _check_choice(split, SPLITS, "split")
        try:
            captions = checks.choice(captions, "captions", ("full", "short", "varied", None))
        except ValueError:
            raise ValueError(f"captions must be 'full', 'short', 'varied' or None, got {captions!r}") from None
        seed = checks.integer(seed, "seed", minimum=0)
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[split], int(seed)])
        n = int(n)
        S, K = self.image_size, self.max_shapes
        counts = rng.integers(1, K + 1, size=n)
        combos = np.array(self._combos[split])
        pick = combos[rng.integers(len(combos), size=(n, K))]
        colour, kind = pick[..., 0], pick[..., 1]
        size = rng.integers(len(SIZES), size=(n, K))
        position = np.argsort(rng.random((n, len(POSITIONS))), axis=1)[:, :K]   # distinct cells
        cell = S / 3
        cx = (position % 3 + 0.5) * cell + rng.uniform(-_JITTER, _JITTER, (n, K)) * S
        cy = (position // 3 + 0.5) * cell + rng.uniform(-_JITTER, _JITTER, (n, K)) * S
        base_r = np.where(size == 0, _RADIUS["small"], _RADIUS["large"])
        radius = (base_r + rng.uniform(-_RADIUS_JITTER, _RADIUS_JITTER, (n, K))) * S
        tint = rng.uniform(-0.06, 0.06, (n, K, 3))
        images = self._render(counts, colour, kind, cx, cy, radius, tint, rng)

        shapes = [
            [Shape(COLOUR_NAMES[colour[i, j]], KINDS[kind[i, j]], SIZES[size[i, j]], POSITIONS[position[i, j]],
                   float(cx[i, j]), float(cy[i, j]), float(radius[i, j])) for j in range(counts[i])]
            for i in range(n)
        ]
        labels = {"colour": colour[:, 0], "kind": kind[:, 0], "size": size[:, 0], "position": position[:, 0],
                  "count": counts}
        labels = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in labels.items()}
        if captions == "varied":
            caps = [varied_caption(s, rng) for s in shapes]
        elif captions is not None:
            caps = [caption(s, captions) for s in shapes]
        else:
            caps = []
        return ShapesData(images=images, shapes=shapes, labels=labels, split=split, captions=caps)

    # -- rendering --------------------------------------------------------------------------
    def _render(self, counts, colour, kind, cx, cy, radius, tint, rng) -> np.ndarray:
        n, S = len(counts), self.image_size
        bg = rng.uniform(0.04, 0.20, (n, 1, 1, 1)) + rng.uniform(-0.03, 0.03, (n, 1, 1, 3))
        img = np.broadcast_to(bg, (n, S, S, 3)).astype(np.float32).copy()
        palette = np.array(list(COLOURS.values()), dtype=np.float32)
        for j in range(self.max_shapes):
            active = np.nonzero(counts > j)[0]
            if active.size == 0:
                break
            cover = np.zeros((active.size, S, S), dtype=np.float32)
            for k in range(len(KINDS)):
                sel = np.nonzero(kind[active, j] == k)[0]
                if sel.size == 0:
                    continue
                idx = active[sel]
                dx = self._xx[None] - cx[idx, j, None, None].astype(np.float32)
                dy = self._yy[None] - cy[idx, j, None, None].astype(np.float32)
                r = radius[idx, j, None, None].astype(np.float32)
                cover[sel] = np.clip(_SDF[KINDS[k]](dx, dy, r) + 0.5, 0.0, 1.0)
            rgb = np.clip(palette[colour[active, j]] + tint[active, j], 0, 1).astype(np.float32)
            a = cover[..., None]
            img[active] = img[active] * (1 - a) + rgb[:, None, None, :] * a
        if self.noise > 0:
            img += rng.normal(0.0, self.noise, img.shape).astype(np.float32)
        return np.clip(img, 0.0, 1.0, out=img)


def place(colour: str, kind: str, size: str, x: float, y: float, image_size: int = 32,
          rng: np.random.Generator | None = None) -> Shape:
    """A :class:`Shape` centred at pixel ``(x, y)`` of an ``image_size`` image, with ShapesWorld's radius
    for ``size`` (and its small radius jitter when ``rng`` is given). Its ``position`` is the 3×3 cell
    that holds the centre. Chapters 10 and 11 place shapes with it and draw them with :func:`draw`."""
    image_size = checks.integer(image_size, "image_size", minimum=16)
    size = _check_choice(size, SIZES, "size")
    radius = _RADIUS[size] + (0.0 if rng is None else float(_check_rng(rng).uniform(-_RADIUS_JITTER, _RADIUS_JITTER)))
    x, y = checks.number(x, "x"), checks.number(y, "y")
    return Shape(colour, kind, size, position_name(x, y, image_size), float(x), float(y), float(radius * image_size))


def draw(shapes: Sequence[Shape], image_size: int = 32, noise: float = 0.03, seed: int = 0) -> torch.Tensor:
    """One image (3, S, S) in [0, 1] of ``shapes`` drawn where their ``x``, ``y`` and ``radius`` say,
    by ShapesWorld's renderer: the same background, colours, tints and pixel noise as
    :meth:`ShapesWorld.sample`, all drawn from ``seed``. Later shapes are drawn over earlier ones.
    Any number of shapes (0 gives the background alone); they need not sit on the 3×3 grid."""
    if isinstance(shapes, Shape) or not isinstance(shapes, (list, tuple)):
        raise TypeError(f"shapes must be a list of Shape, got {checks._given(shapes)}")
    bad = [i for i, s in enumerate(shapes) if not isinstance(s, Shape)]
    if bad:
        raise TypeError(f"shapes must hold Shape objects; item {bad[0]} is {type(shapes[bad[0]]).__name__}")
    S = checks.integer(image_size, "image_size", minimum=16)
    noise = checks.number(noise, "noise", low=0.0, high=0.5)
    rng = np.random.default_rng([checks.integer(seed, "seed", minimum=0), 11])
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    img = np.empty((S, S, 3), dtype=np.float32)
    img[:] = rng.uniform(0.04, 0.20) + rng.uniform(-0.03, 0.03, 3)
    for s in shapes:
        cover = np.clip(_SDF[s.kind](xx - np.float32(s.x), yy - np.float32(s.y), np.float32(s.radius)) + 0.5, 0.0, 1.0)
        rgb = np.clip(np.array(COLOURS[s.colour], dtype=np.float32) + rng.uniform(-0.06, 0.06, 3), 0, 1)
        img = img * (1 - cover[..., None]) + rgb.astype(np.float32) * cover[..., None]
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return torch.from_numpy(np.clip(img, 0.0, 1.0).astype(np.float32)).permute(2, 0, 1).contiguous()


def _check_held_out(held_out) -> tuple[tuple[str, str], ...]:
    """``held_out`` as a tuple of known (colour, kind) pairs; a string or a flat list is refused."""
    example = "held_out=[('red', 'circle')]"
    if isinstance(held_out, (str, np.str_)):
        raise TypeError(f"held_out must be a list of (colour, kind) pairs such as {example}, got the string {held_out!r}")
    try:
        items = list(held_out)
    except TypeError:
        raise TypeError(f"held_out must be a list of (colour, kind) pairs such as {example}, "
                        f"got {type(held_out).__name__}") from None
    pairs = []
    for i, pair in enumerate(items):
        if isinstance(pair, (str, np.str_)) or not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"held_out must be a list of (colour, kind) pairs such as {example}; "
                             f"item {i} is {pair!r}")
        pairs.append((_check_choice(pair[0], COLOUR_NAMES, "colour"), _check_choice(pair[1], KINDS, "kind")))
    return tuple(pairs)


_KIND_SET, _SIZE_SET = frozenset(KINDS), frozenset(SIZES)


def _device(device) -> torch.device:
    from .settings import _device as settings_device     # settings imports nothing of ours at load time

    return settings_device(device)


# Signed distance (in pixels, positive inside) of each kind, centred on (0, 0) with "radius" r.
def _sdf_circle(dx, dy, r):
    return r - np.sqrt(dx * dx + dy * dy)


def _sdf_square(dx, dy, r):
    return 0.86 * r - np.maximum(np.abs(dx), np.abs(dy))


def _sdf_triangle(dx, dy, r):
    rho = 0.62 * r                       # inradius; the bounding box is centred on (0, 0)
    dy = dy - rho / 2
    d1 = rho - dy                        # bottom edge, outward normal (0, 1)
    d2 = rho - (0.866 * dx - 0.5 * dy)   # right edge
    d3 = rho - (-0.866 * dx - 0.5 * dy)  # left edge
    return np.minimum(np.minimum(d1, d2), d3)


def _sdf_cross(dx, dy, r):
    arm, half = 1.0 * r, 0.36 * r
    ax, ay = np.abs(dx), np.abs(dy)
    horizontal = np.minimum(arm - ax, half - ay)
    vertical = np.minimum(half - ax, arm - ay)
    return np.maximum(horizontal, vertical)


_SDF = {"circle": _sdf_circle, "square": _sdf_square, "triangle": _sdf_triangle, "cross": _sdf_cross}
