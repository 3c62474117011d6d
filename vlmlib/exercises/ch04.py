"""Checkers for chapter 4, the image-generation toolkit."""

from __future__ import annotations

import numpy as np
import torch

from ..toolkit import add_noise, masking_schedule
from .core import Case, Verdict, check_function, python_scalar, safe_repr
from .registry import exercise


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**31)))


@exercise("4.1", masking_schedule=masking_schedule)
def check_masking_schedule(fn, seed: int | None = None, verbose: bool = True) -> Verdict:
    """Exercise 4.1: MaskGIT's cosine schedule, tokens still masked after each step."""
    sizes = [(64, 8), (64, 1), (64, 4), (16, 3), (64, 64), (10, 7), (256, 12), (5, 5)]
    rng = np.random.default_rng(seed)
    for _ in range(3):
        n = int(rng.integers(2, 300))
        sizes.append((n, int(rng.integers(1, n + 1))))
    cases = [Case((n, steps), description=f"N={n} tokens, T={steps} steps") for n, steps in sizes]

    def same_list(actual, expected, name):
        if isinstance(actual, (np.ndarray, torch.Tensor)) and actual.ndim == 1:
            actual = list(actual)
        if not isinstance(actual, (list, tuple)):
            return f"{name} should be a list of {len(expected)} integers, but it is {safe_repr(actual)}."
        if len(actual) != len(expected):
            return f"{name} should have one count per step ({len(expected)}), but it has {len(actual)}."
        actual = [python_scalar(v) for v in actual]   # np.int64, 0-d tensors... count as integers
        odd = next((v for v in actual if isinstance(v, bool) or not isinstance(v, (int, float))
                    or not float(v).is_integer()), None)
        if odd is not None:
            return f"{name} should hold whole numbers of tokens, but it holds {safe_repr(odd)}."
        if actual != expected:
            i = next(i for i, (a, e) in enumerate(zip(actual, expected)) if a != e)
            return f"after step {i + 1} {name} says {actual[i]} tokens stay masked; it should be {expected[i]}."
        return None

    return check_function(
        "4.1", fn, masking_schedule, cases, compare_fn=same_list, verbose=verbose,
        hint="for t = 1..T: masked = floor(N · cos(π/2 · t/T)); then make it at most the previous "
             "count minus one (every step decodes a token), and end with 0.")


@exercise("4.2", add_noise=add_noise)
def check_add_noise(fn, seed: int | None = None, verbose: bool = True) -> Verdict:
    """Exercise 4.2: the forward process of diffusion in closed form."""
    g = _generator(seed)
    cases = [Case((torch.ones(2, 64), torch.zeros(2, 64), torch.tensor([1.0, 0.25])),
                  description="x0 = 1, no noise, ᾱ = 1 and 0.25")]
    for shape in [(3, 64), (4, 8, 8), (1, 64), (5, 1, 8, 8)]:
        cases.append(Case((torch.randn(*shape, generator=g), torch.randn(*shape, generator=g),
                           torch.rand(shape[0], generator=g)), description=f"images of shape {shape}"))
    return check_function(
        "4.2", fn, add_noise, cases, atol=1e-5, verbose=verbose,
        hint="x_t = sqrt(ᾱ) · x0 + sqrt(1 − ᾱ) · ε, with ᾱ reshaped to (B, 1, ...) so that it "
             "broadcasts over the pixels of each image.")
