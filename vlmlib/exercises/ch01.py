"""Checkers for chapter 1, the Vision Transformer."""

from __future__ import annotations

import numpy as np
import torch

from ..vit import patchify, scaled_dot_product_attention
from .core import Case, Verdict, check_function
from .registry import exercise


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**31)))


@exercise("1.1", patchify=patchify)
def check_patchify(fn, seed: int | None = None) -> Verdict:
    """Exercise 1.1: cut images into flattened P×P patches."""
    g = _generator(seed)
    cases = [Case((torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4), 2),
                  description="one 2-channel 4×4 image with numbered pixels, P=2")]
    for B, C, S, P in [(2, 3, 8, 4), (3, 3, 32, 4), (1, 1, 12, 3), (2, 3, 32, 8), (4, 2, 6, 6)]:
        cases.append(Case((torch.randn(B, C, S, S, generator=g), P), description=f"images {(B, C, S, S)}, P={P}"))
    return check_function(
        "1.1", fn, patchify, cases,
        hint="reshape to (B, C, H/P, P, W/P, P), permute to (B, H/P, W/P, C, P, P), then reshape to "
             "(B, N, C·P·P). The order inside a patch is channel first, then row, then column.")


def _embed_reference(patch_tokens, cls_token, pos_embed):
    cls = cls_token.expand(patch_tokens.shape[0], -1, -1)
    return torch.cat([cls, patch_tokens], dim=1) + pos_embed


@exercise("1.2", embed_tokens=_embed_reference)
def check_embed_tokens(fn, seed: int | None = None) -> Verdict:
    """Exercise 1.2: prepend the class token and add the position embeddings (Eq. 1)."""
    g = _generator(seed)
    cases = []
    for B, N, D in [(1, 4, 2), (2, 16, 8), (5, 64, 32), (3, 9, 16)]:
        cases.append(Case((torch.randn(B, N, D, generator=g), torch.randn(1, 1, D, generator=g),
                           torch.randn(1, N + 1, D, generator=g)), description=f"B={B}, N={N}, D={D}"))
    return check_function(
        "1.2", fn, _embed_reference, cases,
        hint="expand the class token to (B, 1, D), torch.cat it before the patch tokens along dim=1, "
             "then add pos_embed (shape (1, N+1, D) broadcasts over the batch).")


def _attention_output(q, k, v):
    return scaled_dot_product_attention(q, k, v)[0]


@exercise("1.3", attention=_attention_output)
def check_attention(fn, seed: int | None = None) -> Verdict:
    """Exercise 1.3: scaled dot-product attention, softmax(QKᵀ/√d)V."""
    g = _generator(seed)
    cases = []
    for shape in [(1, 3, 2), (2, 5, 8), (2, 4, 17, 16), (3, 65, 16)]:
        q, k, v = (torch.randn(*shape, generator=g) for _ in range(3))
        cases.append(Case((q, k, v), description=f"q, k, v of shape {shape}"))
    big = torch.randn(2, 6, 4, generator=g) * 30          # large scores: a naive exp() overflows
    cases.append(Case((big, big.clone(), torch.randn(2, 6, 4, generator=g)), description="large scores"))
    return check_function(
        "1.3", fn, _attention_output, cases, atol=1e-4,
        hint="scores = q @ k.transpose(-2, -1) / sqrt(d) with d = q.shape[-1]; weights = scores.softmax(dim=-1); "
             "return weights @ v. torch.softmax is numerically safe for large scores.")
