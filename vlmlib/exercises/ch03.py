"""Checkers for chapter 3, what happened after CLIP."""

from __future__ import annotations

import torch

from .. import clip as C
from .core import Case, Verdict, check_function
from .registry import exercise


@exercise("3.1", sigmoid_loss=C.siglip_loss)
def check_sigmoid_loss(fn, seed: int | None = None) -> Verdict:
    """Exercise 3.1: SigLIP's pairwise sigmoid loss."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    cases = [Case((torch.zeros(2, 2), torch.tensor(0.0)), description="all logits zero, no bias")]
    for n in (1, 3, 16, 100):
        cases.append(Case((torch.randn(n, n, generator=g) * 5, torch.randn((), generator=g) * 5),
                          description=f"a batch of {n}"))
    return check_function(
        "3.1", fn, C.siglip_loss, cases,
        hint="labels = 2 * torch.eye(n) - 1 (+1 on the diagonal, -1 elsewhere); "
             "loss = -F.logsigmoid(labels * (logits + bias)).sum() / n.")
