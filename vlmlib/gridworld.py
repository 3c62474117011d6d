"""A grid world of ShapesWorld shapes, instructions in words, and an expert that solves them (chapter 11).

Chapter 11 ("From language to action") trains a vision-language-action policy: it reads an image
and an instruction and answers with an action. This module is the world it acts in.

**The world.** A 5×5 grid of 10-pixel cells, seen as one image (3, 50, 50) in [0, 1], so that a
ViT with 10-pixel patches gives one token per cell. It holds 2 to 4 ShapesWorld shapes (colour and
kind from :mod:`vlmlib.shapesworld`, small or large, each centred in its own cell) and the
**agent**, a white ring in a cell of its own: white is none of ShapesWorld's colours and a ring none
of its kinds, so the agent is never mistaken for a shape. Images are drawn exactly as
:func:`shapesworld.draw` draws the shapes (same background, tints and noise; a test checks the
pixels against it), with the ring laid on before the noise. A task's ``seed`` fixes the lighting, so
every frame of an episode shares its background, tints and noise.

**Actions and dynamics.** :data:`ACTIONS` = up, down, left, right and stop. A move takes the agent
one cell. Moving into a shape's cell **pushes** the shape one cell on, if the cell beyond is inside
the grid and free; otherwise the move is blocked and the agent stays (so does a move into the
wall). The agent never passes through a shape, and shapes never push each other. Everything is
deterministic.

**Stop** ends the episode, and an episode **succeeds when the policy stops in a state that fulfils
the instruction** (:func:`success`); stopping anywhere else, or running out of steps, fails. The
policy must say when it is done, as RT-1's actions include "terminate the episode" and
instruction-following benchmarks end with STOP. Without it, success would be granted the moment
the agent happened to pass the right cell: a text-blind policy that walks up to a random shape
then succeeded in about 60% of ``goto`` tasks (a random walk in about 40%, in one run of 300
test tasks), which leaves little room to show what the words are worth. An episode also ends after ``max_steps`` actions (by default
3× the expert's plan, at least 12).

**Instructions** come in three families (:data:`FAMILIES`), each written from several templates:

- ``goto``: "go to the red circle". Success: the agent is in a cell next to the shape (4-adjacent;
  it can never stand on it, since stepping into it pushes it).
- ``push``: "push the blue square to the left". Success: that shape sits exactly one cell from
  where it started, in that direction (as "push the blue square one cell to the left" says): pushed
  two cells, or sideways as well, it is not what was asked.
- ``refer``: "go to the shape to the left of the green cross", a referring expression: the target
  is not named by its colour and kind but by where it stands relative to a named shape (the
  *anchor*). The relation is read as in :func:`shapesworld.relations`: "to the left of" means a
  smaller column (any row), "above" a smaller row. The generator only asks when exactly one other
  shape stands in that relation to the anchor, and only when this stays so all along the expert's
  path (a shortest path may push shapes out of the way, which could change who stands where). The
  target is fixed at the start: in a state off that path where the words no longer fit, it is still
  the shape to reach. Success as for ``goto``.

Every scene holds distinct colour–kind pairs, so "the red circle" always names one shape.

**Splits** (:func:`tasks`, :data:`SPLITS`), each from its own random stream:

- ``train`` and ``test``: no shape of :data:`shapesworld.HELD_OUT` appears in the scene at all, and
  the instruction is written from a training template;
- ``holdout_pairs``: the shape the instruction names (the target of ``goto`` and ``push``, the
  anchor of ``refer``) is a held-out colour–kind pair, never seen in training; training templates;
- ``holdout_templates``: seen pairs, but a paraphrase never used in training (:data:`TEMPLATES`,
  ``"held_out"``), written only with words that training instructions use, so that a word-level
  text encoder has a chance ("walk next to the red circle": walk, next, to, the are all known).

**The expert** is breadth-first search over (agent cell, shape cells), moves tried in the fixed
order of :data:`MOVES`, so it finds the fewest moves and, among shortest plans, the first in that
order; its plan ends with "stop". Its first action from any state (:func:`expert_action`) therefore
agrees with the plan from the start, step by step, and labels states off the expert's path too
(DAgger). Tasks are generated only when the expert solves them within :data:`MAX_PLAN` moves.

**Use.** :func:`tasks` (or :func:`task_from_text` for your own words) gives tasks; :func:`reset`,
:func:`step` and :func:`success` are the environment; :func:`render` draws a state;
:func:`expert_plan` and :func:`expert_action` are the expert; :func:`demonstrations` gives
(image, instruction, action) triples for behaviour cloning; :func:`run_episode` (one policy call per
step) and :func:`run_episodes` (batched) measure a policy; :func:`frames` turns an episode into a
film for :func:`plotting.video_animation`; :func:`skills` lists the simple instructions a SayCan-style
planner can choose from in a scene.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import checks
from .shapesworld import _SDF, COLOURS, COLOUR_NAMES, HELD_OUT, KINDS, RELATIONS, SIZES

GRID = 5                    # cells per side
CELL = 10                   # pixels per cell
IMAGE_SIZE = GRID * CELL    # 50
NOISE = 0.03                # ShapesWorld's pixel noise
MOVES: tuple[str, ...] = ("up", "down", "left", "right")
ACTIONS: tuple[str, ...] = MOVES + ("stop",)
FAMILIES: tuple[str, ...] = ("goto", "push", "refer")
SPLITS: tuple[str, ...] = ("train", "test", "holdout_pairs", "holdout_templates")
#: Tasks are generated only when the expert solves them in at most this many moves (and a stop).
MAX_PLAN = 16
#: The expert's search gives up beyond this depth or this many states (then it returns None).
_SEARCH_DEPTH, _SEARCH_STATES = 40, 50_000
_MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
#: How a push direction reads in an instruction.
DIRECTION_PHRASES = {"up": "up", "down": "down", "left": "to the left", "right": "to the right"}
#: Paraphrase templates per family; the ``held_out`` ones are used only by the holdout_templates split.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "goto": {
        "train": ("go to the {shape}", "move to the {shape}", "walk to the {shape}", "go next to the {shape}"),
        "held_out": ("walk next to the {shape}", "move next to the {shape}"),
    },
    "push": {
        "train": ("push the {shape} {direction}", "move the {shape} {direction}",
                  "push the {shape} one cell {direction}"),
        "held_out": ("move the {shape} one cell {direction}",),
    },
    "refer": {
        "train": ("go to the shape {relation} the {shape}", "walk to the shape {relation} the {shape}",
                  "move to the shape that is {relation} the {shape}"),
        "held_out": ("go to the shape that is {relation} the {shape}",),
    },
}
# Shape radii in pixels: about ShapesWorld's (0.11 and 0.16 of a 32-px image, whose cells are 10.7 px),
# the large one as large as keeps every kind inside its 10-px cell (the triangle's corners decide: 4.3).
_RADIUS = {"small": 3.4, "large": 4.3}
_RING = (2.9, 0.75)         # the agent: a white ring, centre radius and half-width in pixels
_SPLIT_STREAM = {"train": 1, "test": 2, "holdout_pairs": 3, "holdout_templates": 4}


@dataclass(frozen=True)
class GridShape:
    """A shape in the grid: its colour, kind and size, and its cell (row 0 at the top, column 0 at the left)."""

    colour: str
    kind: str
    size: str
    cell: tuple[int, int]

    def __post_init__(self):
        checks.choice(self.colour, "GridShape.colour", COLOUR_NAMES)
        checks.choice(self.kind, "GridShape.kind", KINDS)
        checks.choice(self.size, "GridShape.size", SIZES)
        object.__setattr__(self, "cell", _check_cell(self.cell, "GridShape.cell"))

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class State:
    """Where everything is: the agent's cell and the shapes (in a fixed order, with their cells)."""

    agent: tuple[int, int]
    shapes: tuple[GridShape, ...]

    def __post_init__(self):
        _check_state_fields(self)


@dataclass(frozen=True)
class Task:
    """One instruction in one scene, with what success means.

    ``target`` is the index (in ``start.shapes``) of the shape that success is about: the one to
    reach (``goto``, ``refer``) or to push (``push``). ``direction`` is the push's direction;
    ``anchor`` and ``relation`` say how ``refer`` names its target. ``seed`` fixes how the episode
    is drawn (background, tints, noise), the same in every frame.
    """

    instruction: str
    family: str
    start: State
    target: int
    template: str
    split: str
    seed: int
    direction: str | None = None
    anchor: int | None = None
    relation: str | None = None

    def __post_init__(self):
        if not isinstance(self.instruction, str):
            raise TypeError(f"Task.instruction must be a string, got {checks._given(self.instruction)}")
        checks.choice(self.family, "Task.family", FAMILIES)
        if not isinstance(self.start, State):
            raise TypeError(f"Task.start must be a gridworld.State, got {checks._given(self.start)}")
        n = len(self.start.shapes)
        checks.integer(self.target, "Task.target", 0, n - 1)
        checks.choice(self.split, "Task.split", SPLITS + ("custom",))
        checks.integer(self.seed, "Task.seed", minimum=0)
        if self.family == "push":
            checks.choice(self.direction, "Task.direction (the push's direction)", MOVES)
        if self.family == "refer":
            checks.integer(self.anchor, "Task.anchor (the shape the words name)", 0, n - 1)
            checks.choice(self.relation, "Task.relation", RELATIONS)
            if self.anchor == self.target:
                raise ValueError("Task.anchor and Task.target must be different shapes")

    @property
    def goal_cell(self) -> tuple[int, int] | None:
        """For ``push``: the cell where the target must end up; None for the other families."""
        if self.family != "push":
            return None
        (r, c), (dr, dc) = self.start.shapes[self.target].cell, _MOVES[self.direction]
        return (r + dr, c + dc)


@dataclass
class Episode:
    """What happened when a policy was run on a task: ``success`` (it stopped where the instruction
    is fulfilled), ``steps`` actions taken (a final "stop" included), ``states`` with ``steps + 1``
    entries (the start and the state after each action); ``frames`` holds the images the policy saw
    and the last state's when recorded."""

    task: Task
    success: bool
    steps: int
    actions: list[str]
    states: list[State]
    frames: torch.Tensor | None = None


# -- checks -------------------------------------------------------------------------------------------
def _check_cell(cell, name: str) -> tuple[int, int]:
    if not isinstance(cell, (tuple, list)) or len(cell) != 2:
        raise TypeError(f"{name} must be a (row, column) pair, got {checks._given(cell)}")
    r, c = (checks.integer(v, name, 0, GRID - 1) for v in cell)
    return (r, c)


def _check_state_fields(state: State) -> None:
    object.__setattr__(state, "agent", _check_cell(state.agent, "State.agent"))
    if not isinstance(state.shapes, (tuple, list)) or not all(isinstance(s, GridShape) for s in state.shapes):
        raise TypeError(f"State.shapes must be a tuple of GridShape, got {checks._given(state.shapes)}")
    shapes = tuple(state.shapes)
    cells = [s.cell for s in shapes]
    if len(set(cells)) != len(cells) or state.agent in cells:
        raise ValueError(f"State: the agent {state.agent} and the shapes {cells} must each have a cell of their own")
    object.__setattr__(state, "shapes", shapes)


def _check_state(state, name: str = "state") -> State:
    if not isinstance(state, State):
        raise TypeError(f"{name} must be a gridworld.State (e.g. reset(task)), got {checks._given(state)}")
    return state


def _check_task(task, name: str = "task") -> Task:
    if not isinstance(task, Task):
        raise TypeError(f"{name} must be a gridworld.Task (e.g. tasks(1)[0]), got {checks._given(task)}")
    return task


def _check_action(action, name: str = "action") -> str:
    """An action by name (one of :data:`ACTIONS`) or by its index in ACTIONS."""
    if isinstance(action, (int, np.integer, torch.Tensor)) and not isinstance(action, (bool, np.bool_)):
        return ACTIONS[checks.integer(action, name, 0, len(ACTIONS) - 1)]
    if isinstance(action, (str, np.str_)):
        return checks.choice(action, name, ACTIONS)
    raise TypeError(f"{name} must be one of {list(ACTIONS)} or its index 0-{len(ACTIONS) - 1}, "
                    f"got {checks._given(action)}")


# -- dynamics -----------------------------------------------------------------------------------------
def reset(task: Task) -> State:
    """The state a task starts from."""
    return _check_task(task).start


def _inside(r: int, c: int) -> bool:
    return 0 <= r < GRID and 0 <= c < GRID


def step(state: State, action: str | int) -> State:
    """The state after one action: the agent moves one cell, pushing a shape in its way one cell on
    if the cell beyond is inside the grid and free; otherwise it stays where it is. "stop" changes
    nothing (it ends the episode: see :func:`run_episode`)."""
    state, action = _check_state(state), _check_action(action)
    if action == "stop":
        return state
    (r, c), (dr, dc) = state.agent, _MOVES[action]
    nxt = (r + dr, c + dc)
    if not _inside(*nxt):
        return state
    cells = [s.cell for s in state.shapes]
    if nxt not in cells:
        return State(nxt, state.shapes)
    beyond = (nxt[0] + dr, nxt[1] + dc)
    if not _inside(*beyond) or beyond in cells:
        return state
    j = cells.index(nxt)
    shapes = state.shapes[:j] + (replace(state.shapes[j], cell=beyond),) + state.shapes[j + 1:]
    return State(nxt, shapes)


def _adjacent(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1


def success(state: State, task: Task) -> bool:
    """Whether ``state`` fulfils ``task``'s instruction (see the module docstring for each family):
    an episode succeeds when its policy says "stop" in such a state."""
    state, task = _check_state(state), _check_task(task)
    if len(state.shapes) != len(task.start.shapes):
        raise ValueError(f"state has {len(state.shapes)} shapes but the task's scene has {len(task.start.shapes)}")
    if task.family == "push":
        return state.shapes[task.target].cell == task.goal_cell
    return _adjacent(state.agent, state.shapes[task.target].cell)


# -- the expert: breadth-first search over compact states -------------------------------------------------
# A cell is one integer r * GRID + c; a search state is (agent, shape cells...) as a tuple of ints.
def _neighbours() -> tuple[tuple[int, ...], ...]:
    table = []
    for i in range(GRID * GRID):
        r, c = divmod(i, GRID)
        table.append(tuple((r + dr) * GRID + c + dc if _inside(r + dr, c + dc) else -1 for dr, dc in _MOVES.values()))
    return tuple(table)


_NEXT = _neighbours()
_ADJ = tuple(frozenset(n for n in _NEXT[i] if n >= 0) for i in range(GRID * GRID))


def _key(state: State) -> tuple[int, ...]:
    return (state.agent[0] * GRID + state.agent[1],) + tuple(s.cell[0] * GRID + s.cell[1] for s in state.shapes)


def _fast_step(key: tuple[int, ...], a: int) -> tuple[int, ...] | None:
    """The next compact state, or None when the move is blocked."""
    nxt = _NEXT[key[0]][a]
    if nxt < 0:
        return None
    shapes = key[1:]
    if nxt not in shapes:
        return (nxt,) + shapes
    beyond = _NEXT[nxt][a]
    if beyond < 0 or beyond in shapes:
        return None
    j = shapes.index(nxt)
    return (nxt,) + shapes[:j] + (beyond,) + shapes[j + 1:]


@functools.lru_cache(maxsize=200_000)
def _search(key: tuple[int, ...], target: int, goal: int) -> tuple[int, ...] | None:
    """Shortest plan (action indices) from ``key``; ``goal`` is the push's goal cell, or -1 for
    "stand next to shape ``target``". None when there is none within the search bounds."""
    def done(k):
        return k[1 + target] == goal if goal >= 0 else k[0] in _ADJ[k[1 + target]]

    if done(key):
        return ()
    parent = {key: None}
    frontier, depth = [key], 0
    while frontier and depth < _SEARCH_DEPTH and len(parent) < _SEARCH_STATES:
        depth += 1
        nxt_frontier = []
        for k in frontier:
            for a in range(len(MOVES)):
                n = _fast_step(k, a)
                if n is None or n in parent:
                    continue
                parent[n] = (k, a)
                if done(n):
                    plan = []
                    while parent[n] is not None:
                        n, a = parent[n]
                        plan.append(a)
                    return tuple(reversed(plan))
                nxt_frontier.append(n)
        frontier = nxt_frontier
    return None


def _goal(task: Task) -> int:
    g = task.goal_cell
    return -1 if g is None else (g[0] * GRID + g[1] if _inside(*g) else -2)    # -2: never reached


def expert_plan(state: State, task: Task) -> list[str] | None:
    """The fewest moves from ``state`` to success, then "stop" (just ["stop"] if already there), or
    None when the task cannot be done from ``state`` (e.g. the shape to push is stuck in a corner)."""
    state, task = _check_state(state), _check_task(task)
    if len(state.shapes) != len(task.start.shapes):
        raise ValueError(f"state has {len(state.shapes)} shapes but the task's scene has {len(task.start.shapes)}")
    goal = _goal(task)
    plan = None if goal == -2 else _search(_key(state), task.target, goal)
    return None if plan is None else [MOVES[a] for a in plan] + ["stop"]


def expert_action(state: State, task: Task) -> str | None:
    """The expert's action in ``state`` (any state, on its path or off it): the first action of
    :func:`expert_plan` ("stop" when the task is done), or None when it cannot be done from ``state``."""
    plan = expert_plan(state, task)
    return None if plan is None else plan[0]


# -- instructions and tasks -----------------------------------------------------------------------------
def _relation_holds(relation: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether cell ``a`` is ``relation`` cell ``b`` (ShapesWorld's reading: columns, then rows)."""
    return {RELATIONS[0]: a[1] < b[1], RELATIONS[1]: a[1] > b[1],
            RELATIONS[2]: a[0] < b[0], RELATIONS[3]: a[0] > b[0]}[relation]


def instruction_text(template: str, shape: GridShape, direction: str | None = None, relation: str | None = None) -> str:
    """Fill a template of :data:`TEMPLATES` with a shape's name and a direction or relation."""
    return template.format(shape=shape.name, direction=DIRECTION_PHRASES.get(direction, ""), relation=relation or "")


def _pattern(template: str) -> re.Pattern:
    """A regular expression that reads a template's blanks back out of an instruction."""
    def alternatives(phrases):
        return "(" + "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)) + ")"
    text = re.escape(template).replace(r"\{shape\}", "{shape}").replace(r"\{direction\}", "{direction}")
    text = text.replace(r"\{relation\}", "{relation}")
    def group(name, phrases):
        return alternatives(phrases).replace("(", f"(?P<{name}>", 1)
    return re.compile(text.format(shape=group("colour", COLOUR_NAMES) + " " + group("kind", KINDS),
                                  direction=group("direction", DIRECTION_PHRASES.values()),
                                  relation=group("relation", RELATIONS)))


def task_from_text(state: State, instruction: str, seed: int = 0) -> Task:
    """The task that ``instruction`` asks for in ``state``: any paraphrase of :data:`TEMPLATES`
    (held out or not), naming a shape that is in the scene. Lets you type your own instruction, and
    turns a skill that a language model chose into something the expert or a policy can do (SayCan).
    Its ``split`` is ``"custom"``. Raises ValueError, saying why, for text it cannot read."""
    state = _check_state(state)
    if not isinstance(instruction, (str, np.str_)):
        raise TypeError(f"instruction must be a string, got {checks._given(instruction)}")
    text = " ".join(str(instruction).lower().replace(".", " ").split())
    names = {s.name: j for j, s in enumerate(state.shapes)}
    for family, pools in TEMPLATES.items():
        for template in pools["train"] + pools["held_out"]:
            m = _pattern(template).fullmatch(text)
            if m is None:
                continue
            name = f"{m['colour']} {m['kind']}"
            if name not in names:
                raise ValueError(f"instruction {instruction!r} names the {name}, which is not in the scene "
                                 f"(it holds: {', '.join(names)})")
            named = names[name]
            if family == "goto":
                return Task(text, family, state, named, template, "custom", seed)
            if family == "push":
                direction = {v: k for k, v in DIRECTION_PHRASES.items()}[m["direction"]]
                return Task(text, family, state, named, template, "custom", seed, direction=direction)
            target = _referent(state, named, m["relation"])
            if target is None:
                raise ValueError(f"instruction {instruction!r}: no single shape is {m['relation']} the {name}")
            return Task(text, family, state, target, template, "custom", seed, anchor=named, relation=m["relation"])
    examples = [pools["train"][0] for pools in TEMPLATES.values()]
    raise ValueError(f"instruction {instruction!r} follows none of the templates, such as {examples}, "
                     f"with {{shape}} one of the colours {list(COLOUR_NAMES)} and one of the kinds {list(KINDS)}")


def skills(state: State) -> list[str]:
    """Every simple instruction about this scene, in one wording each: go to each shape, push each
    shape each way. The skills a SayCan-style planner chooses from (score them with a language
    model; :func:`expert_plan` says which can be done from ``state`` and in how many moves)."""
    state = _check_state(state)
    out = [instruction_text(TEMPLATES["goto"]["train"][0], s) for s in state.shapes]
    out += [instruction_text(TEMPLATES["push"]["train"][0], s, d) for s in state.shapes for d in MOVES]
    return out


def _pairs(held: bool) -> list[tuple[str, str]]:
    return [(c, k) for c in COLOUR_NAMES for k in KINDS if ((c, k) in HELD_OUT) == held]


def _sample_task(rng: np.random.Generator, family: str, split: str, seed: int) -> Task | None:
    """One try at a task; None when this draw does not make a valid one."""
    seen = _pairs(held=False)
    n = int(rng.integers(2, 5))
    picks = [seen[i] for i in rng.choice(len(seen), size=n, replace=False)]
    named = int(rng.integers(n))                        # the shape the instruction names
    if split == "holdout_pairs":
        held = [p for p in HELD_OUT if p not in picks]
        picks[named] = held[int(rng.integers(len(held)))]
    cells = [divmod(int(i), GRID) for i in rng.choice(GRID * GRID, size=n + 1, replace=False)]
    shapes = tuple(GridShape(c, k, SIZES[int(rng.integers(len(SIZES)))], cell) for (c, k), cell in zip(picks, cells))
    start = State(cells[n], shapes)
    pool = TEMPLATES[family]["held_out" if split == "holdout_templates" else "train"]
    template = pool[int(rng.integers(len(pool)))]
    direction = relation = anchor = None
    target = named
    if family == "push":
        direction = MOVES[int(rng.integers(len(MOVES)))]
        (r, c), (dr, dc) = shapes[target].cell, _MOVES[direction]
        if not (_inside(r + dr, c + dc) and _inside(r - dr, c - dc)):   # no room to push it, or to push from
            return None
    elif family == "refer":
        anchor, relation = named, RELATIONS[int(rng.integers(len(RELATIONS)))]
        target = _referent(start, anchor, relation)
        if target is None:
            return None
    text = instruction_text(template, shapes[named], direction, relation)
    task = Task(text, family, start, target, template, split, seed, direction, anchor, relation)
    plan = expert_plan(start, task)
    if plan is None or not 2 <= len(plan) <= MAX_PLAN + 1:      # at least one move, then stop
        return None
    if family == "refer":                 # the expert must not push shapes so that the words stop fitting
        state = start
        for a in plan:
            state = step(state, a)
            if _referent(state, anchor, relation) != target:
                return None
    return task


def _referent(state: State, anchor: int, relation: str) -> int | None:
    """The one shape that stands in ``relation`` to shape ``anchor``, or None if none or several do."""
    fits = [j for j, s in enumerate(state.shapes)
            if j != anchor and _relation_holds(relation, s.cell, state.shapes[anchor].cell)]
    return fits[0] if len(fits) == 1 else None


def tasks(n: int, split: str = "train", seed: int = 0, families: Sequence[str] = FAMILIES) -> list[Task]:
    """``n`` tasks of a split, the families taken in turn. The same arguments give the same tasks."""
    n = checks.integer(n, "n", minimum=0)
    split = checks.choice(split, "split", SPLITS)
    seed = checks.integer(seed, "seed", minimum=0)
    families = checks.text_list(families, "families")
    if not families:
        raise ValueError(f"families must name at least one of {list(FAMILIES)}")
    for f in families:
        checks.choice(f, "families", FAMILIES)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    out = []
    for i in range(n):
        task = None
        while task is None:
            task = _sample_task(rng, families[i % len(families)], split, int(rng.integers(2**31)))
        out.append(task)
    return out


def vocabulary() -> list[str]:
    """Every word an instruction can use (all templates, colours, kinds, directions, relations), in a fixed order."""
    words: list[str] = []
    texts = [t for fam in TEMPLATES.values() for pool in fam.values() for t in pool]
    texts += list(DIRECTION_PHRASES.values()) + list(RELATIONS) + list(COLOUR_NAMES) + list(KINDS)
    for text in texts:
        for w in text.replace("{shape}", "").replace("{direction}", "").replace("{relation}", "").split():
            if w not in words:
                words.append(w)
    return words


# -- rendering ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _patch(kind: str, size: str) -> np.ndarray:
    """The cover (alpha) of a shape centred in a cell, (CELL, CELL, 1): ShapesWorld's signed distance."""
    yy, xx = np.mgrid[0:CELL, 0:CELL].astype(np.float32) + 0.5
    d = CELL / 2
    if kind == "agent":
        ring, half = _RING
        sdf = half - np.abs(np.sqrt((xx - d) ** 2 + (yy - d) ** 2) - ring)
    else:
        sdf = _SDF[kind](xx - np.float32(d), yy - np.float32(d), np.float32(_RADIUS[size]))
    return np.clip(sdf + 0.5, 0.0, 1.0).astype(np.float32)[..., None]


def _pixel_shapes(state: State):
    """The shapes as :class:`shapesworld.Shape` at their pixel centres (what :func:`shapesworld.draw` takes)."""
    from .shapesworld import Shape, position_name

    return [Shape(s.colour, s.kind, s.size, position_name((s.cell[1] + 0.5) * CELL, (s.cell[0] + 0.5) * CELL, IMAGE_SIZE),
                  (s.cell[1] + 0.5) * CELL, (s.cell[0] + 0.5) * CELL, _RADIUS[s.size]) for s in state.shapes]


@functools.lru_cache(maxsize=512)
def _lighting(seed: int, colours: tuple[str, ...], noise: float):
    """What ``seed`` draws, in :func:`shapesworld.draw`'s order: the background colour, each shape's
    tinted colour and the pixel noise. Cached: every frame of an episode shares them."""
    rng = np.random.default_rng([seed, 11])
    background = rng.uniform(0.04, 0.20) + rng.uniform(-0.03, 0.03, 3)
    tinted = [np.clip(np.array(COLOURS[c], dtype=np.float32) + rng.uniform(-0.06, 0.06, 3), 0, 1).astype(np.float32)
              for c in colours]
    pixels = rng.normal(0.0, noise, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32) if noise > 0 else None
    for a in [background, pixels] + tinted:
        if a is not None:
            a.flags.writeable = False
    return background, tinted, pixels


def render(state: State, seed: int = 0, noise: float = NOISE) -> torch.Tensor:
    """The image (3, 50, 50) in [0, 1] of a state: ShapesWorld's background, shapes, tints and noise,
    drawn from ``seed`` exactly as :func:`shapesworld.draw` would, and the agent's white ring."""
    state = _check_state(state)
    seed = checks.integer(seed, "seed", minimum=0)
    noise = checks.number(noise, "noise", low=0.0, high=0.5)
    background, tinted, pixels = _lighting(seed, tuple(s.colour for s in state.shapes), noise)
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    img[:] = background
    things = [(s.cell, _patch(s.kind, s.size), rgb) for s, rgb in zip(state.shapes, tinted)]
    things.append((state.agent, _patch("agent", ""), np.ones(3, dtype=np.float32)))
    for (r, c), cover, rgb in things:                     # a shape's cover is zero outside its cell
        view = img[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
        view[:] = view * (1 - cover) + rgb * cover
    if pixels is not None:
        img += pixels
    return torch.from_numpy(np.clip(img, 0.0, 1.0, out=img)).permute(2, 0, 1).contiguous()


def render_many(states: Sequence[State], seeds: Sequence[int] | int = 0) -> torch.Tensor:
    """Images (N, 3, 50, 50) of several states; ``seeds`` is one seed per state or one for all."""
    if isinstance(states, State) or not isinstance(states, (list, tuple)):
        raise TypeError(f"states must be a list of State, got {checks._given(states)}")
    if isinstance(seeds, (int, np.integer)):
        seeds = [seeds] * len(states)
    seeds = list(seeds)
    if len(seeds) != len(states):
        raise ValueError(f"seeds must hold one seed per state ({len(states)}), got {len(seeds)}")
    if not states:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.stack([render(s, seed=k) for s, k in zip(states, seeds)])


# -- episodes -----------------------------------------------------------------------------------------
def default_max_steps(task: Task) -> int:
    """3× the expert's plan from the start (its moves and the stop), and at least 12."""
    return max(12, 3 * len(expert_plan(_check_task(task).start, task)))


def run_episode(policy: Callable[[torch.Tensor, str], str | int], task: Task, max_steps: int | None = None,
                record: bool = False) -> Episode:
    """Run ``policy(image, instruction) -> action`` on a task until it says "stop" or has taken
    ``max_steps`` actions (default :func:`default_max_steps`). It succeeds if it stopped in a state
    that fulfils the instruction.

    ``image`` is the (3, 50, 50) rendering of the current state; the action is a name of
    :data:`ACTIONS` or its index. A policy with the attribute ``reads_first_frame = True`` is called
    ``policy(image, instruction, first_image)``, ``first_image`` being the episode's first image (the
    scene when the instruction was given). With ``record`` the episode keeps the images the policy
    saw, and the last one (see :func:`frames`).
    """
    if not callable(policy):
        raise TypeError(f"policy must be a function (image, instruction) -> action, got {checks._given(policy)}")
    if _reads_first_frame(policy):
        def batched(images, texts, firsts):
            return [policy(images[0], texts[0], firsts[0])]
        batched.reads_first_frame = True
    else:
        def batched(images, texts):
            return [policy(images[0], texts[0])]
    return run_episodes(batched, [task], max_steps, record)[0]


def _reads_first_frame(policy) -> bool:
    return getattr(policy, "reads_first_frame", False) is True


def run_episodes(policy: Callable[[torch.Tensor, list[str]], Sequence], tasks: Sequence[Task],
                 max_steps: int | None = None, record: bool = False) -> list[Episode]:
    """Run a batched ``policy(images (B, 3, 50, 50), instructions) -> B actions`` on many tasks at once
    (one call per step for all unfinished episodes: much faster for a neural policy).

    A policy with the attribute ``reads_first_frame = True`` (a policy with memory of the start) is
    called ``policy(images, instructions, first_images)``, ``first_images`` (B, 3, 50, 50) being each
    episode's first image: the scene as it was when the instruction was given."""
    if not callable(policy):
        raise TypeError(f"policy must be a function (images, instructions) -> actions, got {checks._given(policy)}")
    if isinstance(tasks, Task) or not isinstance(tasks, (list, tuple)):
        raise TypeError(f"tasks must be a list of Task, got {checks._given(tasks)}")
    tasks = [_check_task(t, f"tasks[{i}]") for i, t in enumerate(tasks)]
    if max_steps is not None:
        max_steps = checks.integer(max_steps, "max_steps", minimum=0)
    record = bool(record)
    limits = [max_steps if max_steps is not None else default_max_steps(t) for t in tasks]
    states = [[t.start] for t in tasks]
    actions: list[list[str]] = [[] for _ in tasks]
    done = [False] * len(tasks)
    seen: list[list[torch.Tensor]] = [[] for _ in tasks]
    firsts = render_many([t.start for t in tasks], [t.seed for t in tasks]) if _reads_first_frame(policy) else None
    while True:
        live = [i for i, t in enumerate(tasks) if not done[i] and len(actions[i]) < limits[i]]
        if not live:
            break
        images = torch.stack([render(states[i][-1], tasks[i].seed) for i in live])
        texts = [tasks[i].instruction for i in live]
        chosen = policy(images, texts, firsts[live]) if firsts is not None else policy(images, texts)
        if isinstance(chosen, (str, np.str_)) or not hasattr(chosen, "__len__") or len(chosen) != len(live):
            raise ValueError(f"policy must return one action per image ({len(live)}), got {checks._given(chosen)}")
        for j, i in enumerate(live):
            a = _check_action(chosen[j], "the policy's action")
            if record:
                seen[i].append(images[j])
            actions[i].append(a)
            states[i].append(step(states[i][-1], a))
            done[i] = a == "stop"
    out = []
    for i, t in enumerate(tasks):
        frames = None
        if record:
            frames = torch.stack(seen[i] + [render(states[i][-1], t.seed)])
        won = done[i] and success(states[i][-1], t)
        out.append(Episode(t, won, len(actions[i]), actions[i], states[i], frames))
    return out


def frames(episode: Episode) -> torch.Tensor:
    """The episode as a film (F, 3, 50, 50), F = steps + 1, for :func:`plotting.video_animation`."""
    if not isinstance(episode, Episode):
        raise TypeError(f"episode must be a gridworld.Episode (from run_episode), got {checks._given(episode)}")
    if episode.frames is not None:
        return episode.frames
    return render_many(episode.states, episode.task.seed)


def expert_policy(task: Task) -> Callable[[torch.Tensor, str], str]:
    """The expert as a policy for :func:`run_episode` on ``task`` (it reads the state, not the image)."""
    task = _check_task(task)
    state = {"now": task.start}

    def act(image, instruction):
        a = expert_action(state["now"], task)
        state["now"] = step(state["now"], a)
        return a
    return act


# -- demonstrations -----------------------------------------------------------------------------------
@dataclass
class Demonstrations:
    """(image, instruction, expert action) triples from expert trajectories, as tensors for training.

    ``images`` (N, 3, 50, 50); ``instructions`` N strings; ``actions`` (N,) indices into
    :data:`ACTIONS`; ``episode`` (N,) the index in ``tasks`` each triple comes from; ``states`` the
    N states drawn (to draw them again, e.g. with other seeds: :func:`render_many`). The images
    take 30 kB each: 1,000 tasks give about 4,400 triples, 130 MB.
    """

    images: torch.Tensor
    instructions: list[str]
    actions: torch.Tensor
    episode: torch.Tensor
    tasks: list[Task] = field(repr=False)
    states: list[State] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str]:
        return self.images[i], self.instructions[i], ACTIONS[int(self.actions[i])]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, str]]:
        return (self[i] for i in range(len(self)))


def demonstrations(n: int, split: str = "train", seed: int = 0, families: Sequence[str] = FAMILIES) -> Demonstrations:
    """The expert's trajectories on ``tasks(n, split, seed, families)``: one triple per action, the
    final "stop" included."""
    task_list = tasks(n, split, seed, families)
    states, seeds, texts, acts, eps = [], [], [], [], []
    for i, t in enumerate(task_list):
        s = t.start
        for a in expert_plan(s, t):
            states.append(s), seeds.append(t.seed), texts.append(t.instruction)
            acts.append(ACTIONS.index(a)), eps.append(i)
            s = step(s, a)
    return Demonstrations(render_many(states, seeds), texts, torch.tensor(acts, dtype=torch.long),
                          torch.tensor(eps, dtype=torch.long), task_list, states)
