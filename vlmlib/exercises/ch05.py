"""Checkers for chapter 5, diffusion."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion import ddim_step, ddpm_reverse_step, make_schedule, q_sample
from .core import Case, Verdict, check_function
from .registry import exercise


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**31)))


def _q_sample_reference(x0, t, noise, alpha_bar):
    return q_sample(x0, t, noise, alpha_bar)


@exercise("5.1", q_sample=_q_sample_reference)
def check_q_sample(fn, seed: int | None = None) -> Verdict:
    """Exercise 5.1: the closed form x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, one timestep per image."""
    g = _generator(seed)
    cases = []
    for kind, B, S in [("linear", 1, 4), ("linear", 4, 8), ("cosine", 3, 8), ("cosine", 8, 16)]:
        ab = make_schedule(kind).alpha_bar
        x0 = torch.rand(B, 3, S, S, generator=g) * 2 - 1
        t = torch.randint(0, 1000, (B,), generator=g)
        cases.append(Case((x0, t, torch.randn(B, 3, S, S, generator=g), ab),
                          description=f"{kind} schedule, {B} images, t = {t.tolist()}"))
    ab = make_schedule("linear").alpha_bar
    x0 = torch.rand(2, 3, 4, 4, generator=g)
    cases.append(Case((x0, torch.tensor([0, 999]), torch.randn(2, 3, 4, 4, generator=g), ab),
                      description="the first and the last step"))
    return check_function(
        "5.1", fn, _q_sample_reference, cases,
        hint="a = alpha_bar[t] has shape (B,); reshape it to (B, 1, 1, 1) so that it broadcasts over "
             "the channels and pixels, then return a.sqrt() * x0 + (1 - a).sqrt() * noise.")


def _reverse_reference(eps, t, x_t, betas, alpha_bar, z):
    s = make_schedule("linear")
    s.betas, s.alphas, s.alpha_bar = betas, 1 - betas, alpha_bar
    return ddpm_reverse_step(eps, t, x_t, s, noise=z)


@exercise("5.3", reverse_step=_reverse_reference)
def check_reverse_step(fn, seed: int | None = None) -> Verdict:
    """Exercise 5.3: one step of Algorithm 2 with σ_t² = β̃_t (no noise at t = 0)."""
    g = _generator(seed)
    cases = []
    for kind, t in [("linear", 999), ("linear", 500), ("cosine", 250), ("cosine", 3), ("linear", 0)]:
        s = make_schedule(kind)
        shape = (2, 3, 8, 8)
        cases.append(Case((torch.randn(shape, generator=g), t, torch.randn(shape, generator=g), s.betas,
                           s.alpha_bar, torch.randn(shape, generator=g)),
                          description=f"{kind} schedule, t = {t}"))
    return check_function(
        "5.3", fn, _reverse_reference, cases, atol=1e-4,
        hint="alpha_t = 1 - betas[t]; "
             "mean = (x_t - betas[t] / sqrt(1 - alpha_bar[t]) * eps) / sqrt(alpha_t); "
             "ᾱ_{t−1} is alpha_bar[t-1] (1 when t = 0); σ² = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t; at t = 0 return "
             "the mean alone.")


def _ddim_reference(eps, t, t_prev, x_t, alpha_bar):
    s = make_schedule("linear")
    s.alpha_bar = alpha_bar
    return ddim_step(eps, t, x_t, s, t_prev=t_prev, eta=0.0)


@exercise("5.4", ddim_step=_ddim_reference)
def check_ddim_step(fn, seed: int | None = None) -> Verdict:
    """Exercise 5.4: the deterministic DDIM step (η = 0) from index t to index t_prev."""
    g = _generator(seed)
    cases = []
    for kind, t, t_prev in [("linear", 999, 949), ("linear", 500, 250), ("cosine", 999, 499),
                            ("cosine", 100, 0), ("linear", 40, -1)]:
        s = make_schedule(kind)
        shape = (2, 3, 8, 8)
        cases.append(Case((torch.randn(shape, generator=g), t, t_prev, torch.randn(shape, generator=g),
                           s.alpha_bar), description=f"{kind} schedule, {t} → {t_prev}"))
    return check_function(
        "5.4", fn, _ddim_reference, cases, atol=1e-4,
        hint="x0_hat = (x_t - sqrt(1 - ᾱ_t) eps) / sqrt(ᾱ_t); "
             "return sqrt(ᾱ_prev) x0_hat + sqrt(1 - ᾱ_prev) eps, "
             "with ᾱ_prev = alpha_bar[t_prev], or 1 when t_prev = -1.")


def _cosine_reference(T):
    return make_schedule("cosine", T).alpha_bar


@exercise("5.2", cosine_alpha_bar=_cosine_reference)
def check_cosine_alpha_bar(fn, seed: int | None = None) -> Verdict:
    """Exercise 5.2: ᾱ of the cosine schedule, with β_t = 1 − ᾱ_t/ᾱ_{t−1} clipped to 0.999."""
    del seed
    cases = [Case((T,), description=f"T = {T}") for T in (10, 100, 1000)]
    return check_function(
        "5.2", fn, _cosine_reference, cases, atol=1e-5,
        hint=f"f(u) = cos((u + 0.008)/1.008 · π/2)²; β_i = min(1 − f((i+1)/T)/f(i/T), 0.999) for i in "
             f"range(T); ᾱ = cumprod(1 − β) as a float32 tensor. (π = {math.pi:.5f})")
