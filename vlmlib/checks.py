"""Checks of arguments at vlmlib's public boundary, shared by every module.

Each check names the argument, says what was expected and what was given, and returns the value
in the form the caller works with, so a public function starts with a few lines such as::

    images = checks.images(images, "images", shape=(3, 32, 32), low=0.0, high=1.0)
    n = checks.integer(n, "n", minimum=1)
    p = checks.number(p, "p_uncond", low=0.0, high=1.0)

Images a student naturally has (float64, or uint8 in [0, 255]) are converted where the meaning is
unambiguous (:func:`images` with ``convert=True``); everything else is an error, never a silent guess.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch


def _given(value: Any) -> str:
    """A short description of ``value`` for an error message."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return f"{text[:60]}…" if len(text) > 60 else text


def integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (NumPy integers and one-element integer tensors accepted, bools and floats refused)
    within [minimum, maximum]."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()
            and not value.is_complex() and value.dtype != torch.bool):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {_given(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def number(value: Any, name: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within [low, high] (either end open on request)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {_given(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '≥'} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '≤'} {high}, got {value}")
    return value


def choice(value: Any, name: str, options: Iterable[Any]) -> Any:
    """One of ``options`` (strings compare after ``str()``, so ``np.str_`` is accepted)."""
    options = list(options)
    key = str(value) if isinstance(value, (str, np.str_)) else value
    try:
        known = any(key is option or (not isinstance(key, bool) and not isinstance(option, bool) and bool(key == option))
                    for option in options)
    except (TypeError, ValueError, RuntimeError):       # an array or tensor: comparing is ambiguous
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {options}, got {_given(value)}")
    return key


def text_list(value: Any, name: str, length: int | None = None) -> list[str]:
    """A list of strings; a single string is refused (it would be split into characters)."""
    if isinstance(value, (str, np.str_)):
        raise TypeError(f"{name} must be a list of strings, got one string {_given(value)}; wrap it in a list")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, got {_given(value)}") from None
    bad = [i for i, v in enumerate(items) if not isinstance(v, (str, np.str_))]
    if bad:
        raise TypeError(f"{name} must hold strings only; item {bad[0]} is {_given(items[bad[0]])}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} items (one per image), got {len(items)}")
    return [str(v) for v in items]


def labels(value: Any, name: str, classes: int, length: int | None = None) -> torch.Tensor:
    """Integer class indices in [0, classes) as a 1-D int64 tensor (lists and arrays accepted)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            array = np.asarray(value)
            value = torch.as_tensor(array if array.size else array.astype(np.int64))   # [] has no dtype of its own
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be integer class indices, got {_given(value)}") from None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of integer class indices, got {_given(value)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {value.dtype}")
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one index per item), got shape {tuple(value.shape)}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}")
    if len(value) and (value.min() < 0 or value.max() >= classes):
        raise ValueError(f"{name} must be class indices in [0, {classes - 1}], "
                         f"got values in [{value.min().item()}, {value.max().item()}]")
    return value.long()


def images(value: Any, name: str = "images", shape: Sequence[int | None] | None = None,
           low: float | None = None, high: float | None = None, convert: bool = True,
           from_uint8: bool | None = None) -> torch.Tensor:
    """A non-empty float32 batch (N, C, H, W) of finite values, optionally of ``shape`` (C, H, W)
    (``None`` matches any size) and within [low, high].

    With ``convert`` (the default), NumPy arrays become tensors, float64 and float16 tensors become
    float32, and a uint8 batch becomes float32 in [0, 1] (divided by 255) when ``low, high`` is
    ``0, 1``; a uint8 batch for a function that expects another range is an error, because the
    intended scale is not known. ``from_uint8=True`` reads uint8 as 0–255 pixels (scaled to [0, 1])
    also where the range of float input is not checked (a model trained on [0, 1] images);
    ``from_uint8=False`` refuses uint8 always.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got {_given(value)}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {_given(value)}")
    want = f"(N, {', '.join('?' if s is None else str(s) for s in shape)})" if shape else "(N, C, H, W)"
    if value.ndim != 4:
        raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}"
                         + ("; add a batch dimension with x[None]" if value.ndim == 3 else ""))
    if shape is not None and any(s is not None and s != d for s, d in zip(shape, value.shape[1:])):
        channels_last = shape[0] is not None and value.shape[-1] == shape[0] and value.shape[1] != shape[0]
        raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}"
                         + ("; these look channels-last (N, H, W, C): use x.permute(0, 3, 1, 2) "
                            "(or ShapesData.tensor())" if channels_last else ""))
    if len(value) == 0:
        raise ValueError(f"{name} is empty (a batch of 0 images)")
    if value.dtype == torch.uint8 and convert and from_uint8 is not False:
        if not from_uint8 and (low, high) != (0.0, 1.0):
            scale = f"floats in [{low}, {high}]" if low is not None or high is not None else "float images"
            raise ValueError(f"{name} are uint8, but this function expects {scale}; convert them first")
        value = value.float() / 255
    elif not value.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {value.dtype}")
    elif value.dtype != torch.float32:
        if not convert:
            raise TypeError(f"{name} must be float32, got {value.dtype}; use images.float()")
        value = value.float()
    # A finite sum means every value is finite (NaN and ±inf propagate); one reduction is ~30× faster
    # than isfinite().all(), which matters for models that check their input every training step.
    if not torch.isfinite(value.sum()) and not torch.isfinite(value).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    if low is not None or high is not None:
        lo, hi = value.aminmax()
        lo, hi = lo.item(), hi.item()
        if (low is not None and lo < low - 1e-4) or (high is not None and hi > high + 1e-4):
            hint = " (they look like values in [0, 255]: divide by 255)" if hi > 2 and high == 1.0 else ""
            raise ValueError(f"{name} must have values in [{low}, {high}], got [{lo:.3g}, {hi:.3g}]{hint}")
    return value


def probability(value: Any, name: str) -> float:
    """A probability in [0, 1]."""
    return number(value, name, 0.0, 1.0)
