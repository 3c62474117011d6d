"""Checkers for chapter 2, CLIP."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import clip as C
from .core import Case, Verdict, check_function
from .registry import exercise


def _reference_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                                logit_scale: torch.Tensor) -> torch.Tensor:
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    return C.clip_loss(image @ text.T * logit_scale.exp())


@exercise("2.1", contrastive_loss=_reference_contrastive_loss)
def check_contrastive_loss(fn, seed: int | None = None) -> Verdict:
    """Exercise 2.1: CLIP's symmetric contrastive loss from unnormalised features."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    cases = [Case((torch.eye(3), torch.eye(3), torch.tensor(0.0)), description="three orthogonal pairs, scale 1")]
    for n, d in ((1, 4), (2, 8), (8, 16), (64, 32)):
        scale = torch.rand((), generator=g) * 4
        cases.append(Case((torch.randn(n, d, generator=g) * 3, torch.randn(n, d, generator=g), scale),
                          description=f"a batch of {n} random pairs of dimension {d}"))
    return check_function(
        "2.1", fn, _reference_contrastive_loss, cases,
        hint="Normalise both with F.normalize(x, dim=-1); logits = image @ text.T * logit_scale.exp(); "
             "labels = torch.arange(n); average F.cross_entropy(logits, labels) and "
             "F.cross_entropy(logits.T, labels).")


def _reference_ensemble(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(prompt_embeddings, dim=-1).mean(dim=1), dim=-1)


@exercise("2.2", ensemble=_reference_ensemble)
def check_ensemble(fn, seed: int | None = None) -> Verdict:
    """Exercise 2.2: prompt ensembling in embedding space."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    cases = [Case((torch.tensor([[[3.0, 0.0], [0.0, 1.0]]]),), description="one class, two templates")]
    for c, t, e in ((1, 1, 4), (4, 7, 16), (9, 5, 64)):
        scales = torch.rand(c, t, 1, generator=g) * 5 + 0.1
        cases.append(Case((torch.randn(c, t, e, generator=g) * scales,),
                          description=f"{c} classes, {t} templates, dimension {e}"))
    return check_function(
        "2.2", fn, _reference_ensemble, cases,
        hint="Normalise each prompt embedding first (dim=-1), average over the templates (dim=1), "
             "then normalise the average again.")


@exercise("2.3", recall_at_k=C.recall_at_k)
def check_recall_at_k(fn, seed: int | None = None) -> Verdict:
    """Exercise 2.3: recall@k of a square similarity matrix."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    cases = [Case((torch.tensor([[0.9, 0.1], [0.8, 0.5]]), 1), description="a 2×2 case by hand")]
    for n in (1, 5, 40, 200):
        sim = torch.randn(n, n, generator=g) + 2 * torch.eye(n)
        for k in sorted({1, min(5, n), n}):
            cases.append(Case((sim, k), description=f"{n} queries, k = {k}"))
    return check_function(
        "2.3", fn, lambda s, k: C.recall_at_k(s, k), cases,
        hint="similarity.topk(k, dim=1).indices gives each row's k best columns; query i is right "
             "when i is among them. Return the fraction of right queries as a Python float.")
