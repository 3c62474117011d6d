"""Training and measuring chapter 8's LLaVA: the two stages, answers per question type, the blind LM.

Stage 1 (*feature alignment*) shows the model an image and its caption in LLaVA-1.5's plain format
(:data:`vlmlib.llava.PLAIN_TEMPLATE`) and trains only the projector; stage 2 (*end to end*) shows it
one question about the image in the chat template and trains the projector and the language model
(:func:`vlmlib.llava.freeze_for_stage` decides which parameters move). The loss is the language
model's next-token loss on the answer only. :func:`accuracy_by_type` asks held-out questions with
greedy decoding and counts exact answers per question type; ``blind=True`` everywhere means no image
at all (the prompt has no ``<image>`` tokens): the baseline that can only guess from the text.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import checks
from .instructions import QUESTION_TYPES, Instruction, instructions
from .llava import IGNORE_INDEX, LlavaModel, apply_template, conversation, freeze_for_stage, llava_tokenizer
from .shapesworld import ShapesWorld, caption
from .tokenizer import IMAGE


@dataclass
class StageRecipe:
    """How one training stage runs."""

    stage: int = 2
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: float = 0.03                 # LLaVA's warm-up ratio
    weight_decay: float = 0.0            # LLaVA trains without weight decay
    seed: int = 0

    def __post_init__(self):
        self.stage = checks.choice(self.stage, "StageRecipe.stage", (1, 2))
        for name in ("steps", "batch_size"):
            setattr(self, name, checks.integer(getattr(self, name), f"StageRecipe.{name}", minimum=1))
        self.lr = checks.number(self.lr, "StageRecipe.lr", low=0.0, low_open=True)
        self.warmup = checks.number(self.warmup, "StageRecipe.warmup", low=0.0, high=1.0, high_open=True)
        self.weight_decay = checks.number(self.weight_decay, "StageRecipe.weight_decay", low=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def _scenes(n: int, split: str, seed: int, world_seed: int, max_shapes: int):
    n = checks.integer(n, "n", minimum=1)
    world = ShapesWorld(max_shapes=checks.integer(max_shapes, "max_shapes", minimum=1), seed=world_seed)
    data = world.sample(n, split=checks.choice(split, "split", ("train", "test", "holdout", "all")), seed=seed,
                        captions=None)
    return data.tensor(), data.shapes


def caption_data(n: int, split: str = "train", seed: int = 0, world_seed: int = 0, max_shapes: int = 3):
    """Stage 1's data: ``(images (n, 3, 32, 32), conversations, shapes)``, each conversation an image
    and its full caption (LLaVA's stage 1 used a caption for each of 558k images)."""
    images, shapes = _scenes(n, split, seed, world_seed, max_shapes)
    return images, [conversation("", caption(s, "full")) for s in shapes], shapes


def instruction_data(n: int, split: str = "train", seed: int = 0, world_seed: int = 0, max_shapes: int = 3,
                     types: Sequence[str] | None = None):
    """Stage 2's data: ``(images, conversations, items, shapes)``, one question per image.

    Each image's question type is drawn uniformly from the types its scene can answer (all of
    :data:`~vlmlib.instructions.QUESTION_TYPES`, or only ``types``), so rare types are not drowned
    out; ``items`` are the :class:`~vlmlib.instructions.Instruction` objects asked.
    """
    allowed = QUESTION_TYPES if types is None else tuple(checks.choice(t, "types", QUESTION_TYPES) for t in types)
    images, shapes = _scenes(n, split, seed, world_seed, max_shapes)
    rng = np.random.default_rng([seed, 8])
    items, keep = [], []
    for i, sc in enumerate(shapes):
        options = [it for it in instructions(sc, rng) if it.type in allowed]
        if options:
            items.append(options[int(rng.integers(len(options)))])
            keep.append(i)
    if not keep:
        raise ValueError(f"no scene could answer a question of the types {allowed}")
    convs = [conversation(it.question, it.answer) for it in items]
    return images[keep], convs, items, [shapes[i] for i in keep]


def dialogue_data(n: int, turns: int = 4, split: str = "train", seed: int = 0, world_seed: int = 0,
                  max_shapes: int = 3):
    """Stage 2's data as multi-turn conversations (LLaVA's format): ``(images, conversations, items,
    shapes)``, each image with up to ``turns`` questions of different types (drawn without
    replacement from those its scene can answer), ``items[i]`` the list asked about image i. Every
    answer is learnt from, so one pass over an image teaches several of its facts."""
    from .llava import dialogue

    turns = checks.integer(turns, "turns", minimum=1)
    images, shapes = _scenes(n, split, seed, world_seed, max_shapes)
    rng = np.random.default_rng([seed, 10])
    items = []
    for sc in shapes:
        options = instructions(sc, rng)
        order = rng.permutation(len(options))[:turns]
        items.append([options[int(i)] for i in order])
    convs = [dialogue([(it.question, it.answer) for it in chosen]) for chosen in items]
    return images, convs, items, shapes


def _blind(conversations):
    """The same conversations without their images (the blind model's prompts)."""
    out = []
    for conv in conversations:
        out.append([{**m, "content": [c for c in m["content"] if c.get("type") != "image"]}
                    if isinstance(m["content"], list) else m for m in conv])
    return out


def train_stage(model: LlavaModel, recipe: StageRecipe, images: torch.Tensor, conversations: list,
                blind: bool = False, desc: str | None = None, after_step: Callable[[int], None] | None = None):
    """Train one stage; return ``(history, seconds)``. Stage 1 uses the plain format, stage 2 the chat
    template. ``blind=True`` trains on the conversations without their images. ``after_step(step)``
    runs after each optimiser step (to measure the model along the way)."""
    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    if not isinstance(recipe, StageRecipe):
        raise TypeError(f"recipe must be a StageRecipe, got {type(recipe).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) != len(conversations):
        raise ValueError(f"images must be a tensor (N, 3, H, W) with one image per conversation "
                         f"({len(conversations)}), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if after_step is not None and not callable(after_step):
        raise TypeError(f"after_step must be a function of the step, got {type(after_step).__name__}")
    from .training import train

    freeze_for_stage(model, recipe.stage)
    convs = _blind(conversations) if blind else conversations
    batch = apply_template(convs, model.n_patches, plain=recipe.stage == 1 and not blind)
    device = next(model.projector.parameters()).device
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    images = images.to(device)
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    start = time.perf_counter()

    def loss_fn(step: int):
        idx = torch.randint(len(ids), (recipe.batch_size,), generator=g).to(device)
        width = int(mask[idx].sum(1).max())             # right padding: drop columns of padding only
        return model(None if blind else images[idx], ids[idx, :width], mask[idx, :width],
                     labels=labels[idx, :width]).loss

    params = [p for p in model.parameters() if p.requires_grad]
    history = train(model, loss_fn, recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
                    warmup=recipe.warmup, params=params, after_step=after_step,
                    desc=desc or f"stage {recipe.stage}" + (" (blind)" if blind else ""))
    return history, time.perf_counter() - start


@torch.no_grad()
def answers(model: LlavaModel, images: torch.Tensor | None, questions: Sequence[str], max_new_tokens: int = 24,
            batch_size: int = 128, do_sample: bool = False, seed: int | None = None) -> list[str]:
    """The model's answer to each question about its image (greedy unless ``do_sample``), as text.

    ``images=None`` asks the blind model (no ``<image>`` in the prompt).
    """
    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    questions = checks.text_list(questions, "questions")
    if images is not None and (not isinstance(images, torch.Tensor) or len(images) != len(questions)):
        raise ValueError(f"images must be a tensor with one image per question ({len(questions)}), or None")
    convs = [conversation(q, images=0 if images is None else 1) for q in questions]
    return _generate(model, images, convs, batch_size, max_new_tokens=max_new_tokens, do_sample=do_sample,
                     seed=seed)


@torch.no_grad()
def captions(model: LlavaModel, images: torch.Tensor, max_new_tokens: int = 32, batch_size: int = 128) -> list[str]:
    """Greedy captions in stage 1's plain format (the image and nothing else, then the caption):
    what feature alignment alone teaches, before any instruction."""
    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not len(images):
        raise ValueError(f"images must be a non-empty tensor (N, 3, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    return _generate(model, images, [conversation("")] * len(images), batch_size, plain=True,
                     max_new_tokens=max_new_tokens)


@torch.no_grad()
def answer_probabilities(model: LlavaModel, images: torch.Tensor | None, questions: Sequence[str],
                         candidates: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """How likely the model finds each given answer, (N,): π(answer, then the end | image, question),
    the product of its tokens' probabilities, read in one pass with the answer written in (as the
    loss reads it). It scores any answer, the right one included, whatever the model would say."""
    from .llava import sequence_logps

    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    questions, candidates = checks.text_list(questions, "questions"), checks.text_list(candidates, "candidates")
    if len(questions) != len(candidates):
        raise ValueError(f"give one candidate answer per question: {len(questions)} questions, "
                         f"{len(candidates)} candidates")
    if images is not None and (not isinstance(images, torch.Tensor) or images.ndim != 4
                               or len(images) != len(questions)):
        raise ValueError(f"images must be a tensor (N, 3, H, W) with one image per question ({len(questions)}), "
                         f"or None, got {checks._given(images)}")
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    model.eval()
    device = next(model.projector.parameters()).device
    convs = [conversation(q, a, images=0 if images is None else 1) for q, a in zip(questions, candidates)]
    out = []
    for i in range(0, len(convs), batch_size):
        b = apply_template(convs[i:i + batch_size], model.n_patches)
        ids, mask, labels = (b[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(None if images is None else images[i:i + batch_size].to(device), ids, mask).logits
        out.append(sequence_logps(logits, labels).exp().cpu())
    return torch.cat(out)


def _generate(model: LlavaModel, images: torch.Tensor | None, convs: list, batch_size: int, plain: bool = False,
              seed: int | None = None, **generation) -> list[str]:
    """Decoded new text for each conversation's prompt, ``batch_size`` at a time (left-padded,
    ending with the generation prompt); batch i is seeded ``seed + i`` when ``seed`` is given."""
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    tok = llava_tokenizer()
    model.eval()
    device = next(model.projector.parameters()).device
    out: list[str] = []
    for i in range(0, len(convs), batch_size):
        batch = apply_template(convs[i:i + batch_size], model.n_patches, add_generation_prompt=True, plain=plain,
                               padding_side="left")
        new = model.generate(None if images is None else images[i:i + batch_size].to(device),
                             batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             seed=None if seed is None else seed + i, **generation)
        out += [tok.decode(row, skip_special_tokens=True).strip() for row in new]
    return out


def caption_scores(said: Sequence[str], scenes: Sequence) -> dict[str, float]:
    """How captions match their scenes: ``exact`` (the full caption word for word), and CHAIR's
    hallucination rates and recall (:func:`vlmlib.instructions.hallucination`)."""
    from .instructions import hallucination

    said = checks.text_list(said, "said")
    if isinstance(scenes, (str, bytes)) or not isinstance(scenes, (list, tuple)) or len(scenes) != len(said):
        raise ValueError(f"scenes must be a list with one scene (a list of Shapes) per caption ({len(said)}), got "
                         f"{len(scenes) if isinstance(scenes, (list, tuple)) else type(scenes).__name__}")
    exact = [s.split() == caption(sc, "full").split() for s, sc in zip(said, scenes)]
    return {"exact": float(np.mean(exact)), **hallucination(said, list(scenes))}


def accuracy_by_type(model: LlavaModel, images: torch.Tensor | None, items: Sequence[Instruction],
                     max_new_tokens: int = 24) -> dict[str, float]:
    """Exact-answer accuracy per question type (types absent from ``items`` are left out) and ``"all"``.

    An answer is right when its words equal the reference's (``"the blue square"``, ``"yes"``, a full
    description with every shape in order). ``images=None`` measures the blind model.
    """
    items = list(items)
    if not items or not all(isinstance(i, Instruction) for i in items):
        raise TypeError("items must be a non-empty list of Instructions (instruction_data's third output)")
    said = answers(model, images, [i.question for i in items], max_new_tokens)
    right = [s.split() == i.answer.replace("?", " ?").split() for s, i in zip(said, items)]
    out = {t: float(np.mean([r for r, i in zip(right, items) if i.type == t]))
           for t in QUESTION_TYPES if any(i.type == t for i in items)}
    out["all"] = float(np.mean(right))
    return out


def preference_data(n: int, split: str = "train", seed: int = 0, world_seed: int = 0, max_shapes: int = 3):
    """DPO's pairs: ``(images, prompts, chosen, rejected, shapes)`` for the describe question, the
    faithful description chosen and one with a hallucinated shape rejected
    (:func:`vlmlib.instructions.corrupt_description`)."""
    from .instructions import DESCRIBE, corrupt_description

    images, shapes = _scenes(n, split, seed, world_seed, max_shapes)
    rng = np.random.default_rng([seed, 9])
    chosen = [caption(s, "full") for s in shapes]
    rejected = [corrupt_description(s, rng) for s in shapes]
    return images, [DESCRIBE] * len(shapes), chosen, rejected, shapes


def train_dpo(model: LlavaModel, reference: LlavaModel, images: torch.Tensor, prompts: Sequence[str],
              chosen: Sequence[str], rejected: Sequence[str], steps: int = 200, batch_size: int = 16,
              lr: float = 1e-4, beta: float = 0.1, seed: int = 0, desc: str = "DPO", sft_weight: float = 0.0,
              mix_data: tuple | None = None, mix_weight: float = 0.0):
    """Tune ``model`` with DPO against the frozen ``reference`` (a copy of the model before tuning);
    the projector and the LM train, as in stage 2. Returns ``(history, seconds)``; the history holds
    the loss and the reward margin β·[(log π/π_ref)(chosen) − (log π/π_ref)(rejected)].

    ``sft_weight`` > 0 adds that much of the ordinary next-token loss on the chosen answers (mean
    over their tokens): DPO alone only asks that the chosen answer gain on the rejected one, which it
    can also do by lowering both; the added term keeps the faithful answers likely.

    ``mix_data`` = ``(images, conversations)`` (stage 2's instruction data, :func:`instruction_data`)
    and ``mix_weight`` > 0 add that much of stage 2's own loss on a batch of it to every step, as
    InstructGPT's PPO-ptx mixed pretraining gradients into RLHF (Ouyang et al., 2022): the
    preference step moves the description, and the mixed loss holds the answers to every other
    question where stage 2 left them."""
    from .llava import dpo_loss, sequence_logps
    from .training import train

    for name, m in (("model", model), ("reference", reference)):
        if not isinstance(m, LlavaModel):
            raise TypeError(f"{name} must be a LlavaModel, got {type(m).__name__}")
    prompts, chosen, rejected = (checks.text_list(x, name) for x, name in
                                 ((prompts, "prompts"), (chosen, "chosen"), (rejected, "rejected")))
    if not (len(prompts) == len(chosen) == len(rejected) == len(images)):
        raise ValueError("images, prompts, chosen and rejected must have one entry per pair")
    beta = checks.number(beta, "beta", low=0.0, low_open=True)
    sft_weight = checks.number(sft_weight, "sft_weight", low=0.0)
    mix_weight = checks.number(mix_weight, "mix_weight", low=0.0)
    if mix_weight and mix_data is None:
        raise ValueError("mix_weight > 0 needs mix_data=(images, conversations), e.g. instruction_data(...)[:2]")
    if mix_data is not None:
        if not isinstance(mix_data, (tuple, list)) or len(mix_data) != 2:
            raise TypeError("mix_data must be a pair (images, conversations)")
        mix_images, mix_convs = mix_data
        if not isinstance(mix_images, torch.Tensor) or mix_images.ndim != 4 or len(mix_images) != len(mix_convs):
            raise ValueError("mix_data's images must be a tensor (N, 3, H, W) with one image per conversation")
    freeze_for_stage(model, 2)
    reference.eval().requires_grad_(False)
    device = next(model.projector.parameters()).device
    both = apply_template([conversation(p, a) for p, a in zip(prompts, chosen)]
                          + [conversation(p, a) for p, a in zip(prompts, rejected)], model.n_patches)
    ids, mask, labels = (both[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    n = len(prompts)
    images = images.to(device)
    with torch.no_grad():                       # the reference's log-probabilities never change
        ref = torch.zeros(2, n, device=device)
        for i in range(0, n, 64):
            rows = torch.cat([torch.arange(i, min(i + 64, n)), torch.arange(n + i, n + min(i + 64, n))]).to(device)
            out = reference(torch.cat([images[i:i + 64]] * 2), ids[rows], mask[rows]).logits
            ref[:, i:i + 64] = sequence_logps(out, labels[rows]).view(2, -1)      # chosen, rejected
    if mix_weight:
        mixed = apply_template(mix_convs, model.n_patches)
        m_ids, m_mask, m_labels = (mixed[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        mix_images = mix_images.to(device)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()

    def loss_fn(step: int):
        idx = torch.randint(n, (batch_size,), generator=g).to(device)
        rows = torch.cat([idx, idx + n])
        width = int(mask[rows].sum(1).max())
        logits = model(torch.cat([images[idx]] * 2), ids[rows, :width], mask[rows, :width]).logits
        pol = sequence_logps(logits, labels[rows, :width]).view(2, -1)
        loss = dpo_loss(pol[0], pol[1], ref[0, idx], ref[1, idx], beta)
        margin = beta * ((pol[0] - ref[0, idx]) - (pol[1] - ref[1, idx])).mean()
        if sft_weight:
            chosen_tokens = (labels[idx, 1:width] != IGNORE_INDEX).sum()
            loss = loss - sft_weight * pol[0].sum() / chosen_tokens.clamp(min=1)
        extra = {"margin": margin.item()}
        if mix_weight:
            j = torch.randint(len(m_ids), (batch_size,), generator=g).to(device)
            w = int(m_mask[j].sum(1).max())
            mix_loss = model(mix_images[j], m_ids[j, :w], m_mask[j, :w], labels=m_labels[j, :w]).loss
            loss = loss + mix_weight * mix_loss
            extra["mix_loss"] = mix_loss.item()
        return loss, extra

    params = [p for p in model.parameters() if p.requires_grad]
    history = train(model, loss_fn, checks.integer(steps, "steps", minimum=1), lr=lr, weight_decay=0.0,
                    warmup=0.05, params=params, desc=desc)
    return history, time.perf_counter() - start


# -- the whole recipe ---------------------------------------------------------------------------------
@dataclass
class LlavaRecipe:
    """Chapter 8's model and how it is trained: both stages, their data, and the preference tuning."""

    projector: str = "mlp"
    n_captions: int = 20_000             # stage 1's image–caption pairs
    n_instructions: int = 30_000         # stage 2's conversations
    turns: int = 1                       # questions per conversation (1: one per image)
    stage1_steps: int = 500
    stage1_lr: float = 1e-3
    stage2_steps: int = 3000
    stage2_lr: float = 5e-4
    batch_size: int = 32
    n_pairs: int = 4000                  # DPO's preference pairs
    dpo_steps: int = 300
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 0.0          # the chosen answers' next-token loss added to DPO's (train_dpo)
    dpo_mix_weight: float = 1.0          # stage 2's own loss mixed into every DPO step (train_dpo's mix)
    seed: int = 0

    def __post_init__(self):
        from .llava import PROJECTORS

        self.projector = checks.choice(self.projector, "LlavaRecipe.projector", PROJECTORS)
        for name in ("n_captions", "n_instructions", "batch_size", "n_pairs", "turns"):
            setattr(self, name, checks.integer(getattr(self, name), f"LlavaRecipe.{name}", minimum=1))
        for name in ("stage1_steps", "stage2_steps", "dpo_steps"):
            setattr(self, name, checks.integer(getattr(self, name), f"LlavaRecipe.{name}", minimum=0))
        for name in ("stage1_lr", "stage2_lr", "dpo_lr", "dpo_beta"):
            setattr(self, name, checks.number(getattr(self, name), f"LlavaRecipe.{name}", low=0.0, low_open=True))
        self.dpo_sft_weight = checks.number(self.dpo_sft_weight, "LlavaRecipe.dpo_sft_weight", low=0.0)
        self.dpo_mix_weight = checks.number(self.dpo_mix_weight, "LlavaRecipe.dpo_mix_weight", low=0.0)

    def stage(self, stage: int) -> StageRecipe:
        """The :class:`StageRecipe` of stage 1 or 2."""
        steps, lr = (self.stage1_steps, self.stage1_lr) if stage == 1 else (self.stage2_steps, self.stage2_lr)
        return StageRecipe(stage=stage, steps=max(steps, 1), batch_size=self.batch_size, lr=lr, seed=self.seed + stage)

    def to_dict(self) -> dict:
        return asdict(self)


def build_llava(clip_model, lm_model, projector: str = "mlp", seed: int = 0) -> LlavaModel:
    """A fresh model: ``clip_model``'s vision tower and the text-only LM (both copied), a new projector.
    Chapter 8's tower is chapter 2's CLIP taught crowded scenes (:func:`vlmlib.scene_clip.load_scene_clip`)."""
    torch.manual_seed(checks.integer(seed, "seed"))
    tok = llava_tokenizer()
    return LlavaModel(clip_model, lm_model, tok.convert_tokens_to_ids(IMAGE),
                      projector=projector)


def train_llava(model: LlavaModel, recipe: LlavaRecipe, stages: Sequence[int] = (1, 2), blind: bool = False,
                data: dict | None = None, after_step: Callable[[int, int], None] | None = None
                ) -> tuple[dict, float]:
    """Run ``stages`` of ``recipe`` on ``model`` (a stage with 0 steps is skipped); return the loss
    histories per stage and the seconds. ``data`` may hold ``"captions"`` (:func:`caption_data`) and
    ``"instructions"`` (:func:`instruction_data`) to reuse; ``blind=True`` trains without images;
    ``after_step(stage, step)`` runs after each optimiser step."""
    if after_step is not None and not callable(after_step):
        raise TypeError(f"after_step must be a function of (stage, step), got {type(after_step).__name__}")
    if not isinstance(recipe, LlavaRecipe):
        raise TypeError(f"recipe must be a LlavaRecipe, got {type(recipe).__name__}")
    if data is not None and not isinstance(data, dict):
        raise TypeError(f"data must be a dict with 'captions' and/or 'instructions', got {type(data).__name__}")
    if isinstance(stages, (int, str)) or not isinstance(stages, (list, tuple)):
        raise TypeError(f"stages must be a list of stages such as (1, 2), got {stages!r}")
    data = dict(data or {})
    histories, seconds = {}, 0.0
    for stage in stages:
        stage = checks.choice(stage, "stage", (1, 2))
        if (recipe.stage1_steps if stage == 1 else recipe.stage2_steps) == 0:
            continue
        if stage == 1:
            data.setdefault("captions", caption_data(recipe.n_captions, seed=recipe.seed))
            images, convs = data["captions"][:2]
        else:
            if "instructions" not in data:
                data["instructions"] = (instruction_data(recipe.n_instructions, seed=recipe.seed + 1)
                                        if recipe.turns == 1 else
                                        dialogue_data(recipe.n_instructions, recipe.turns, seed=recipe.seed + 1))
            images, convs = data["instructions"][:2]
        hook = None if after_step is None else (lambda step, stage=stage: after_step(stage, step))
        history, s = train_stage(model, recipe.stage(stage), images, convs, blind=blind, after_step=hook)
        histories[f"stage{stage}"], seconds = history["loss"], seconds + s
    return histories, seconds


def evaluate_llava(model: LlavaModel, n: int = 300, seed: int = 77, blind: bool = False) -> dict:
    """Exact-answer accuracy per question type on ``n`` questions about test images (colour–kind
    pairs seen in training) and ``n`` about held-out-pair images; ``blind=True`` asks without images."""
    n = checks.integer(n, "n", minimum=1)
    out = {}
    for split in ("test", "holdout"):
        images, _, items, _ = instruction_data(n, split=split, seed=seed)
        out[split] = accuracy_by_type(model, None if blind else images, items)
    return out


#: The question types that chapter 8's bars name (held-out pairs: 90% for the first three, 80% for the rest).
BAR_TYPES = ("colour", "kind", "position", "count", "relation")


def evaluate_by_type(model: LlavaModel, per_type: int = 150, types: Sequence[str] = BAR_TYPES, seed: int = 90,
                     splits: Sequence[str] = ("test", "holdout")) -> dict:
    """Exact-answer accuracy with ``per_type`` questions of each type about images of each split.

    :func:`evaluate_llava` draws the type of each question at random, so a type gets about a ninth
    of its questions; this asks the same number of each (one image per question), which is what a
    per-type bar needs. Returns ``{split: {type: accuracy}}``.
    """
    per_type = checks.integer(per_type, "per_type", minimum=1)
    if isinstance(types, str) or not isinstance(types, (list, tuple)) or not types:
        raise TypeError(f"types must be a non-empty list of question types, got {types!r}")
    types = [checks.choice(t, "types", QUESTION_TYPES) for t in types]
    if isinstance(splits, str) or not isinstance(splits, (list, tuple)) or not splits:
        raise TypeError(f"splits must be a non-empty list of ShapesWorld splits, got {splits!r}")
    device = next(model.parameters()).device
    out = {}
    for split in splits:
        checks.choice(split, "splits", ("train", "test", "holdout", "all"))
        out[split] = {}
        for k, t in enumerate(types):
            n = per_type
            while True:                      # not every scene can answer every type: draw more scenes
                try:
                    images, _, items, _ = instruction_data(n, split=split, seed=seed + k, types=(t,))
                except ValueError as err:        # none of n scenes could answer a question of this type
                    if not str(err).startswith("no scene could answer"):
                        raise
                    items = []
                if len(items) >= per_type:
                    break
                if n >= 64 * per_type:
                    raise ValueError(f"only {len(items)} of {n} {split} scenes can answer a {t!r} question; "
                                     f"ask for fewer than {per_type}")
                n *= 2
            out[split][t] = accuracy_by_type(model, images[:per_type].to(device), items[:per_type])[t]
    return out


def describe_scores(model: LlavaModel, n: int = 200, seed: int = 78, min_shapes: int = 2) -> dict:
    """Hallucination (CHAIR) and exactness of the answers to "what is in the picture?" for ``n``
    test scenes of at least ``min_shapes`` shapes (where there is something to invent)."""
    from .instructions import DESCRIBE

    n = checks.integer(n, "n", minimum=1)
    min_shapes = checks.integer(min_shapes, "min_shapes", minimum=1, maximum=3)
    world = ShapesWorld(max_shapes=3)
    data = world.sample(4 * n, split="test", seed=seed, captions=None)
    keep = [i for i, sc in enumerate(data.shapes) if len(sc) >= min_shapes][:n]
    said = answers(model, data.tensor()[keep], [DESCRIBE] * len(keep), max_new_tokens=40)
    return caption_scores(said, [data.shapes[i] for i in keep])


# -- the shipped model ----------------------------------------------------------------------------------
LLAVA_NAME = "llava-shapes"


def llava_folder() -> Path:
    """Where the shipped model lives: ``vlmlib/weights/llava-shapes``."""
    from importlib.resources import files

    return Path(str(files("vlmlib") / "weights")) / LLAVA_NAME


def save_llava(model: LlavaModel, record: dict, folder: Path | str | None = None) -> Path:
    """Save the whole model, ``model.safetensors`` (frozen vision tower, projector, language model:
    the tower travels with it, so the model never depends on a CLIP trained elsewhere), and
    ``record.json``: the parts' configurations, the weights' checksum and ``record`` (recipes,
    scores, histories)."""
    from safetensors.torch import save_model

    if not isinstance(model, LlavaModel):
        raise TypeError(f"model must be a LlavaModel, got {type(model).__name__}")
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    folder = Path(folder) if folder is not None else llava_folder()
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.safetensors"
    save_model(model, str(weights))              # handles the LM's tied embedding and output weights
    out = {"vit_config": model.vision_tower.config.to_dict(), "lm_config": model.language_model.config.to_dict(),
           "projector": model.projector.kind, "feature_layer": model.feature_layer,
           "image_token_id": model.image_token_id, **record,
           "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (folder / "record.json").write_text(json.dumps(out, indent=1, allow_nan=False))
    return folder


def load_llava(folder: Path | str | None = None, device: str | torch.device = "cpu"):
    """The shipped (or a saved) model: ``(model, record)``, checksum-checked, in eval mode."""
    from safetensors.torch import load_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from .vit import ViT, ViTConfig

    folder = Path(folder) if folder is not None else llava_folder()
    record_path, weights = folder / "record.json", folder / "model.safetensors"
    if not record_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no LLaVA model in {folder}: run `python -m tools.train_llava`")
    record = json.loads(record_path.read_text())
    if hashlib.sha256(weights.read_bytes()).hexdigest() != record["weights_sha256"]:
        raise ValueError(f"{weights} fails its checksum: run `python -m tools.train_llava` again")
    lm_config = {k: v for k, v in record["lm_config"].items() if k not in ("transformers_version",)}
    model = LlavaModel(ViT(ViTConfig(**record["vit_config"])), LlamaForCausalLM(LlamaConfig(**lm_config)),
                       record["image_token_id"], projector=record["projector"],
                       feature_layer=record["feature_layer"])
    load_model(model, str(weights))
    return model.to(device).eval(), record
