"""Checkers for chapter 8, image to text (LLaVA)."""

from __future__ import annotations

import numpy as np
import torch

from ..llava import dpo_loss as _dpo_loss
from ..llava import merge_embeddings, trains_in_stage
from .core import Case, Verdict, check_function
from .registry import exercise


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**31)))


def _merge_reference(embeds, input_ids, features, image_token_id):
    return merge_embeddings(embeds, input_ids, features, image_token_id)


@exercise("8.1", merge_visual_tokens=_merge_reference)
def check_merge_visual_tokens(fn, seed: int | None = None) -> Verdict:
    """Exercise 8.1: put the visual tokens where the <image> placeholders are."""
    g = _generator(seed)
    image_id = 3
    cases = []
    for B, images_per_row, N, D, text in [(1, 1, 4, 8, 3), (2, 1, 16, 6, 5), (2, 2, 4, 5, 2), (3, 1, 9, 4, 7)]:
        rows = []
        for _ in range(B):
            words = torch.randint(5, 40, (text,), generator=g)
            cut = int(torch.randint(0, text + 1, (1,), generator=g))
            rows.append(torch.cat([words[:cut], torch.full((images_per_row * N,), image_id), words[cut:]]))
        ids = torch.stack(rows)
        embeds = torch.randn(B, ids.shape[1], D, generator=g)
        features = torch.randn(B * images_per_row, N, D, generator=g)
        cases.append(Case((embeds, ids, features, image_id),
                          description=f"{B} sequence(s), {images_per_row} image(s) each of {N} visual tokens"))
    return check_function(
        "8.1", fn, _merge_reference, cases,
        hint="mask = input_ids == image_token_id marks the placeholders (B, L); the visual tokens fill them "
             "in order, row by row: out = embeds.clone(); out[mask] = features.reshape(-1, D). "
             "(embeds.masked_scatter(mask[..., None], features) does the same.) Leave embeds itself unchanged.")


_NAMES = ("vision_tower.blocks.0.attn.qkv.weight", "vision_tower.patch.proj.bias", "projector.linear_1.weight",
          "projector.linear_2.bias", "language_model.model.embed_tokens.weight",
          "language_model.model.layers.3.mlp.up_proj.weight", "language_model.lm_head.weight")


def _trains_reference(name, stage):
    return trains_in_stage(name, stage)


@exercise("8.2", trains=_trains_reference)
def check_trains(fn, seed: int | None = None) -> Verdict:
    """Exercise 8.2: which parameters train in LLaVA's stage 1 and stage 2."""
    cases = [Case((name, stage), description=f"{name!r} in stage {stage}") for stage in (1, 2) for name in _NAMES]
    order = np.random.default_rng(seed).permutation(len(cases))
    return check_function(
        "8.2", fn, _trains_reference, [cases[i] for i in order],
        hint="stage 1 (feature alignment) trains only the projector; stage 2 (end to end) the projector and "
             "the language model; the vision tower never trains. Return True or False from the name's "
             "first part (name.startswith('projector.'), ...).")


def _dpo_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return _dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


@exercise("8.3", dpo_loss=_dpo_reference)
def check_dpo_loss(fn, seed: int | None = None) -> Verdict:
    """Exercise 8.3: the DPO loss from sequence log-probabilities."""
    g = _generator(seed)
    cases = []
    for B, beta, spread in [(1, 0.1, 1.0), (4, 0.1, 5.0), (8, 0.5, 20.0), (3, 2.0, 0.5)]:
        logps = [-(torch.rand(B, generator=g, dtype=torch.float64) * spread + 1) for _ in range(4)]
        cases.append(Case((*logps, beta), description=f"{B} pair(s), beta = {beta}"))
    return check_function(
        "8.3", fn, _dpo_reference, cases, atol=1e-8,
        hint="the implicit rewards are beta * (policy_chosen - ref_chosen) and beta * (policy_rejected - "
             "ref_rejected); the loss is -logsigmoid(chosen reward - rejected reward), averaged over the "
             "pairs (torch.nn.functional.logsigmoid is the stable way to write -log σ).")
