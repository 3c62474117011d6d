"""Run settings shared by every notebook: seeding, device and the run budget.

Introduced in notebook 00. Every chapter's first code cell calls :func:`setup`, which seeds all
random number generators, picks the device (CUDA when present) and chooses a *budget*: the size
of the training runs. The CPU budget keeps each chapter to about three minutes on a 2-core laptop;
the GPU budget trains longer and larger. Set the environment variable ``VLMLIB_BUDGET`` to
``cpu`` or ``gpu`` to force one.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from . import checks

BUDGETS = ("cpu", "gpu")
BUDGET_ENV = "VLMLIB_BUDGET"

T = TypeVar("T")


@dataclass(frozen=True)
class RunSettings:
    """What :func:`setup` chose for this run."""

    seed: int
    device: torch.device
    budget: str

    def __post_init__(self):
        object.__setattr__(self, "seed", checks.integer(self.seed, "seed", minimum=0))
        object.__setattr__(self, "device", _device(self.device))
        object.__setattr__(self, "budget", checks.choice(self.budget, "budget", BUDGETS))

    def pick(self, cpu: T, gpu: T) -> T:
        """Return ``cpu`` or ``gpu`` according to the budget, e.g. ``settings.pick(cpu=800, gpu=5000)``."""
        return gpu if self.budget == "gpu" else cpu

    def describe(self) -> str:
        import vlmlib

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "CPU"
        return (
            f"vlmlib {vlmlib.__version__} | torch {torch.__version__} | python {platform.python_version()}\n"
            f"device: {self.device} ({name}, {torch.get_num_threads()} threads) | seed: {self.seed}\n"
            f"budget: {self.budget} (set {BUDGET_ENV}=cpu|gpu to force)"
        )


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's random number generators."""
    try:
        seed = checks.integer(seed, "seed", minimum=0)
    except (TypeError, ValueError) as err:
        raise type(err)(f"seed must be a non-negative integer, got {seed!r}") from None
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def default_device() -> torch.device:
    """CUDA when a GPU is present, otherwise the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _device(device) -> torch.device:
    """A torch.device from a device or a name such as ``"cpu"`` or ``"cuda"``."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a torch.device or a name such as 'cpu' or 'cuda', got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be a name such as 'cpu', 'cuda' or 'cuda:0', got {device!r}") from None


def budget_for(device: torch.device) -> str:
    """The budget for ``device`` (a ``torch.device`` or its name), unless ``VLMLIB_BUDGET`` forces one."""
    device = _device(device)
    forced = os.environ.get(BUDGET_ENV, "").strip().lower()
    if forced:
        if forced not in BUDGETS:
            raise ValueError(f"{BUDGET_ENV} must be one of {BUDGETS}, got {forced!r}")
        return forced
    return "gpu" if device.type == "cuda" else "cpu"


_current: RunSettings | None = None


def setup(seed: int = 0, device: str | torch.device | None = None, verbose: bool = True) -> RunSettings:
    """Seed everything, choose device and budget, and print them once.

    >>> settings = setup(seed=0)          # doctest: +SKIP
    >>> steps = settings.pick(cpu=600, gpu=4000)   # doctest: +SKIP
    """
    global _current
    if not isinstance(verbose, (bool, np.bool_)):
        raise TypeError(f"verbose must be True or False, got {verbose!r}")
    dev = _device(device) if device is not None else default_device()
    seed_everything(seed)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU; use device=None to pick automatically")
    settings = RunSettings(seed=int(seed), device=dev, budget=budget_for(dev))
    if verbose and settings != _current:
        print(settings.describe())
    _current = settings
    return settings


def current() -> RunSettings:
    """The settings of the last :func:`setup` call (setting up with defaults if there was none)."""
    return _current if _current is not None else setup(verbose=False)


@contextlib.contextmanager
def quiet_loading():
    """Load a model from local files without ``transformers``' "Loading weights" progress bar: a
    shipped or cached model loads in a blink, and the bar would only clutter the page. Downloads
    (:mod:`vlmlib.hub`) keep their progress bars."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
