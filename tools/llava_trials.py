"""Chapter 8's development runs: can training on the language side fix the held-out colour–kind pairs?

    python -m tools.llava_trials --text 0.3              # stage 2 with text-only conversations
    python -m tools.llava_trials --grey 0.4              # stage 2 with grey copies, colour-free questions
    python -m tools.llava_trials --text 0.3 --turns 4    # the text mix and four questions per image
    python -m tools.llava_trials --quick                 # a smoke test: tiny data, two steps

Each run trains a fresh model as ``tools.train_llava`` trains the chapter's (``LlavaRecipe()``: chapter
2's frozen CLIP tower, the text-only LM, stage 1 then stage 2) except that a share of stage 2's
batches comes from elsewhere, and prints its accuracy per question type on 300 questions per split
(``evaluate_llava``, as the shipped record). Nothing is saved; about 15 minutes on one core (25 with
``--turns 4``). The chapter quotes these runs:

- ``--text p``: a share p of the batches are **text-only** conversations about described scenes of
  every colour–kind pair, held-out ones included ("a small purple triangle at the top . what colour
  is the triangle?" -> "purple"), no image: the language model reads that purple triangles exist.
  (LLaVA-1.5 also mixes text-only conversations into its second stage.)
- ``--grey p``: a share p are **grey copies** of training images (the luminance, as chapter 2's
  CLIP saw 80% of its images) with questions that name no colour ("what shape is at the top left?",
  "where is the circle?", "what size is the circle?", "how many shapes are there?"): chapter 2's
  cure for CLIP, which must then tell a kind without its colour.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vlmlib import checks
from vlmlib.clip import grey_copies
from vlmlib import llava_training as LT
from vlmlib.instructions import instructions
from vlmlib.llava import LlavaModel, apply_template, conversation, freeze_for_stage
from vlmlib.shapesworld import NUMBER_WORDS, POSITION_PHRASES, ShapesWorld, caption

def text_conversations(n: int, seed: int = 5) -> list:
    """``n`` text-only conversations: a described scene of any colour–kind pair and one question
    about it (any type but the description, which would only copy the text)."""
    data = ShapesWorld(max_shapes=3).sample(checks.integer(n, "n", minimum=1), split="all", seed=seed, captions=None)
    rng = np.random.default_rng([seed, 11])
    convs = []
    for scene in data.shapes:
        options = [it for it in instructions(scene, rng) if it.type != "description"]
        item = options[int(rng.integers(len(options)))]
        convs.append(conversation(f"{caption(scene, 'full')} . {item.question}", item.answer, images=0))
    return convs


def grey_conversations(n: int, seed: int = 2) -> tuple[torch.Tensor, list]:
    """``n`` grey copies of training images, each with one question that names no colour."""
    data = ShapesWorld(max_shapes=3).sample(checks.integer(n, "n", minimum=1), split="train", seed=seed,
                                            captions=None)
    grey = grey_copies(data.tensor())
    rng = np.random.default_rng([seed, 12])
    convs = []
    for scene in data.shapes:
        kinds = [s.kind for s in scene]
        s = scene[int(rng.integers(len(scene)))]
        options = [(f"what shape is {POSITION_PHRASES[s.position]}?", s.kind),
                   ("how many shapes are there?", NUMBER_WORDS[len(scene)])]
        unique = [s for s in scene if kinds.count(s.kind) == 1]
        if unique:
            u = unique[int(rng.integers(len(unique)))]
            options += [(f"where is the {u.kind}?", u.position), (f"what size is the {u.kind}?", u.size)]
        convs.append(conversation(*options[int(rng.integers(len(options)))]))
    return grey, convs


def mixed_stage2(model: LlavaModel, recipe: LT.LlavaRecipe, images: torch.Tensor, convs: list,
                 extra: list[tuple[float, torch.Tensor | None, list]], desc: str = "stage 2 (mixed)"):
    """Stage 2 of ``recipe`` on (images, convs), each batch drawn instead, with probability p, from
    one of ``extra``'s sources ``(p, images or None for text-only, conversations)``. Returns the
    history. The parameters that train are stage 2's (the projector and the LM)."""
    from vlmlib.training import train

    if sum(p for p, _, _ in extra) > 1:
        raise ValueError("the extra sources' shares must add up to at most 1")
    freeze_for_stage(model, 2)
    sources = [(1.0 - sum(p for p, _, _ in extra), images, convs)] + list(extra)
    batches = []
    for p, imgs, cs in sources:
        b = apply_template(cs, model.n_patches)
        batches.append((p, imgs, b["input_ids"], b["attention_mask"], b["labels"]))
    shares = torch.tensor([b[0] for b in batches])
    g = torch.Generator().manual_seed(recipe.seed + 2)

    def loss_fn(step: int):
        _, imgs, ids, mask, labels = batches[int(torch.multinomial(shares, 1, generator=g))]
        idx = torch.randint(len(ids), (recipe.batch_size,), generator=g)
        width = int(mask[idx].sum(1).max())
        return model(None if imgs is None else imgs[idx], ids[idx, :width], mask[idx, :width],
                     labels=labels[idx, :width]).loss

    params = [p for p in model.parameters() if p.requires_grad]
    return train(model, loss_fn, recipe.stage2_steps, lr=recipe.stage2_lr, weight_decay=0.0, warmup=0.03,
                 params=params, desc=desc)


def main() -> None:
    from vlmlib import clip as C
    from vlmlib import lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=float, default=0.0, help="share of stage 2's batches that are text-only")
    parser.add_argument("--grey", type=float, default=0.0, help="share that are grey copies")
    parser.add_argument("--turns", type=int, default=1, help="questions per image in stage 2")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny data, two steps per stage")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = dict(n_captions=64, n_instructions=64, stage1_steps=2, stage2_steps=2, batch_size=8) if args.quick else {}
    recipe = LT.LlavaRecipe(turns=args.turns, **sizes)
    n_extra, n_eval = (64, 12) if args.quick else (30_000, 300)
    model = LT.build_llava(C.load_clip(budget="cpu", device="cpu", verbose=False)[0], lm.load_lm()[0])
    start = time.perf_counter()
    LT.train_llava(model, recipe, (1,))
    images, convs = (LT.instruction_data(recipe.n_instructions, seed=recipe.seed + 1) if recipe.turns == 1 else
                     LT.dialogue_data(recipe.n_instructions, recipe.turns, seed=recipe.seed + 1))[:2]
    extra = []
    if args.text:
        extra.append((args.text, None, text_conversations(n_extra)))
    if args.grey:
        extra.append((args.grey, *grey_conversations(n_extra)))
    mixed_stage2(model, recipe, images, convs, extra)
    out = {"args": vars(args), "train_seconds": time.perf_counter() - start,
           "accuracy": LT.evaluate_llava(model, n=n_eval)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
