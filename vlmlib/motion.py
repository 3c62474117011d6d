"""Text to motion (chapter 7): diffusion over a trajectory, the idea of MDM.

Introduced in chapter 7. The Human Motion Diffusion Model (MDM; Tevet et al., "Human Motion
Diffusion Model", ICLR 2023, arXiv:2209.14916) generates a motion (a sequence of body poses) from a
sentence with a transformer-based, classifier-free diffusion model that predicts the clean sample
rather than the noise at each step (the paper's abstract). Its released code
(github.com/GuyTevet/motion-diffusion-model) trains with T = 1000 steps of a cosine schedule; the
denoiser is a transformer encoder (8 layers, width 512, 4 heads) over the noisy frames with one
token in front, the sum of the timestep's embedding and the sentence's embedding by a frozen CLIP
ViT-B/32 text encoder; the sentence is dropped for 10% of the training examples, and sampling
guides x̂₀ as x̂₀(∅) + s·(x̂₀(c) − x̂₀(∅)) with s = 2.5 by default.

Here the "body" is one ShapesWorld shape and a motion is its **trajectory**: the centre of the shape
in pixels of a 32×32 image, one point per frame, a float tensor (F, 2) (x to the right, y down;
batches (N, F, 2)) with F = :data:`FRAMES`.

**Instructions.** An :class:`Instruction` names a shape, a start cell of ShapesWorld's 3×3 grid and
one or two moves of one cell each ("the small red circle starts at the top left and moves right,
then down"). A move may repeat ("right, then right": two cells in a line) but never reverse ("right,
then left" would come back to where it started), and no instruction leaves the grid. Some ordered
pairs of moves (:data:`HELD_OUT_MOVES`) are never shown in training: the ``"held_out"`` split asks
for them, to measure whether the model composes moves it learnt separately (each direction is still
seen first and second in a turn in training, and each held-out pair in the other order).
:func:`reference_trajectory` is the motion an instruction asks for; :func:`motion_correct` and
:func:`motion_scores` measure generated ones.

**The model.** :class:`MotionDenoiser` is a small transformer encoder over the sequence
[timestep token, word tokens, frame tokens] that predicts x₀; :func:`train_motion` trains it
(with condition dropout, for classifier-free guidance), :func:`build_motion` goes through the
artifact cache, :func:`sample_motion` draws trajectories with DDIM steps and guidance, reusing
:mod:`vlmlib.diffusion` (its cosine schedule, :func:`~vlmlib.diffusion.q_sample`,
:func:`~vlmlib.diffusion.ddim_step` and :func:`~vlmlib.diffusion.guide`). :func:`render_frames`
draws a trajectory as ShapesWorld frames (a video), :func:`plot_trajectories` draws paths on the grid.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from . import checks
from .cache import Artifact, cached
from .diffusion.schedules import SCHEDULES, ddim_step, make_schedule, q_sample, timesteps_for
from .diffusion.sampling import guide
from .settings import _device
# ShapesWorld's geometry: the jitter of a shape inside its cell (±2 px at 32 px) and the radii of the sizes
from .shapesworld import _JITTER, _RADIUS, _RADIUS_JITTER
from .shapesworld import (COLOUR_NAMES, HELD_OUT, KINDS, POSITION_PHRASES, POSITIONS, SIZES, Shape, ShapesWorld,
                          position_name)

FRAMES = 16
IMAGE_SIZE = 32
DIRECTIONS: tuple[str, ...] = ("up", "down", "left", "right")
_DELTA = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}     # (column, row) steps
_OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}
#: Every move sequence an instruction can ask for: one move, or two that do not reverse (16 in all).
MOVES: tuple[tuple[str, ...], ...] = tuple((d,) for d in DIRECTIONS) + tuple(
    (a, b) for a in DIRECTIONS for b in DIRECTIONS if b != _OPPOSITE[a])
#: Ordered pairs of moves never shown in training: three turns whose reverse order is seen ("right,
#: then up" is, "up, then right" is not), and each direction is still the first move of some training
#: turn and the second move of another. (Every such choice turns the same way: these three turn clockwise.)
HELD_OUT_MOVES: tuple[tuple[str, str], ...] = (("up", "right"), ("down", "left"), ("left", "up"))
SPLITS = ("train", "test", "held_out")
_SPLIT_STREAM = {"train": 11, "test": 12, "held_out": 13}
_ONE_MOVE_SHARE = 1 / 3           # share of one-move instructions in the train and test splits
_CORNER_JITTER = 0.08             # two moves: the turn happens at 0.5 ± 0.08 of the time
_PACE = 0.3                       # the time warp t + a·sin(2πt)/(2π), |a| ≤ 0.3: speeding up, slowing down


def cell_centre(position: str, image_size: int = IMAGE_SIZE) -> tuple[float, float]:
    """The pixel centre ``(x, y)`` of a grid cell (one of ShapesWorld's :data:`POSITIONS`)."""
    position = checks.choice(position, "position", POSITIONS)
    image_size = checks.integer(image_size, "image_size", minimum=3)
    row, col = divmod(POSITIONS.index(position), 3)
    cell = image_size / 3
    return ((col + 0.5) * cell, (row + 0.5) * cell)


def _move(position: str, direction: str) -> str | None:
    """The cell one move away, or None when the move would leave the grid."""
    row, col = divmod(POSITIONS.index(position), 3)
    dc, dr = _DELTA[direction]
    row, col = row + dr, col + dc
    return POSITIONS[3 * row + col] if 0 <= row < 3 and 0 <= col < 3 else None


def _path(start: str, moves: Sequence[str]) -> tuple[str, ...] | None:
    cells = [start]
    for d in moves:
        nxt = _move(cells[-1], d)
        if nxt is None:
            return None
        cells.append(nxt)
    return tuple(cells)


@dataclass(frozen=True)
class Instruction:
    """What a motion should do: a shape, a start cell and one or two moves of one grid cell each.

    ``moves`` is a tuple of 1 or 2 of :data:`DIRECTIONS`; a repeat is allowed, a reversal is not,
    and the moves must stay on the 3×3 grid. ``.text`` is the sentence the model reads, ``.cells``
    the cells the shape passes through (start, after move 1[, after move 2]), ``.end`` the last one.
    """

    colour: str
    kind: str
    size: str
    start: str
    moves: tuple[str, ...]

    def __post_init__(self):
        for name, options in (("colour", COLOUR_NAMES), ("kind", KINDS), ("size", SIZES), ("start", POSITIONS)):
            object.__setattr__(self, name, checks.choice(getattr(self, name), f"Instruction.{name}", options))
        moves = self.moves
        if isinstance(moves, (str, np.str_)):
            moves = (moves,)
        if not isinstance(moves, (tuple, list)) or not 1 <= len(moves) <= 2:
            raise ValueError(f"Instruction.moves must be a tuple of 1 or 2 directions such as ('right', 'down'), "
                             f"got {checks._given(self.moves)}")
        moves = tuple(checks.choice(d, "Instruction.moves[i]", DIRECTIONS) for d in moves)
        if len(moves) == 2 and moves[1] == _OPPOSITE[moves[0]]:
            raise ValueError(f"Instruction.moves must not reverse ({moves[0]}, then {moves[1]} "
                             "comes back to the start)")
        if _path(self.start, moves) is None:
            raise ValueError(f"the moves {moves} from the {self.start} cell leave the 3×3 grid")
        object.__setattr__(self, "moves", moves)

    @property
    def cells(self) -> tuple[str, ...]:
        return _path(self.start, self.moves)

    @property
    def end(self) -> str:
        return self.cells[-1]

    @property
    def text(self) -> str:
        """E.g. "the small red circle starts at the top left and moves right, then down"."""
        return (f"the {self.size} {self.colour} {self.kind} starts {POSITION_PHRASES[self.start]} "
                f"and moves {', then '.join(self.moves)}")

    def shape(self, image_size: int = IMAGE_SIZE) -> Shape:
        """The shape at its start cell's centre, as a ShapesWorld :class:`~vlmlib.shapesworld.Shape`."""
        x, y = cell_centre(self.start, image_size)
        return Shape(self.colour, self.kind, self.size, self.start, float(x), float(y),
                     float(_RADIUS[self.size] * image_size))


def feasible_starts(moves: Sequence[str]) -> list[str]:
    """The start cells from which ``moves`` stay on the grid."""
    moves = tuple(checks.choice(d, "moves[i]", DIRECTIONS) for d in moves)
    return [p for p in POSITIONS if _path(p, moves) is not None]


def split_moves(split: str) -> list[tuple[str, ...]]:
    """The move sequences a split draws from: all but :data:`HELD_OUT_MOVES` for ``"train"`` and
    ``"test"``, only those for ``"held_out"``."""
    split = checks.choice(split, "split", SPLITS)
    if split == "held_out":
        return list(HELD_OUT_MOVES)
    return [m for m in MOVES if m not in HELD_OUT_MOVES]


def instructions(n: int, split: str = "train", seed: int = 0) -> list[Instruction]:
    """``n`` random instructions of a split (the same arguments give the same list).

    ``"train"`` and ``"test"`` draw the seen move sequences (a third of them one move), with
    different random streams; ``"held_out"`` draws two-move sequences of :data:`HELD_OUT_MOVES`
    only. The start is drawn among the cells where the moves fit, the colour and kind among
    ShapesWorld's training pairs (no :data:`~vlmlib.shapesworld.HELD_OUT` colour–kind pair, so a
    text-to-image model trained on ShapesWorld's train split can draw every shape), the size freely.
    """
    n = checks.integer(n, "n", minimum=0)
    split = checks.choice(split, "split", SPLITS)
    seed = checks.integer(seed, "seed", minimum=0)
    rng = np.random.default_rng([_SPLIT_STREAM[split], seed])
    pool = split_moves(split)
    ones = [m for m in pool if len(m) == 1]
    twos = [m for m in pool if len(m) == 2]
    pairs = [(c, k) for c in COLOUR_NAMES for k in KINDS if (c, k) not in HELD_OUT]
    out = []
    for _ in range(n):
        group = ones if ones and rng.random() < _ONE_MOVE_SHARE else twos
        moves = group[int(rng.integers(len(group)))]
        starts = feasible_starts(moves)
        colour, kind = pairs[int(rng.integers(len(pairs)))]
        out.append(Instruction(colour, kind, SIZES[int(rng.integers(len(SIZES)))],
                               starts[int(rng.integers(len(starts)))], moves))
    return out


def _check_instruction(value, name: str = "instruction") -> Instruction:
    if not isinstance(value, Instruction):
        raise TypeError(f"{name} must be an Instruction (see vlmlib.motion.instructions), got {checks._given(value)}")
    return value


def _check_instructions(value, name: str = "instructions", length: int | None = None) -> list[Instruction]:
    if isinstance(value, Instruction):
        raise TypeError(f"{name} must be a list of Instruction, got one Instruction; wrap it in a list")
    if isinstance(value, (str, np.str_)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list of Instruction, got {checks._given(value)}")
    value = list(value)
    for i, item in enumerate(value):
        _check_instruction(item, f"{name}[{i}]")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must hold {length} instructions (one per trajectory), got {len(value)}")
    return value


# -- trajectories -----------------------------------------------------------------------------------
def reference_trajectory(instruction: Instruction, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The motion an instruction asks for: (FRAMES, 2) pixel positions, float32.

    Frame i is at time s = i/(F − 1) in [0, 1]. The shape starts at the start cell's centre and moves
    at constant speed through the centres of the cells it passes (``instruction.cells``): a straight
    line for one move, two lines meeting at the corner cell's centre at s = 1/2 for two moves (so the
    shape is at the corner halfway through). Exercise 7.1.

    With ``rng`` (a NumPy Generator) the motion varies as ShapesWorld's images do: the whole path is
    shifted by up to ±2 px (32-px images) inside its cells, the turn happens at s = 0.5 ± 0.08, and
    the pace varies smoothly (time s is warped to s + a·sin(2πs)/(2π), |a| ≤ 0.3, which keeps the
    start, the middle and the end in place). The model has a distribution to learn, not one path per
    sentence.
    """
    instruction = _check_instruction(instruction)
    points = np.array([cell_centre(c) for c in instruction.cells], dtype=np.float64)     # (K + 1, 2)
    knots = np.linspace(0.0, 1.0, len(points))                                          # 0, [1/2,] 1
    s = np.linspace(0.0, 1.0, FRAMES)
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)) or None, "
                            f"got {checks._given(rng)}")
        points = points + rng.uniform(-_JITTER, _JITTER, 2) * IMAGE_SIZE
        if len(points) == 3:
            knots[1] += rng.uniform(-_CORNER_JITTER, _CORNER_JITTER)
        a = rng.uniform(-_PACE, _PACE)
        s = s + a * np.sin(2 * np.pi * s) / (2 * np.pi)
    path = np.stack([np.interp(s, knots, points[:, 0]), np.interp(s, knots, points[:, 1])], axis=1)
    return torch.from_numpy(path).float()


def _as_paths(value, name: str, ndim: int) -> np.ndarray:
    """Trajectories as a float64 array of ``ndim`` dimensions ending in 2 (NaN kept, to be judged)."""
    shape = "(F, 2)" if ndim == 2 else "(N, F, 2)"
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got {checks._given(value)}")
        value = value.double().numpy()
    elif isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a tensor of pixel positions {shape}, got {checks._given(value)}") from None
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a tensor of pixel positions {shape}, got {checks._given(value)}")
    if value.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got {checks._given(value)}")
    if value.ndim != ndim or value.shape[-1] != 2 or value.shape[-2] < 2:
        raise ValueError(f"{name} must have shape {shape} with F ≥ 2 frames (x, y in pixels), got {value.shape}")
    return value.astype(np.float64)


def _cell(point: np.ndarray) -> str:
    x, y = np.clip(point, 0.0, IMAGE_SIZE - 1e-6)
    return position_name(float(x), float(y), IMAGE_SIZE)


def _halfway(path: np.ndarray) -> np.ndarray:
    """The position at time s = 1/2: the middle frame, or the mean of the two middle ones."""
    F = len(path)
    return (path[(F - 1) // 2] + path[F // 2]) / 2


def _judge(path: np.ndarray, instruction: Instruction) -> dict[str, bool]:
    if not np.isfinite(path).all():
        return {"start": False, "end": False, "order": False, "steady": False, "all": False}
    cells = instruction.cells
    halfway = _cell(_halfway(path))
    result = {
        "start": _cell(path[0]) == instruction.start,
        "end": _cell(path[-1]) == instruction.end,
        # two moves: halfway through, the shape is at the corner (so the moves came in the asked order)
        "order": halfway == cells[1] if len(cells) == 3 else halfway in cells,
        "steady": all(_cell(p) in cells for p in path),
    }
    result["all"] = all(result.values())
    return result


def motion_correct(trajectory, instruction: Instruction) -> bool:
    """Whether a trajectory (F, 2) does what ``instruction`` asks. Exercise 7.2.

    Cells are read with :func:`vlmlib.shapesworld.position_name` (positions outside the image are
    clipped into it). The motion is correct when all four hold:

    1. **start**: frame 0 is in the start cell;
    2. **end**: the last frame is in the end cell (``instruction.end``);
    3. **order**: halfway through (the middle frame, or the mean of the two middle frames when F is
       even), the shape is in the corner cell (``instruction.cells[1]``) for two moves, in one of the
       two cells for one move: "right, then down" and "down, then right" start and end alike and
       differ only there;
    4. **steady**: every frame is in one of the cells of the path (``instruction.cells``): no detour.

    Together these make each move go in its direction. A trajectory with NaN or infinite values is
    not correct.
    """
    instruction = _check_instruction(instruction)
    return bool(_judge(_as_paths(trajectory, "trajectory", 2), instruction)["all"])


def motion_scores(trajectories, instructions: Sequence[Instruction]) -> dict[str, float]:
    """The share of trajectories (N, F, 2) that pass each test of :func:`motion_correct` ("start",
    "end", "order", "steady") and all of them ("all"), with their number ("n")."""
    paths = _as_paths(trajectories, "trajectories", 3)
    instructions = _check_instructions(instructions, length=len(paths))
    if not len(paths):
        raise ValueError("trajectories is empty: nothing to score")
    judged = [_judge(p, i) for p, i in zip(paths, instructions)]
    scores = {k: float(np.mean([j[k] for j in judged])) for k in ("start", "end", "order", "steady", "all")}
    scores["n"] = len(paths)
    return scores


# -- words --------------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return text.lower().replace(",", " ,").split()


def _vocabulary() -> tuple[str, ...]:
    words = ["<pad>"]
    example = Instruction("red", "circle", "small", "left", ("right", "up"))
    texts = [example.text] + [" ".join(g) for g in (SIZES, COLOUR_NAMES, KINDS, DIRECTIONS)]
    texts += list(POSITION_PHRASES.values())
    for text in texts:
        for w in _words(text):
            if w not in words:
                words.append(w)
    return tuple(words)


#: Every word an instruction uses ("," is a word), id 0 being padding. The empty instruction (all
#: padding) is the "no condition" of classifier-free guidance.
VOCABULARY: tuple[str, ...] = _vocabulary()
_WORD_ID = {w: i for i, w in enumerate(VOCABULARY)}
#: The longest instruction, in words.
MAX_WORDS = max(len(_words(Instruction("yellow", "triangle", "large", p, m).text))
                for m in MOVES for p in feasible_starts(m))


def tokenize(texts: Sequence[str] | Sequence[Instruction], max_words: int = MAX_WORDS) -> torch.Tensor:
    """Word ids (N, max_words), padded with 0, for sentences or instructions ("" is the empty one)."""
    if isinstance(texts, (str, np.str_, Instruction)):
        raise TypeError("texts must be a list of sentences or instructions; wrap one in a list")
    if not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a list of sentences or instructions, got {checks._given(texts)}")
    texts = [t.text if isinstance(t, Instruction) else t for t in texts]
    texts = checks.text_list(texts, "texts")
    max_words = checks.integer(max_words, "max_words", minimum=1)
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    for i, text in enumerate(texts):
        words = _words(text)
        unknown = [w for w in words if w not in _WORD_ID or w == "<pad>"]
        if unknown:
            raise ValueError(f"texts[{i}] has words the motion model does not know: {unknown}; "
                             f"it knows {list(VOCABULARY[1:])}")
        if len(words) > max_words:
            raise ValueError(f"texts[{i}] has {len(words)} words, more than max_words={max_words}")
        ids[i, :len(words)] = torch.tensor([_WORD_ID[w] for w in words], dtype=torch.long)
    return ids


# -- the model ------------------------------------------------------------------------------------------
def to_model_space(paths: torch.Tensor) -> torch.Tensor:
    """Pixels [0, 32] -> about [−1, 1] (the grid's cell centres are at −2/3, 0 and 2/3)."""
    return paths / (IMAGE_SIZE / 2) - 1


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """The model's [−1, 1] back to pixels."""
    return (x + 1) * (IMAGE_SIZE / 2)


@dataclass
class MotionConfig:
    """The motion denoiser and its diffusion process."""

    width: int = 64
    layers: int = 3
    heads: int = 4
    ff_mult: int = 2                          # the feed-forward layer is ff_mult × width wide
    dropout: float = 0.1                      # as MDM's released code; it helps on held-out pairs of moves
    frames: int = FRAMES
    max_words: int = MAX_WORDS
    schedule: str = "cosine"
    T: int = 1000

    def __post_init__(self):
        for name, low in (("width", 8), ("layers", 1), ("heads", 1), ("ff_mult", 1), ("frames", 2),
                          ("max_words", MAX_WORDS), ("T", 2)):
            setattr(self, name, checks.integer(getattr(self, name), f"MotionConfig.{name}", minimum=low))
        if self.width % self.heads:
            raise ValueError(f"MotionConfig.width ({self.width}) must be divisible by heads ({self.heads})")
        if self.width % 2:
            raise ValueError(f"MotionConfig.width must be even (the sinusoidal time embedding), got {self.width}")
        self.dropout = checks.number(self.dropout, "MotionConfig.dropout", low=0.0, high=1.0, high_open=True)
        self.schedule = checks.choice(self.schedule, "MotionConfig.schedule", SCHEDULES)

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The Transformer's sinusoidal embedding of timestep indices t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MotionDenoiser(nn.Module):
    """x̂₀ = G(x_t, t, text): a transformer encoder over [timestep token, word tokens, frame tokens].

    The timestep becomes one token (sinusoidal embedding, then an MLP); each word of the instruction
    a token (a word embedding plus a learned position embedding); each noisy frame (x, y) a token (a
    linear map plus a learned frame-position embedding). The encoder attends over all of them (the
    padding words are masked), and the outputs at the frame positions are mapped back to (x, y): the
    predicted clean trajectory x̂₀, as MDM predicts the clean motion rather than the noise.

    MDM reads the sentence with a frozen CLIP text encoder and puts a single token in front of the
    frames: the sum of the timestep's embedding and the sentence's. Our chapter-2 CLIP and the
    chapter-6 language model never saw words of motion ("moves", "then", "up"), so here the word
    embeddings are learned with the denoiser, from the instructions.
    The empty instruction (only padding) is the unconditional model of classifier-free guidance.
    """

    def __init__(self, config: MotionConfig | None = None):
        super().__init__()
        config = config if config is not None else MotionConfig()
        if not isinstance(config, MotionConfig):
            raise TypeError(f"config must be a MotionConfig, got {type(config).__name__}")
        self.config = config
        self.schedule = make_schedule(config.schedule, config.T)
        D = config.width
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.word_embedding = nn.Embedding(len(VOCABULARY), D, padding_idx=0)
        self.word_position = nn.Parameter(torch.randn(config.max_words, D) * 0.02)
        self.frame_in = nn.Linear(2, D)
        self.frame_position = nn.Parameter(torch.randn(config.frames, D) * 0.02)
        layer = nn.TransformerEncoderLayer(D, config.heads, config.ff_mult * D, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D)
        self.frame_out = nn.Linear(D, 2)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Noisy trajectories x_t (B, F, 2) in model space, timestep indices t (B,), word ids (B, L)
        (:func:`tokenize`) -> predicted clean trajectories x̂₀ (B, F, 2)."""
        c = self.config
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 3 or x_t.shape[1:] != (c.frames, 2) \
                or not x_t.is_floating_point():
            raise ValueError(f"x_t must be a float tensor (B, {c.frames}, 2), got {checks._given(x_t)}")
        B = len(x_t)
        if not isinstance(t, torch.Tensor) or t.shape != (B,) or t.is_floating_point():
            raise ValueError(f"t must be an integer tensor ({B},) of timestep indices, got {checks._given(t)}")
        if (not isinstance(words, torch.Tensor) or words.ndim != 2 or len(words) != B
                or not 1 <= words.shape[1] <= c.max_words or words.is_floating_point()):
            raise ValueError(f"words must be an integer tensor ({B}, L ≤ {c.max_words}) from tokenize(), "
                             f"got {checks._given(words)}")
        time_token = self.time_mlp(timestep_embedding(t, c.width))[:, None]               # (B, 1, D)
        L = words.shape[1]
        word_tokens = self.word_embedding(words) + self.word_position[:L]                  # (B, L, D)
        frame_tokens = self.frame_in(x_t) + self.frame_position                            # (B, F, D)
        tokens = torch.cat([time_token, word_tokens, frame_tokens], dim=1)                 # (B, 1 + L + F, D)
        pad = torch.zeros(B, 1 + L + c.frames, dtype=torch.bool, device=x_t.device)
        pad[:, 1:1 + L] = words == 0
        h = self.encoder(tokens, src_key_padding_mask=pad)
        return self.frame_out(self.norm(h[:, -c.frames:]))                                # (B, F, 2)


@dataclass
class MotionRecipe:
    """How the motion denoiser is trained (the cache key is made of this and the config)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: float = 0.05
    cond_dropout: float = 0.1                 # share of empty instructions (MDM: 10%)
    n_train: int = 20_000                     # instructions (with their reference motions) to draw from
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "n_train"):
            setattr(self, name, checks.integer(getattr(self, name), f"MotionRecipe.{name}", minimum=1))
        self.seed = checks.integer(self.seed, "MotionRecipe.seed", minimum=0)
        self.lr = checks.number(self.lr, "MotionRecipe.lr", low=0.0, low_open=True)
        self.weight_decay = checks.number(self.weight_decay, "MotionRecipe.weight_decay", low=0.0)
        self.warmup = checks.number(self.warmup, "MotionRecipe.warmup", low=0.0, high=1.0, high_open=True)
        self.cond_dropout = checks.probability(self.cond_dropout, "MotionRecipe.cond_dropout")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_model(model) -> MotionDenoiser:
    if not isinstance(model, MotionDenoiser):
        raise TypeError(f"model must be a MotionDenoiser, got {type(model).__name__}")
    return model


def training_data(n: int, seed: int = 0) -> tuple[list[Instruction], torch.Tensor]:
    """``n`` training instructions and one reference motion of each (varied), (n, FRAMES, 2) pixels."""
    todo = instructions(n, "train", seed)
    rng = np.random.default_rng([_SPLIT_STREAM["train"], seed, 1])
    return todo, torch.stack([reference_trajectory(i, rng) for i in todo]) if todo else torch.zeros(0, FRAMES, 2)


def motion_loss(model: MotionDenoiser, x0: torch.Tensor, words: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """MDM's simple loss, ‖x₀ − G(x_t, t, text)‖², with t uniform and x_t from the forward process."""
    model = _check_model(model)
    B = len(x0)
    t = torch.randint(0, model.config.T, (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    # vlmlib.diffusion's equations take (B, C, H, W): a batch (B, F, 2) is viewed as (B, F, 2, 1)
    x_t = q_sample(x0[..., None], t, noise[..., None], model.schedule)[..., 0]
    return ((model(x_t, t, words) - x0) ** 2).mean()


def train_motion(config: MotionConfig | None = None, recipe: MotionRecipe | None = None,
                 progress: bool = True, device: str | torch.device = "cpu",
                 ) -> tuple[MotionDenoiser, dict[str, list[float]], float]:
    """Train a :class:`MotionDenoiser` on reference motions of the train split; return the model, its
    loss history and the seconds taken. A share ``recipe.cond_dropout`` of each batch gets the empty
    instruction, so that the same network is also the unconditional model guidance needs."""
    from .training import train

    config = config if config is not None else MotionConfig()
    recipe = recipe if recipe is not None else MotionRecipe()
    if not isinstance(config, MotionConfig):
        raise TypeError(f"config must be a MotionConfig, got {type(config).__name__}")
    if not isinstance(recipe, MotionRecipe):
        raise TypeError(f"recipe must be a MotionRecipe, got {type(recipe).__name__}")
    device = _device(device)
    torch.manual_seed(recipe.seed)
    todo, paths = training_data(recipe.n_train, recipe.seed)
    words, x0 = tokenize(todo, config.max_words).to(device), to_model_space(paths).to(device)
    model = MotionDenoiser(config).to(device)
    g = torch.Generator().manual_seed(recipe.seed)       # on the CPU: the same batches on any device

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(x0), (recipe.batch_size,), generator=g).to(device)
        w = words[idx].clone()
        w[(torch.rand(recipe.batch_size, generator=g) < recipe.cond_dropout).to(device)] = 0   # the empty instruction
        return motion_loss(model, x0[idx], w, g)

    start = time.perf_counter()
    with contextlib.ExitStack() as quiet:
        if not progress:       # the bar goes to stdout (plain) or stderr (tqdm): hide both
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        history = train(model, loss_fn, recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
                        warmup=recipe.warmup, desc="training the motion model")
    return model.eval(), history, time.perf_counter() - start


@torch.no_grad()
def sample_motion(model: MotionDenoiser, instructions: Sequence[Instruction | str], guidance: float = 1.0,
                  steps: int = 20, seed: int = 0, return_path: bool = False):
    """Trajectories (N, F, 2) in pixels for instructions (or sentences; "" is the empty one).

    DDIM (η = 0) from Gaussian noise in ``steps`` steps of :func:`vlmlib.diffusion.ddim_step`. At each
    step the model predicts x̂₀ for the instruction and for the empty instruction, and classifier-free
    guidance combines them as :func:`vlmlib.diffusion.guide` does: x̂₀ = x̂₀(∅) + w·(x̂₀(c) − x̂₀(∅)),
    ``w = guidance`` (``diffusers``' ``guidance_scale``; MDM applies it to x̂₀ in the same way). w = 1
    is the plain conditional model (the default: at this size it already does what it is asked, and
    w > 1 exaggerates the motion, so that the shape overshoots its last move, most on held-out pairs
    of moves; chapter 7 measures it), w = 0 the unconditional one (it ignores the text). x̂₀ is
    clamped to [−1, 1] before the step. With ``return_path`` it also returns x̂₀ of every step in pixels,
    (steps, N, F, 2).
    """
    model = _check_model(model)
    if isinstance(instructions, (str, Instruction)) or not hasattr(instructions, "__iter__"):
        raise TypeError("instructions must be a list of Instruction (or sentences); wrap one in a list")
    instructions = list(instructions)
    if not instructions:
        raise ValueError("instructions is empty: nothing to sample")
    guidance = checks.number(guidance, "guidance", low=0.0)
    seed = checks.integer(seed, "seed", minimum=0)
    c, schedule = model.config, model.schedule
    ts = timesteps_for(steps, c.T)
    device = next(model.parameters()).device
    words = tokenize(instructions, c.max_words).to(device)
    empty = torch.zeros_like(words)
    N = len(words)
    model.eval()
    x = torch.randn((N, c.frames, 2), generator=torch.Generator().manual_seed(seed)).to(device)
    path = []
    for i, t in enumerate(ts):
        tt = torch.full((N,), t, dtype=torch.long, device=device)
        if guidance == 1:
            x0 = model(x, tt, words)
        elif guidance == 0:
            x0 = model(x, tt, empty)
        else:      # one batch of 2N: the unconditional and the conditional prediction
            x0_u, x0_c = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([empty, words])).chunk(2)
            x0 = guide(x0_u, x0_c, guidance)
        x0 = x0.clamp(-1, 1)
        ab = schedule.alpha_bar[t].item()
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)                 # the ε that agrees with x̂₀
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = ddim_step(eps[..., None], t, x[..., None], schedule, t_prev=t_prev, x0=x0[..., None])[..., 0]
        if return_path:
            path.append(to_pixels(x0).cpu())
    out = to_pixels(x).cpu()
    return (out, torch.stack(path)) if return_path else out


def evaluate_motion(model: MotionDenoiser, n: int = 300, guidance: float = 1.0, steps: int = 20,
                    seed: int = 0, splits: Sequence[str] = ("test", "held_out")) -> dict[str, dict[str, float]]:
    """:func:`motion_scores` of sampled trajectories for ``n`` instructions of each split
    (instructions drawn with ``seed`` + 1000, samples with ``seed``)."""
    model = _check_model(model)
    n = checks.integer(n, "n", minimum=1)
    out = {}
    for split in splits:
        todo = instructions(n, split, seed + 1000)
        out[split] = motion_scores(sample_motion(model, todo, guidance, steps, seed), todo)
    return out


def default_settings() -> tuple[MotionConfig, MotionRecipe]:
    """The chapter's motion model: its configuration and recipe (the same on a CPU and a GPU)."""
    return MotionConfig(), MotionRecipe()


def build_motion(config: MotionConfig | None = None, recipe: MotionRecipe | None = None,
                 verbose: bool = True, device: str | torch.device = "cpu") -> tuple[MotionDenoiser, Artifact]:
    """The trained motion model for ``config`` and ``recipe``: from the artifact cache, or trained now.

    A fresh build also stores its training time and, in ``artifact.metrics``, the scores of
    :func:`evaluate_motion` (guidance 1) ("test_all", "held_out_all", ...).
    """
    default_config, default_recipe = default_settings()
    config = config if config is not None else default_config
    recipe = recipe if recipe is not None else default_recipe
    if not isinstance(config, MotionConfig):
        raise TypeError(f"config must be a MotionConfig, got {type(config).__name__}")
    if not isinstance(recipe, MotionRecipe):
        raise TypeError(f"recipe must be a MotionRecipe, got {type(recipe).__name__}")
    key = {"model": config.to_dict(), "recipe": recipe.to_dict(), "data": _DATA_VERSION}

    def build() -> Artifact:
        model, history, seconds = train_motion(config, recipe, progress=verbose, device=device)
        metrics = {"train_seconds": seconds}
        for split, scores in evaluate_motion(model).items():
            metrics.update({f"{split}_{k}": v for k, v in scores.items()})
        return Artifact("motion", key, {k: v.cpu() for k, v in model.state_dict().items()}, metrics,
                        {"loss": history["loss"]})

    art = cached("motion", key, build, verbose=verbose)
    model = MotionDenoiser(config)
    model.load_state_dict(art.state_dict)
    return model.eval().to(_device(device)), art


#: Bumped when instructions, reference motions or the training data change: cached models are retrained.
_DATA_VERSION = 2


# -- pictures -----------------------------------------------------------------------------------------
def render_frames(shape: Instruction | Shape, trajectory, seed: int = 0) -> torch.Tensor:
    """The frames (F, 3, 32, 32) in [0, 1] of ``shape`` (an Instruction or a ShapesWorld Shape) moving
    along ``trajectory`` (F, 2) pixels: a video drawn by ShapesWorld's own renderer.

    The background, the pixel noise, the shape's size and tint are drawn once from ``seed``, so only
    the shape's position changes from frame to frame.
    """
    if not isinstance(shape, (Instruction, Shape)):
        raise TypeError(f"shape must be an Instruction or a ShapesWorld Shape, got {checks._given(shape)}")
    path = _as_paths(trajectory, "trajectory", 2)
    if not np.isfinite(path).all():
        raise ValueError("trajectory holds NaN or infinite values: there is nothing to draw")
    seed = checks.integer(seed, "seed", minimum=0)
    world = ShapesWorld(image_size=IMAGE_SIZE)
    rng = np.random.default_rng([seed, 7])
    radius = (_RADIUS[shape.size] + rng.uniform(-_RADIUS_JITTER, _RADIUS_JITTER)) * IMAGE_SIZE
    tint = rng.uniform(-0.06, 0.06, (1, 1, 3))
    colour = np.array([[COLOUR_NAMES.index(shape.colour)]])
    kind = np.array([[KINDS.index(shape.kind)]])
    frames = []
    for x, y in path:
        # the same generator for every frame: the same background and noise, the shape moved
        frames.append(world._render(np.ones(1, dtype=int), colour, kind, np.array([[x]]), np.array([[y]]),
                                    np.array([[radius]]), tint, np.random.default_rng([seed, 8]))[0])
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def short_text(instruction: Instruction) -> str:
    """A caption for figures: "top left: right, then down"."""
    instruction = _check_instruction(instruction)
    return f"{instruction.start}: {', then '.join(instruction.moves)}"


def plot_trajectories(trajectories, instructions: Sequence[Instruction] | None = None, ncols: int = 6,
                      size: float = 1.6, title: str | None = None):
    """Draw trajectories (N, F, 2) on the 3×3 grid, one panel each: the path from a dot (the start)
    to an arrow head (the end). With ``instructions`` each panel is captioned and its path is green
    when :func:`motion_correct`, red when not, with the asked path dashed in grey. Returns the figure."""
    import matplotlib.pyplot as plt

    paths = _as_paths(trajectories, "trajectories", 3)
    if instructions is not None:
        instructions = _check_instructions(instructions, length=len(paths))
    if not len(paths):
        raise ValueError("trajectories is empty: nothing to draw")
    ncols = min(checks.integer(ncols, "ncols", minimum=1), len(paths))
    size = checks.number(size, "size", low=0.0, low_open=True)
    nrows = (len(paths) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.35) * nrows + (0.4 if title else 0)),
                             squeeze=False)
    S = IMAGE_SIZE
    for i, ax in enumerate(axes.flat):
        ax.set_xlim(0, S)
        ax.set_ylim(S, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        if i >= len(paths):
            ax.axis("off")
            continue
        for k in (1, 2):
            ax.axhline(k * S / 3, color="0.8", lw=0.8)
            ax.axvline(k * S / 3, color="0.8", lw=0.8)
        p, colour = paths[i], "tab:blue"
        if instructions is not None:
            asked = np.array([cell_centre(c) for c in instructions[i].cells])
            ax.plot(asked[:, 0], asked[:, 1], ls="--", color="0.6", lw=1)
            colour = "tab:green" if _judge(p, instructions[i])["all"] else "tab:red"
            ax.set_title(short_text(instructions[i]), fontsize=7)
        if np.isfinite(p).all():
            ax.plot(p[:, 0], p[:, 1], color=colour, lw=1.5)
            ax.plot(p[0, 0], p[0, 1], "o", color=colour, ms=4)
            ax.annotate("", xy=p[-1], xytext=p[-2], arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
