"""Checkers for chapter 6, text to image."""

from __future__ import annotations

import numpy as np
import torch

from ..diffusion import guide, threshold_x0
from ..text2image import cross_attention as _cross_attention
from .core import Case, Verdict, check_function
from .registry import exercise


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**31)))


def _cross_attention_reference(x, context, w_q, w_k, w_v, w_o, heads, mask=None):
    return _cross_attention(x, context, w_q, w_k, w_v, w_o, heads=heads, mask=mask)


@exercise("6.1", cross_attention=_cross_attention_reference)
def check_cross_attention(fn, seed: int | None = None) -> Verdict:
    """Exercise 6.1: multi-head cross-attention from image positions to text tokens, with a padding mask."""
    g = _generator(seed)
    cases = []
    for B, N, L, C, D, heads, width, masked in [(1, 4, 3, 8, 6, 1, 8, False), (2, 16, 5, 16, 12, 2, 16, False),
                                                 (2, 16, 6, 32, 24, 4, 32, True), (3, 4, 16, 8, 64, 2, 8, True)]:
        x, c = torch.randn(B, N, C, generator=g), torch.randn(B, L, D, generator=g)
        w = [torch.randn(width, C, generator=g) / C ** 0.5, torch.randn(width, D, generator=g) / D ** 0.5,
             torch.randn(width, D, generator=g) / D ** 0.5, torch.randn(C, width, generator=g) / width ** 0.5]
        mask = None
        if masked:
            lengths = torch.randint(1, L + 1, (B,), generator=g)
            mask = torch.arange(L)[None] < lengths[:, None]
        cases.append(Case((x, c, *w, heads, mask),
                          description=f"{B} images of {N} positions, {L} text tokens, {heads} head(s)"
                                      + (", padding masked" if masked else "")))
    return check_function(
        "6.1", fn, _cross_attention_reference, cases, atol=1e-4,
        hint="q = x @ w_q.T, k = context @ w_k.T, v = context @ w_v.T; split the last dimension into "
             "(heads, d) and move heads before the positions; scores = q @ k.transpose(-1, -2) / sqrt(d); "
             "where mask is False set the score to -inf (mask[:, None, None, :]) before the softmax over "
             "the text tokens; join the heads back and multiply by w_o.T.")


def _guided_reference(uncond, cond, w):
    return guide(uncond, cond, w)


@exercise("6.2", guided=_guided_reference)
def check_guided(fn, seed: int | None = None) -> Verdict:
    """Exercise 6.2: classifier-free guidance in the book's (and diffusers') convention."""
    g = _generator(seed)
    cases = [Case((torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g), w),
                  description=f"w = {w}") for w in (1.0, 0.0, 3.0, 7.5)]
    return check_function(
        "6.2", fn, _guided_reference, cases,
        hint="w = 1 must give the conditional prediction and w = 0 the unconditional one: "
             "uncond + w * (cond - uncond).")


def _dynamic_reference(x0, percentile):
    return threshold_x0(x0, "dynamic", percentile)


@exercise("6.3", dynamic_threshold=_dynamic_reference)
def check_dynamic_threshold(fn, seed: int | None = None) -> Verdict:
    """Exercise 6.3: Imagen's dynamic thresholding of x̂₀, per image."""
    g = _generator(seed)
    cases = []
    for B, scale, p in [(2, 0.5, 0.995), (3, 3.0, 0.995), (4, 2.0, 0.9), (2, 1.2, 0.5)]:
        x0 = torch.randn(B, 3, 8, 8, generator=g) * scale * torch.linspace(0.3, 1.5, B).view(-1, 1, 1, 1)
        cases.append(Case((x0, p), description=f"{B} images, spread {scale}, percentile {p}"))
    return check_function(
        "6.3", fn, _dynamic_reference, cases, atol=1e-5,
        hint="per image: s = torch.quantile(x0.abs().reshape(B, -1), percentile, dim=1), then s = s.clamp(min=1) "
             "(s ≤ 1 changes nothing); reshape s to (B, 1, 1, 1) and return x0.clamp(-s, s) / s.")
