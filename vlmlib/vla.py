"""A vision-language-action policy learnt by behaviour cloning (chapter 11).

Introduced in chapter 11 ("From language to action"). A vision-language-action model (VLA) reads
what a camera sees and an instruction in words and answers with an action; RT-1 and RT-2 (Brohan
et al., 2022 and 2023) learn it by imitating demonstrations. Here the world is
:mod:`vlmlib.gridworld` (a 5×5 grid of ShapesWorld shapes, an agent, four moves and "stop") and the policy is
small enough to train on a laptop CPU.

**The model** (:class:`VLAPolicy`, sized by :class:`VLAConfig`) is chapter 1's ViT (:mod:`vlmlib.vit`)
with 10-pixel patches, so one token per grid cell, whose transformer blocks read the image tokens
and the instruction's word tokens together (one stream, as in the VLAs that hand word and image
tokens to a single transformer); the class token's final state gives five action logits (four
moves and "stop": an episode succeeds only when the policy stops where the instruction is done). It is
trained from scratch, the ViT included. ``text_blind=True`` gives the same network without the
words: the baseline that shows how much the instruction matters.

**Grounding, an auxiliary loss** (``VLAConfig(grounding=True)`` and ``VLARecipe.grounding``, a
weight). Behaviour cloning's only signal is the expert's next action, and a policy can fit its
training data (99% of its actions) while still walking to the wrong shape on new scenes. With
grounding, a linear layer reads each of the 25 final cell tokens and gives two scores: "the
instruction's target shape is here" and "the push must bring it here". A softmax over the 25 cells
of each is trained with cross-entropy against the truth the world knows in every training state
(the target's current cell, for ``refer`` the shape to reach and not the anchor; the push's goal
cell, for push tasks only), added to the action loss with that weight. This is auxiliary
supervision (an extra prediction from the same features, thrown away when acting): it asks the
image tokens to say *which* shape the words mean. The policy does not use these scores to act.

**Memory of the start** (``VLAConfig(first_frame=True)``). "Push the blue square to the left" is
done when the square sits one cell left of where it *started*; in one image, the moment just before
the push and the moment just after look alike (the agent stands behind the square in both), so a
policy that sees only the image now cannot know whether to push or stop. With ``first_frame`` the
policy also reads the episode's first image, stacked with the image now as six channels;
:mod:`gridworld`'s episodes pass it to any policy with ``reads_first_frame = True``, as
:func:`policy_fn`'s policies say when their model has it.

**The data** (:class:`VLARecipe`, :func:`train_vla`): the expert's demonstrations
(:func:`gridworld.demonstrations`), then DAgger (Ross et al., 2011): run the policy being trained,
label every state it visits with the expert's action (:func:`gridworld.expert_action`, which
answers from any state), add those triples to the data and train on. Behaviour cloning alone only
sees the expert's own states; one mistake takes the policy to states it never saw, and DAgger
teaches it to recover from them.

:func:`build_vla` goes through the artifact cache (keyed by config and recipe), :func:`policy_fn`
turns a model into a policy for :func:`gridworld.run_episode` or :func:`gridworld.run_episodes`, and
:func:`evaluate` measures success rates by running episodes on each split, per instruction family.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks, gridworld
from .cache import Artifact, cached
from .gridworld import ACTIONS, CELL, FAMILIES, IMAGE_SIZE, SPLITS
from .settings import _device
from .vit import ViT, ViTConfig, _boolean

#: The words a policy reads, id 0 being padding (the words of every gridworld instruction).
VOCABULARY: tuple[str, ...] = ("<pad>",) + tuple(gridworld.vocabulary())
_WORD_ID = {w: i for i, w in enumerate(VOCABULARY)}
#: The longest instruction a policy reads, in words (gridworld's longest has 13).
MAX_WORDS = 16


def tokenize(texts: Sequence[str], max_words: int = MAX_WORDS) -> torch.Tensor:
    """Word ids (N, max_words), padded with 0, of instructions (lower case, words split at spaces)."""
    if isinstance(texts, (str, np.str_)):
        raise TypeError("texts must be a list of instructions; wrap one in a list")
    texts = checks.text_list(texts, "texts")
    max_words = checks.integer(max_words, "max_words", minimum=1)
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    for i, text in enumerate(texts):
        words = text.lower().split()
        unknown = [w for w in words if w not in _WORD_ID or w == "<pad>"]
        if unknown:
            raise ValueError(f"texts[{i}] has words the policy does not know: {unknown}; it knows {list(VOCABULARY[1:])}")
        if len(words) > max_words:
            raise ValueError(f"texts[{i}] has {len(words)} words, more than max_words={max_words}")
        ids[i, :len(words)] = torch.tensor([_WORD_ID[w] for w in words], dtype=torch.long)
    return ids

@dataclass
class VLAConfig:
    """The size of a :class:`VLAPolicy`. ``text_blind=True`` is the baseline that never reads the instruction;
    ``first_frame=True`` gives the policy a memory of the start: it reads the episode's first image
    beside the image now."""

    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    max_words: int = 16
    text_blind: bool = False
    pos_init: str = "sincos"
    grounding: bool = False
    first_frame: bool = False

    def __post_init__(self):
        for name, low in (("dim", 8), ("depth", 1), ("heads", 1), ("mlp_ratio", 1), ("max_words", 1)):
            setattr(self, name, checks.integer(getattr(self, name), f"VLAConfig.{name}", minimum=low))
        if self.dim % self.heads:
            raise ValueError(f"VLAConfig.heads ({self.heads}) must divide dim ({self.dim})")
        if self.dim % 4:
            raise ValueError(f"VLAConfig.dim must be a multiple of 4 (the 2-D sine–cosine positions), got {self.dim}")
        self.text_blind = _boolean(self.text_blind, "VLAConfig.text_blind")
        self.grounding = _boolean(self.grounding, "VLAConfig.grounding")
        self.first_frame = _boolean(self.first_frame, "VLAConfig.first_frame")
        self.pos_init = checks.choice(self.pos_init, "VLAConfig.pos_init", POS_INITS)

    def vit_config(self) -> ViTConfig:
        """Chapter 1's ViT at the grid world's size: one 10×10 patch (one token) per cell; with
        ``first_frame``, 6 channels (the image now and the episode's first image, stacked)."""
        return ViTConfig(image_size=IMAGE_SIZE, patch_size=CELL, channels=6 if self.first_frame else 3,
                         dim=self.dim, depth=self.depth,
                         heads=self.heads, mlp_ratio=self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)


#: What the grounding head scores in each cell: the instruction's target shape, and the push's goal.
GROUNDING = ("target", "goal")

#: How the ViT's position embeddings start: chapter 1's small random values, or 2-D sines and cosines
#: of each cell's row and column (learnt on from there).
POS_INITS = ("random", "sincos")


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """2-D sine–cosine position embeddings (grid², dim): half the features encode the row, half the column,
    each as sin and cos at dim/4 frequencies (the fixed embeddings of MAE, He et al. 2022)."""
    grid, dim = checks.integer(grid, "grid", minimum=1), checks.integer(dim, "dim", minimum=4)
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 (sin and cos of rows and columns), got {dim}")
    freqs = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")

    def encode(x):
        angles = x.reshape(-1, 1) * freqs                            # (grid², dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)        # (grid², dim/2)
    return torch.cat([encode(rows), encode(cols)], dim=1)            # (grid², dim), patches row by row


class VLAPolicy(nn.Module):
    """π(action | image, instruction): chapter 1's ViT reading the image and the instruction together.

    The image becomes chapter 1's tokens z₀ = [x_class; x_p¹E; …; x_p²⁵E] + E_pos (one patch per grid
    cell), each word of the instruction a token (a learnt word embedding plus a learnt position
    embedding and a "this is text" embedding), and the ViT's own transformer blocks attend over all
    of them at once: a single-stream fusion, as in the VLAs that feed word and image tokens to one
    transformer. Padding words are masked out of attention. The class token's final state y goes
    through one linear layer to five action logits (:data:`ACTIONS`: four moves and "stop", which
    ends the episode). Everything, the ViT included, is trained from scratch by behaviour cloning.

    One change to chapter 1's ViT: its position embeddings start as 2-D sines and cosines of each
    cell's row and column (``pos_init="sincos"``) rather than small random values. Acting needs
    *where* the agent and the named shape are from the first step; with random starting positions
    the policy stayed at the loss of guessing from the words alone (about 1.54 nats, 0% success) for
    all of a 4,000-step run, in one run of each (chapter 1's init, learning rates 5e-4 to 2e-3).

    With ``config.text_blind`` the words are dropped before the transformer: the same network sees
    the image alone, so its outputs cannot depend on the instruction (the baseline).

    With ``config.grounding`` a second linear layer (``ground``) reads each of the 25 final cell
    tokens and gives two logits per cell (:meth:`cell_logits`): where the instruction's target shape
    is, and where a push must take it. They are trained as an auxiliary loss (see the module
    docstring) and never used to act.

    With ``config.first_frame`` the policy also reads the episode's first image (the scene when the
    instruction was given), stacked with the image now as 6 channels, so that each cell's token
    shows that cell then and now (frame stacking, as DQN stacked its last four frames, Mnih et al.
    2013). One image cannot tell the state just before a push from the state just after it (the
    agent stands behind the shape in both); the first image can, since it shows where the shape
    started.
    """

    def __init__(self, config: VLAConfig | None = None):
        super().__init__()
        config = config if config is not None else VLAConfig()
        if not isinstance(config, VLAConfig):
            raise TypeError(f"config must be a VLAConfig, got {type(config).__name__}")
        self.config = c = config
        self.vit = ViT(c.vit_config())
        if c.pos_init == "sincos":
            with torch.no_grad():           # the class token's position stays as chapter 1 starts it
                self.vit.pos_embed[0, 1:] = sincos_positions(IMAGE_SIZE // CELL, c.dim)
        self.word_embedding = nn.Embedding(len(VOCABULARY), c.dim, padding_idx=0)
        self.word_position = nn.Parameter(torch.randn(c.max_words, c.dim) * 0.02)
        self.text_type = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.head = nn.Linear(c.dim, len(ACTIONS))
        self.ground = nn.Linear(c.dim, len(GROUNDING)) if c.grounding else None

    def forward(self, images: torch.Tensor, words: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, 50, 50) in [0, 1] (uint8 0–255 accepted) and word ids (B, L) from :func:`tokenize`
        -> action logits (B, 5) in the order of :data:`ACTIONS`. ``first``: the episodes' first images
        (B, 3, 50, 50), needed by (and only by) a policy with ``config.first_frame``."""
        return self.head(self._encode(images, words, first)[:, 0])                          # (B, 5)

    def cell_logits(self, images: torch.Tensor, words: torch.Tensor,
                    first: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The action logits (B, 5) and the grounding logits (B, 2, 25): for each of :data:`GROUNDING`
        ("target", "goal"), a score per cell (row by row). Only with ``config.grounding``."""
        if self.ground is None:
            raise ValueError("this policy has no grounding head: build it with VLAConfig(grounding=True)")
        z = self._encode(images, words, first)
        return self.head(z[:, 0]), self.ground(z[:, 1:1 + gridworld.GRID ** 2]).transpose(1, 2)

    def _stack(self, images, first) -> torch.Tensor:
        """The ViT's input: the images, and with ``config.first_frame`` the first images stacked on as 3 more channels."""
        shape = (3, IMAGE_SIZE, IMAGE_SIZE)
        if not self.config.first_frame:
            if first is not None:
                raise ValueError("first is given but this policy reads one image: build it with VLAConfig(first_frame=True)")
            return images
        if first is None:
            raise ValueError("this policy reads the episode's first image too: pass first (B, 3, 50, 50)")
        images = checks.images(images, "images", shape=shape, from_uint8=True)
        first = checks.images(first, "first", shape=shape, from_uint8=True)
        if first.shape != images.shape:
            raise ValueError(f"first must have the shape of images {tuple(images.shape)}, got {tuple(first.shape)}")
        return torch.cat([images, first.to(images.device)], dim=1)                  # (B, 6, 50, 50)

    def _encode(self, images: torch.Tensor, words: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        """The final, normalised token states (B, 26 [+ L], D): the class token, the 25 cells [, the words]."""
        c = self.config
        z = self.vit.embed(self._stack(images, first))                              # (B, 26, D), images checked
        B = len(z)
        if (not isinstance(words, torch.Tensor) or words.ndim != 2 or len(words) != B
                or not 1 <= words.shape[1] <= c.max_words or words.is_floating_point()):
            raise ValueError(f"words must be an integer tensor ({B}, L ≤ {c.max_words}) from vla.tokenize(), "
                             f"got {checks._given(words)}")
        mask = None
        if not c.text_blind:
            L = words.shape[1]
            text = self.word_embedding(words) + self.word_position[:L] + self.text_type      # (B, L, D)
            z = torch.cat([z, text], dim=1)                                                  # (B, 26 + L, D)
            keep = torch.cat([torch.ones(B, z.shape[1] - L, dtype=torch.bool, device=z.device), words != 0], 1)
            mask = keep[:, None, None, :]                                                    # keys a query may read
        for block in self.vit.blocks:
            z = block(z, mask)
        return self.vit.norm(z)


def _check_model(model) -> VLAPolicy:
    if not isinstance(model, VLAPolicy):
        raise TypeError(f"model must be a vla.VLAPolicy (e.g. from build_vla), got {checks._given(model)}")
    return model


# -- acting -----------------------------------------------------------------------------------------------
@torch.no_grad()
def act(model: VLAPolicy, images, instructions: Sequence[str], first=None) -> torch.Tensor:
    """The greedy actions (N,) (indices into :data:`ACTIONS`) of ``model`` for images (N, 3, 50, 50)
    and their instructions; ``first`` (N, 3, 50, 50), the episodes' first images, for a policy with
    ``config.first_frame``."""
    model = _check_model(model)
    instructions = checks.text_list(instructions, "instructions")
    images = checks.images(images, "images", shape=(3, IMAGE_SIZE, IMAGE_SIZE), from_uint8=True)
    if len(images) != len(instructions):
        raise ValueError(f"images and instructions must have the same length, got {len(images)} and {len(instructions)}")
    model.eval()
    device = next(model.parameters()).device
    words = tokenize(instructions, model.config.max_words).to(device)
    return model(images.to(device), words, first).argmax(1).cpu()          # the model checks first


class _Policy:
    """A model as a policy for :mod:`gridworld`'s episodes (see :func:`policy_fn`)."""

    def __init__(self, model: VLAPolicy):
        self.model = model
        self.reads_first_frame = model.config.first_frame      # gridworld then passes each episode's first image

    def __call__(self, images, instructions, first=None):
        if isinstance(instructions, (str, np.str_)):
            for name, x in (("image", images), ("first", first)):
                if (x is not None or name == "image") and (not isinstance(x, torch.Tensor) or x.ndim != 3):
                    raise ValueError(f"with one instruction, {name} must be one image (3, 50, 50), got {checks._given(x)}")
            return ACTIONS[int(act(self.model, images[None], [instructions], None if first is None else first[None])[0])]
        return [ACTIONS[int(a)] for a in act(self.model, images, instructions, first)]


def policy_fn(model: VLAPolicy):
    """``model`` as a policy: ``policy(image (3, 50, 50), instruction) -> action name`` for
    :func:`gridworld.run_episode`, and on a batch ``policy(images (B, 3, 50, 50), instructions) -> B
    names`` for :func:`gridworld.run_episodes`. Greedy (the most likely action), so deterministic.
    For a policy with ``config.first_frame`` the call takes the first image(s) as a third argument
    and ``policy.reads_first_frame`` is True, which tells gridworld to pass them."""
    return _Policy(_check_model(model))


def evaluate(model: VLAPolicy, n: int = 200, splits: Sequence[str] = SPLITS, seed: int = 1000,
             max_steps: int | None = None) -> dict[str, dict[str, float]]:
    """Success rates by running episodes: for each split, ``n`` tasks (``gridworld.tasks(n, split,
    seed)``, the families in turn) run with :func:`policy_fn` until success or gridworld's step limit.
    Returns ``{split: {"all": rate, "goto": rate, "push": rate, "refer": rate, "n": n}}``."""
    model = _check_model(model)
    n = checks.integer(n, "n", minimum=1)
    seed = checks.integer(seed, "seed", minimum=0)
    splits = [checks.choice(s, "splits", SPLITS) for s in checks.text_list(list(splits) if not isinstance(splits, str)
                                                                             else splits, "splits")]
    policy = policy_fn(model)
    out = {}
    for split in splits:
        episodes = gridworld.run_episodes(policy, gridworld.tasks(n, split, seed), max_steps)
        won = np.array([e.success for e in episodes], dtype=float)
        fam = np.array([e.task.family for e in episodes])
        out[split] = {"all": float(won.mean()), "n": n,
                      **{f: float(won[fam == f].mean()) for f in FAMILIES if (fam == f).any()}}
    return out


# -- data -------------------------------------------------------------------------------------------------
@dataclass
class VLARecipe:
    """How a policy is trained (with the config, the cache key).

    ``n_tasks`` training tasks give the expert's demonstrations; the policy trains ``steps`` steps on
    them. Then each of ``dagger_rounds`` rounds runs the policy on ``dagger_tasks`` new training tasks,
    labels every state it visited with the expert's action, adds them to the data and trains
    ``dagger_steps`` more steps (the learning rate restarts its schedule each round).
    ``mirror`` is the chance that a training example is flipped left to right, with "left" and
    "right" swapped in its instruction and its action. ``grounding`` is the weight of the auxiliary
    grounding loss (0: none; more than 0 needs ``VLAConfig(grounding=True)``).
    """

    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    n_tasks: int = 3000
    dagger_rounds: int = 1
    dagger_tasks: int = 1000
    dagger_steps: int = 2000
    mirror: float = 0.0
    grounding: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name, low in (("steps", 1), ("batch_size", 1), ("n_tasks", 1), ("dagger_rounds", 0),
                          ("dagger_tasks", 1), ("dagger_steps", 1), ("seed", 0)):
            setattr(self, name, checks.integer(getattr(self, name), f"VLARecipe.{name}", minimum=low))
        self.lr = checks.number(self.lr, "VLARecipe.lr", low=0.0, low_open=True)
        self.weight_decay = checks.number(self.weight_decay, "VLARecipe.weight_decay", low=0.0)
        self.warmup = checks.number(self.warmup, "VLARecipe.warmup", low=0.0, high=1.0, high_open=True)
        self.mirror = checks.probability(self.mirror, "VLARecipe.mirror")
        self.grounding = checks.number(self.grounding, "VLARecipe.grounding", low=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Data:
    """Training triples: images (N, 3, 50, 50) uint8, word ids (N, MAX_WORDS), actions (N,), for the
    grounding loss ``cells`` (N, 2): the target shape's cell in that state and the push's goal cell
    (``row * 5 + column``; -1 when there is none: the goal of a goto or refer task), and ``first``
    (N, 3, 50, 50) uint8: each episode's first image (its start state)."""

    images: torch.Tensor
    words: torch.Tensor
    actions: torch.Tensor
    cells: torch.Tensor
    first: torch.Tensor

    def __add__(self, other: "_Data") -> "_Data":
        return _Data(*(torch.cat([getattr(self, k), getattr(other, k)])
                       for k in ("images", "words", "actions", "cells", "first")))


def _cell_index(cell: tuple[int, int] | None) -> int:
    inside = cell is not None and all(0 <= v < gridworld.GRID for v in cell)
    return cell[0] * gridworld.GRID + cell[1] if inside else -1


def _grounding_cells(states: Sequence[gridworld.State], task_list: Sequence[gridworld.Task]) -> torch.Tensor:
    """(N, 2): the cell of each task's target shape in each state, and the push's goal cell (or -1)."""
    return torch.tensor([[_cell_index(s.shapes[t.target].cell), _cell_index(t.goal_cell)]
                         for s, t in zip(states, task_list)], dtype=torch.long).reshape(-1, 2)


def _as_data(states: Sequence[gridworld.State], seeds: Sequence[int], task_list: Sequence[gridworld.Task],
             actions: Sequence[int], max_words: int, chunk: int = 4000) -> _Data:
    """Draw the states and their tasks' start states (``chunk`` at a time, so that only uint8 images are
    ever held in full) into triples."""
    def draw(todo: list[gridworld.State], todo_seeds: list[int]) -> torch.Tensor:
        images = torch.zeros(len(todo), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        for i in range(0, len(todo), chunk):
            images[i:i + chunk] = (gridworld.render_many(todo[i:i + chunk], todo_seeds[i:i + chunk]) * 255).round().to(torch.uint8)
        return images

    unique = list({id(t): t for t in task_list}.values())          # each task's start is drawn once
    index = {id(t): i for i, t in enumerate(unique)}
    first = draw([t.start for t in unique], [t.seed for t in unique])[[index[id(t)] for t in task_list]]
    return _Data(draw(list(states), list(seeds)), tokenize([t.instruction for t in task_list], max_words),
                 torch.as_tensor(actions, dtype=torch.long), _grounding_cells(states, task_list), first)


def expert_data(n_tasks: int, seed: int = 0, max_words: int = MAX_WORDS) -> _Data:
    """The expert's demonstrations on ``gridworld.tasks(n_tasks, "train", seed)``, one triple per step
    (the triples of :func:`gridworld.demonstrations`, drawn in chunks), with the grounding cells."""
    states, task_list, acts = [], [], []
    for t in gridworld.tasks(n_tasks, "train", seed):
        s = t.start
        for a in gridworld.expert_plan(s, t):
            states.append(s), task_list.append(t), acts.append(ACTIONS.index(a))
            s = gridworld.step(s, a)
    return _as_data(states, [t.seed for t in task_list], task_list, acts, max_words)


def dagger_data(model: VLAPolicy, n_tasks: int, seed: int) -> tuple[_Data, float]:
    """DAgger's step: run ``model`` on ``gridworld.tasks(n_tasks, "train", seed)`` and label each state it
    visited (before its last) with the expert's action; states the task can no longer be done from
    (a shape pushed into a corner) have no label and are left out. Returns the triples and the
    policy's success rate on these tasks."""
    model = _check_model(model)
    episodes = gridworld.run_episodes(policy_fn(model), gridworld.tasks(n_tasks, "train", seed))
    states, task_list, labels = [], [], []
    for e in episodes:
        for s in e.states[:-1] if e.steps else []:
            a = gridworld.expert_action(s, e.task)
            if a is not None:
                states.append(s), task_list.append(e.task), labels.append(ACTIONS.index(a))
    data = _as_data(states, [t.seed for t in task_list], task_list, labels, model.config.max_words)
    return data, float(np.mean([e.success for e in episodes]))


_SWAP_WORDS = {"left": "right", "right": "left"}
_MIRROR_ACTION = torch.tensor([ACTIONS.index({"left": "right", "right": "left"}.get(a, a)) for a in ACTIONS])
_MIRROR_WORD = torch.tensor([_WORD_ID[_SWAP_WORDS.get(w, w)] for w in VOCABULARY])


def mirror(images: torch.Tensor, words: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The left–right mirror image of training triples: the image flipped (column c becomes 4 − c),
    "left" and "right" swapped in the words and in the actions. Up, down, above and below stay."""
    return images.flip(-1), _MIRROR_WORD[words], _MIRROR_ACTION[actions]


def _mirror_cells(cells: torch.Tensor) -> torch.Tensor:
    """Grounding cells (``row * 5 + column``, -1 for none) in the mirrored image: column c becomes 4 − c."""
    g = gridworld.GRID
    return torch.where(cells >= 0, cells // g * g + (g - 1 - cells % g), cells)


# -- training ---------------------------------------------------------------------------------------------
def _fit(model: VLAPolicy, data: _Data, steps: int, recipe: VLARecipe, g: torch.Generator, device, desc: str,
         history: dict[str, list[float]]) -> None:
    from .training import train

    def loss_fn(step: int):
        i = torch.randint(0, len(data.actions), (recipe.batch_size,), generator=g)
        images, words, actions, cells = data.images[i], data.words[i], data.actions[i], data.cells[i]
        first = data.first[i] if model.config.first_frame else None
        if recipe.mirror > 0:
            flip = torch.rand(len(i), generator=g) < recipe.mirror
            m = mirror(images[flip], words[flip], actions[flip])
            images, words, actions, cells = images.clone(), words.clone(), actions.clone(), cells.clone()
            images[flip], words[flip], actions[flip] = m
            cells[flip] = _mirror_cells(cells[flip])
            if first is not None:
                first = first.clone()
                first[flip] = first[flip].flip(-1)
        images, words, actions = images.to(device).float() / 255, words.to(device), actions.to(device)
        if first is not None:
            first = first.to(device).float() / 255
        if recipe.grounding == 0:
            logits = model(images, words, first)
            return F.cross_entropy(logits, actions), {"accuracy": (logits.argmax(1) == actions).float().mean()}
        logits, where = model.cell_logits(images, words, first)             # (B, 5), (B, 2, 25)
        ground = F.cross_entropy(where.reshape(-1, where.shape[-1]), cells.to(device).reshape(-1), ignore_index=-1)
        loss = F.cross_entropy(logits, actions) + recipe.grounding * ground
        return loss, {"accuracy": (logits.argmax(1) == actions).float().mean(), "grounding": ground.detach()}

    h = train(model, loss_fn, steps, lr=recipe.lr, weight_decay=recipe.weight_decay, warmup=recipe.warmup, desc=desc)
    for k, v in h.items():
        history.setdefault(k, []).extend(v)


def train_vla(config: VLAConfig | None = None, recipe: VLARecipe | None = None, progress: bool = True,
              device: str | torch.device = "cpu") -> tuple[VLAPolicy, dict[str, list[float]], dict]:
    """Train a :class:`VLAPolicy` by behaviour cloning and DAgger (see :class:`VLARecipe`).

    Returns the model (eval mode), its history (loss and accuracy per step) and ``info``: the number
    of expert and DAgger triples, the policy's success on each round's DAgger tasks (before it trained
    on them) and the seconds taken.
    """
    config = config if config is not None else VLAConfig()
    recipe = recipe if recipe is not None else VLARecipe()
    if not isinstance(config, VLAConfig):
        raise TypeError(f"config must be a VLAConfig, got {type(config).__name__}")
    if not isinstance(recipe, VLARecipe):
        raise TypeError(f"recipe must be a VLARecipe, got {type(recipe).__name__}")
    if recipe.grounding > 0 and not config.grounding:
        raise ValueError(f"VLARecipe.grounding={recipe.grounding} needs a grounding head: VLAConfig(grounding=True)")
    device = _device(device)
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model = VLAPolicy(config).to(device)
    g = torch.Generator().manual_seed(recipe.seed)       # on the CPU: the same batches on any device
    data = expert_data(recipe.n_tasks, recipe.seed, config.max_words)
    info = {"expert_triples": len(data.actions), "dagger_triples": [], "dagger_success": []}
    history: dict[str, list[float]] = {}
    with contextlib.ExitStack() as quiet:
        if not progress:
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        _fit(model, data, recipe.steps, recipe, g, device, "behaviour cloning", history)
        for r in range(recipe.dagger_rounds):
            # DAgger's tasks: training tasks the expert data never used (another seed of the train split)
            new, rate = dagger_data(model, recipe.dagger_tasks, recipe.seed + 10_000 * (r + 1))
            info["dagger_triples"].append(len(new.actions))
            info["dagger_success"].append(rate)
            data = data + new
            _fit(model, data, recipe.dagger_steps, recipe, g, device, f"DAgger round {r + 1}", history)
    info["train_seconds"] = time.perf_counter() - start
    return model.eval(), history, info


# -- the cache and the shipped policy ---------------------------------------------------------------------
#: Bumped when the world, the expert or the training data change: cached policies are retrained.
_DATA_VERSION = 1
#: How the chapter's numbers are measured: episodes per split and the seed of their tasks.
EVAL_N, EVAL_SEED = 200, 1000


def _key(config: VLAConfig, recipe: VLARecipe) -> dict:
    return {"model": config.to_dict(), "recipe": recipe.to_dict(), "data": _DATA_VERSION}


def _metrics(model: VLAPolicy, info: dict, n: int) -> dict:
    metrics = {"train_seconds": info["train_seconds"], "expert_triples": info["expert_triples"],
               "dagger_triples": info["dagger_triples"], "dagger_success": info["dagger_success"],
               "parameters": sum(p.numel() for p in model.parameters())}
    for split, rates in evaluate(model, n, seed=EVAL_SEED).items():
        metrics.update({f"{split}_{k}": v for k, v in rates.items() if k != "n"})
    metrics["eval_n"] = n
    return metrics


def build_vla(config: VLAConfig | None = None, recipe: VLARecipe | None = None, verbose: bool = True,
              eval_n: int = EVAL_N, device: str | torch.device = "cpu") -> tuple[VLAPolicy, Artifact]:
    """The trained policy for ``config`` and ``recipe``: from the artifact cache, or trained now.

    A fresh build stores in ``artifact.metrics`` its training time, its data (expert and DAgger
    triples, the policy's success on each DAgger round's tasks) and :func:`evaluate`'s success rates
    on ``eval_n`` episodes per split (``"test_all"``, ``"holdout_pairs_push"``, ...).
    """
    config = config if config is not None else VLAConfig()
    recipe = recipe if recipe is not None else VLARecipe()
    if not isinstance(config, VLAConfig):
        raise TypeError(f"config must be a VLAConfig, got {type(config).__name__}")
    if not isinstance(recipe, VLARecipe):
        raise TypeError(f"recipe must be a VLARecipe, got {type(recipe).__name__}")
    eval_n = checks.integer(eval_n, "eval_n", minimum=1)
    key = {**_key(config, recipe), "eval_n": eval_n}

    def build() -> Artifact:
        model, history, info = train_vla(config, recipe, progress=verbose, device=device)
        return Artifact("vla", key, {k: v.cpu() for k, v in model.state_dict().items()},
                        _metrics(model, info, eval_n), {k: history[k] for k in ("loss", "accuracy", "grounding") if k in history})

    art = cached("vla", key, build, verbose=verbose)
    model = VLAPolicy(config)
    model.load_state_dict(art.state_dict)
    return model.eval().to(_device(device)), art


#: The shipped policies (``python -m tools.train_vla``): the chapter's policy (it reads the episode's first
#: image too), the same policy with one image only (which cannot tell when a push is done), and the
#: text-blind baseline.
SHIPPED_NAME = "vla-grid"
SHIPPED_MODELS = ("policy", "one_frame", "text_blind")


def weights_folder() -> Path:
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights")) / SHIPPED_NAME


def save_shipped(models: dict[str, tuple[VLAPolicy, VLARecipe, dict, dict]], folder: Path | str | None = None) -> Path:
    """Store ``{"policy": (model, recipe, metrics, history), "one_frame": ..., "text_blind": ...}`` in ``folder`` (default
    :func:`weights_folder`): one safetensors file per model and ``record.json`` with each model's
    config, recipe, metrics, loss history and the SHA-256 of its weights."""
    from safetensors.torch import save_file

    if set(models) != set(SHIPPED_MODELS):
        raise ValueError(f"models must have the keys {list(SHIPPED_MODELS)}, got {list(models)}")
    folder = Path(folder) if folder is not None else weights_folder()
    folder.mkdir(parents=True, exist_ok=True)
    record = {"data": _DATA_VERSION, "eval_n": EVAL_N, "eval_seed": EVAL_SEED}
    for name, (model, recipe, metrics, history) in models.items():
        path = folder / f"{name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in _check_model(model).state_dict().items()}, str(path))
        record[name] = {"config": model.config.to_dict(), "recipe": recipe.to_dict(), "metrics": metrics,
                        "history": history, "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (folder / "record.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return folder


def load_shipped(name: str = "policy", folder: Path | str | None = None) -> tuple[VLAPolicy, dict]:
    """A shipped policy (``"policy"``, ``"one_frame"`` or ``"text_blind"``), frozen and in eval mode, and its record
    (config, recipe, metrics measured when it was trained, loss history).

    Raises ``FileNotFoundError`` when the folder is missing and ``ValueError`` when the weights fail
    their checksum.
    """
    from safetensors.torch import load_file

    name = checks.choice(name, "name", SHIPPED_MODELS)
    folder = Path(folder) if folder is not None else weights_folder()
    record_path, weights = folder / "record.json", folder / f"{name}.safetensors"
    if not record_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no shipped policy in {folder}: run `python -m tools.train_vla`")
    record = json.loads(record_path.read_text())
    if hashlib.sha256(weights.read_bytes()).hexdigest() != record[name]["weights_sha256"]:
        raise ValueError(f"{weights} fails its checksum: run `python -m tools.train_vla` again")
    model = VLAPolicy(VLAConfig(**record[name]["config"]))
    model.load_state_dict(load_file(str(weights)))
    model.requires_grad_(False)
    return model.eval(), record[name]


#: The shipped policies' configs and recipes. The policy and its one-image twin: behaviour cloning with the
#: grounding loss and mirrored examples, then two rounds of DAgger, the same recipe; the policy also
#: reads the episode's first image. The text-blind baseline (``VLAConfig(text_blind=True)``): the first
#: 3,000 of the same expert tasks, behaviour cloning only, a shorter run.
SHIPPED_CONFIG = VLAConfig(grounding=True, first_frame=True)
ONE_FRAME_CONFIG = VLAConfig(grounding=True)
TEXT_BLIND_CONFIG = VLAConfig(text_blind=True)
SHIPPED_RECIPE = VLARecipe(steps=6500, batch_size=64, lr=1e-3, n_tasks=16000, dagger_rounds=2, dagger_tasks=1500,
                           dagger_steps=2000, mirror=0.5, grounding=1.0)
TEXT_BLIND_RECIPE = VLARecipe(steps=1500, batch_size=64, lr=1e-3, n_tasks=3000, dagger_rounds=0)
#: Each shipped model's config and recipe, by name.
SHIPPED_SETUPS = {"policy": (SHIPPED_CONFIG, SHIPPED_RECIPE), "one_frame": (ONE_FRAME_CONFIG, SHIPPED_RECIPE),
                  "text_blind": (TEXT_BLIND_CONFIG, TEXT_BLIND_RECIPE)}
