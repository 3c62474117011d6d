"""Plotting helpers and progress bars shared by the notebooks.

Introduced in notebook 00: :func:`show_images` draws a grid of images with captions,
:func:`plot_curves` draws training curves, :func:`bar_chart` draws probabilities, and
:func:`progress` is the progress bar used for any work longer than a few seconds.
:func:`show_conversations` (chapter 8) draws images with questions and answers beside them, and
:func:`video_animation` (chapter 7) plays videos side by side.
"""

from __future__ import annotations

import os
import textwrap
from typing import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import checks

PLAIN_PROGRESS_ENV = "VLMLIB_PLAIN_PROGRESS"


class _PlainProgress:
    """A text progress report for executed notebooks: a few whole lines, not a redrawn bar."""

    def __init__(self, iterable, total, desc, every=0.25):
        self.iterable, self.desc = iterable, desc or "progress"
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.every, self.postfix, self.n = every, "", 0

    def set_postfix(self, **kwargs):
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def _line(self, start):
        import time
        elapsed = time.perf_counter() - start
        of = f"/{self.total}" if self.total else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} in {elapsed:.0f} s{extra}", flush=True)

    def __iter__(self):
        import time
        start, next_mark = time.perf_counter(), self.every
        for item in self.iterable:
            yield item
            self.n += 1
            if self.total and self.n < self.total and self.n / self.total >= next_mark:
                self._line(start)
                next_mark += self.every
        self._line(start)

    def __len__(self):
        return self.total or 0


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kwargs):
    """A progress bar: a widget in Jupyter and Colab, a text bar in terminals.

    With ``VLMLIB_PLAIN_PROGRESS=1`` (set by the book build and the tests) it prints a few whole
    lines instead (at 25%, 50%, 75% and the end), so executed notebooks store readable output.
    """
    if total is not None:
        total = checks.integer(total, "total", minimum=0)
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a string, got {desc!r}")
    if iterable is not None and not hasattr(iterable, "__iter__"):
        raise TypeError(f"iterable must be something to loop over (a range, a list...), got {type(iterable).__name__}")
    if os.environ.get(PLAIN_PROGRESS_ENV):
        if iterable is None:
            raise ValueError("plain progress needs an iterable")
        return _PlainProgress(iterable, total, desc)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, **kwargs)


def to_display(image) -> np.ndarray:
    """Turn an image (tensor or array, CHW or HWC, [0, 1] or [-1, 1]-ish) into an HWC array for imshow."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an image as a tensor or array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (3, H, W), got {image.shape}"
                         + ("; that is a batch: show_images draws a batch, or pass images[0]" if image.ndim == 4 else ""))
    if image.size == 0:
        raise ValueError(f"expected an image, got an empty array of shape {image.shape}")
    if image.dtype.kind not in "biuf":
        raise TypeError(f"expected an image of numbers, got dtype {image.dtype}")
    if image.dtype.kind == "f" and image.min() < -0.01:
        image = (image + 1) / 2          # from [-1, 1]
    return np.clip(image, 0, 1) if image.dtype.kind == "f" else image


def show_images(images, captions: Sequence[str] | None = None, ncols: int = 8, size: float = 1.6,
                title: str | None = None, wrap: int = 18, cmap: str | None = None):
    """Draw images in a grid, each with its caption underneath. Returns the figure.

    ``images`` is a batch (a tensor or array (N, ...)) or a list of images, each (H, W), (H, W, 3)
    or (3, H, W); ``captions`` is a list with one string per image.
    """
    if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise TypeError(f"images must be a batch (tensor or array) or a list of images, got {type(images).__name__}")
    images = list(images)
    if not images:
        raise ValueError("show_images needs at least one image")
    if captions is not None:
        if isinstance(captions, (str, np.str_)):
            raise TypeError(f"captions must be a list of strings, one per image, got one string {captions!r}; "
                            "wrap it in a list")
        captions = checks.text_list(captions, "captions")
        if len(captions) != len(images):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    ncols = checks.integer(ncols, "ncols", minimum=1)
    wrap = checks.integer(wrap, "wrap", minimum=1)
    size = checks.number(size, "size", low=0.0, low_open=True)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {title!r}")
    ncols = min(ncols, len(images))
    nrows = (len(images) + ncols - 1) // ncols
    lines = max((len(textwrap.wrap(c, wrap)) for c in captions), default=0) if captions else 0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.18 * lines) * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(to_display(images[i]), cmap=cmap, interpolation="nearest")
            if captions is not None:
                ax.set_title("\n".join(textwrap.wrap(captions[i], wrap)), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_conversations(images, dialogues: Sequence[Sequence[tuple]], ncols: int = 2, size: float = 1.7,
                       wrap: int = 42, title: str | None = None, fontsize: float = 9.0):
    """Draw each image with its conversation beside it. Returns the figure.

    ``dialogues[i]`` is a list of turns about image i, each ``(question, answer)`` or
    ``(question, answer, right)``: ``right`` True draws the answer green with ✓, False red with ✗
    (with the right answer after it when ``right`` is a string: the expected answer), None plain.
    """
    if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise TypeError(f"images must be a batch (tensor or array) or a list of images, got {type(images).__name__}")
    images = list(images)
    if not images:
        raise ValueError("show_conversations needs at least one image")
    if isinstance(dialogues, (str, bytes)) or not isinstance(dialogues, (list, tuple)) or len(dialogues) != len(images):
        raise ValueError(f"dialogues must be a list with one conversation per image ({len(images)}), got "
                         f"{len(dialogues) if isinstance(dialogues, (list, tuple)) else type(dialogues).__name__}")
    for i, turns in enumerate(dialogues):
        if isinstance(turns, (str, tuple)) or not isinstance(turns, list) or not all(
                isinstance(t, tuple) and len(t) in (2, 3) and all(isinstance(x, str) for x in t[:2]) for t in turns):
            raise TypeError(f"dialogues[{i}] must be a list of (question, answer) or (question, answer, right) "
                            f"tuples of strings, got {turns!r}")
    ncols = min(checks.integer(ncols, "ncols", minimum=1), len(images))
    size = checks.number(size, "size", low=0.0, low_open=True)
    wrap = checks.integer(wrap, "wrap", minimum=8)
    fontsize = checks.number(fontsize, "fontsize", low=0.0, low_open=True)
    nrows = (len(images) + ncols - 1) // ncols
    text_w = max(size * 2.6, wrap * fontsize * 0.55 / 72)       # room for a wrapped line
    height = size * 1.15
    step = fontsize * 1.3 / 72 / height                          # one line, as a fraction of the panel
    fig = plt.figure(figsize=((size + text_w) * ncols, height * nrows + (0.4 if title else 0)))
    grid = fig.add_gridspec(nrows, 2 * ncols, width_ratios=[size, text_w] * ncols)
    for i, (image, turns) in enumerate(zip(images, dialogues)):
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(grid[r, 2 * c])
        ax.imshow(to_display(image), interpolation="nearest")
        ax.axis("off")
        tx = fig.add_subplot(grid[r, 2 * c + 1])
        tx.axis("off")
        y = 0.98
        for turn in turns:
            q, a = turn[:2]
            right = turn[2] if len(turn) == 3 else None
            lines = textwrap.wrap("Q: " + q, wrap)
            tx.text(0.0, y, "\n".join(lines), va="top", fontsize=fontsize, transform=tx.transAxes)
            y -= step * len(lines)
            mark, colour = ("", "black") if right is None else (("✓ ", "tab:green") if right is True else ("✗ ", "tab:red"))
            answer = mark + "A: " + a + (f"  (right: {right})" if isinstance(right, str) else "")
            lines = textwrap.wrap(answer, wrap)
            tx.text(0.0, y, "\n".join(lines), va="top", fontsize=fontsize, color=colour, transform=tx.transAxes)
            y -= step * len(lines) + step / 3
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(history: Mapping[str, Sequence[float]], xlabel: str = "step", title: str | None = None,
                logy: Sequence[str] = ("loss",), smooth: int = 1, ax=None):
    """Plot training curves: one panel per group of keys ("loss", "accuracy"...). Returns the figure.

    Keys that contain ``loss`` share a panel; the others share a second panel. ``smooth`` averages
    over a moving window of that many points.
    """
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a dict of name -> list of values, got {type(history).__name__}")
    if not history:
        raise ValueError("history is empty: nothing to plot")
    series = {}
    for key, values in history.items():
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu()
        try:
            y = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"history[{key!r}] must be a list of numbers, got {str(values)[:60]}") from None
        if y.ndim != 1:
            raise ValueError(f"history[{key!r}] must be a flat list of numbers, got shape {y.shape}")
        series[str(key)] = y
    if isinstance(logy, str):
        logy = (logy,)
    logy = [checks.choice(g, "logy[]", ("loss", "metric")) for g in checks.text_list(logy, "logy")]
    smooth = checks.integer(smooth, "smooth", minimum=1)
    groups: dict[str, list[str]] = {}
    for key in series:
        groups.setdefault("loss" if "loss" in key else "metric", []).append(key)
    if ax is None:
        fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.4), squeeze=False)
        axes = list(axes.flat)
    else:
        fig, axes = ax.figure, [ax] * len(groups)
    for a, (group, keys) in zip(axes, groups.items()):
        for key in keys:
            y = series[key]
            if smooth > 1 and len(y) > smooth:
                y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            a.plot(np.arange(len(y)), y, label=key)
        if group in logy:
            a.set_yscale("log")
        a.set_xlabel(xlabel)
        a.set_ylabel(group if group == "loss" else "value")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str | None = None,
              highlight: int | None = None, xlabel: str = "probability", ax=None):
    """A horizontal bar chart, e.g. of class probabilities. Returns the axes."""
    labels = checks.text_list(labels, "labels")
    values = _numbers(values, "values")
    if values.ndim != 1:
        raise ValueError(f"values must be a flat list of numbers, got shape {values.shape}")
    if len(labels) != len(values):
        raise ValueError(f"got {len(labels)} labels but {len(values)} values")
    if not len(values):
        raise ValueError("bar_chart needs at least one bar")
    if not np.isfinite(values).all():
        raise ValueError(f"values must be finite numbers, got {values.tolist()}")
    if highlight is not None:
        highlight = checks.integer(highlight, "highlight", minimum=0, maximum=len(values) - 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.35 * len(labels) + 0.8))
    colours = ["tab:blue"] * len(values)
    if highlight is not None:
        colours[highlight] = "tab:orange"
    ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.figure.tight_layout()
    return ax


def heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], title: str | None = None,
            ax=None, fmt: str = "{:.0f}", cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None):
    """Draw a matrix as a heatmap with its values written in the cells. Returns the axes."""
    matrix = _numbers(matrix, "matrix", keep_dtype=True)
    if matrix.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {matrix.shape}")
    if matrix.size == 0:
        raise ValueError(f"heatmap needs a non-empty matrix, got shape {matrix.shape}")
    row_labels, col_labels = checks.text_list(row_labels, "row_labels"), checks.text_list(col_labels, "col_labels")
    for name, value in (("vmin", vmin), ("vmax", vmax)):
        if value is not None:
            checks.number(value, name)
    _check_format(fmt, "fmt", matrix.flat[0])
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix of shape {matrix.shape} does not match {len(row_labels)} row and "
                         f"{len(col_labels)} column labels")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.7 * len(col_labels) + 2, 0.45 * len(row_labels) + 1.2))
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    if matrix.size <= 400:
        lo, hi = np.nanmin(matrix), np.nanmax(matrix)
        for (i, j), v in np.ndenumerate(matrix):
            bright = (v - lo) / (hi - lo + 1e-12) > 0.6
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="black" if bright else "white")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.figure.tight_layout()
    return ax


def table(rows: Mapping[str, Mapping[str, object]], formats: Mapping[str, str] | None = None,
          first_column: str = ""):
    """Show ``{row name: {column: value}}`` as an HTML table (it renders in Jupyter, Colab and the book).

    ``formats`` maps a column to a format string such as ``"{:.1%}"``, or is one format string for
    every column; numbers are right-aligned and ``None`` is shown as a dash. Returns an
    ``IPython.display.HTML`` object (display it or end a cell with it).
    """
    from html import escape

    from IPython.display import HTML

    if not isinstance(rows, Mapping) or not rows or not all(isinstance(r, Mapping) for r in rows.values()):
        raise TypeError("rows must be a non-empty dict of {row name: {column: value}}")
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    if isinstance(formats, str):                 # one format for every column
        formats = dict.fromkeys(columns, formats)
    elif formats is not None and not isinstance(formats, Mapping):
        raise TypeError(f"formats must be a dict {{column: format string}} or one format string, "
                        f"got {type(formats).__name__}")
    formats = dict(formats or {})
    unknown = set(formats) - set(columns)
    if unknown:
        raise ValueError(f"formats name columns that no row has: {sorted(unknown)}; columns are {columns}")
    for column, fmt in formats.items():
        numbers = [r[column] for r in rows.values() if isinstance(r.get(column), (int, float, np.number))
                   and not isinstance(r.get(column), bool)]
        _check_format(fmt, f"formats[{column!r}]", numbers[0] if numbers else 0.5)
    pad = "padding:0.2em 0.7em"

    def cell(column, value):
        if value is None:
            return f'<td style="text-align:center;{pad}">–</td>'
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            text = formats.get(column, "{:.3g}").format(value)
            return f'<td style="text-align:right;{pad}">{escape(text)}</td>'
        return f'<td style="{pad}">{escape(str(value))}</td>'

    head = "".join(f'<th style="{pad}">{escape(str(c))}</th>' for c in [first_column] + columns)
    body = "".join(f'<tr><td style="{pad}">{escape(str(name))}</td>' + "".join(cell(c, r.get(c)) for c in columns)
                   + "</tr>" for name, r in rows.items())
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _numbers(values, name: str, keep_dtype: bool = False) -> np.ndarray:
    """A float array (or, with ``keep_dtype``, an array of numbers) from a list, an array or a tensor."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be numbers, got the string {values!r}")
    try:
        array = np.asarray(values) if keep_dtype else np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numbers (a list, an array or a tensor), got {str(values)[:80]}")
    return array


def _check_format(fmt, name: str, example) -> None:
    """``fmt`` is a format string such as ``"{:.2f}"`` that can format ``example``."""
    if not isinstance(fmt, str):
        raise TypeError(f"{name} must be a format string such as '{{:.2f}}', got {fmt!r}")
    try:
        fmt.format(example)
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise ValueError(f"{name} must be a format string such as '{{:.2f}}' for one number, got {fmt!r} ({err})") from None


def animation_html(anim):
    """A matplotlib animation as a self-contained HTML player (``to_jshtml``) that needs no network.

    Matplotlib's player links Font Awesome from a CDN for its button icons; the link is dropped so
    the page works offline (the book's theme ships Font Awesome itself). Returns ``IPython.display.HTML``.
    """
    import re

    from IPython.display import HTML
    from matplotlib.animation import Animation

    if not isinstance(anim, Animation):
        raise TypeError(f"expected a matplotlib Animation, got {type(anim).__name__}")
    html = anim.to_jshtml()
    html = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", html)
    return HTML(html)


def video_animation(videos, captions: Sequence[str] | None = None, paths=None, ncols: int = 4, size: float = 1.6,
                    interval: int = 150):
    """Videos as one animation that plays in the page (chapter 7): each a panel, all in step.

    ``videos`` is one video (F, 3, H, W) or a batch (N, F, 3, H, W) (tensor or array, [0, 1]);
    ``captions`` one string per video; ``paths`` optional trajectories (N, F, 2) (or (F, 2)) in
    pixels, drawn as a white trail up to the current frame. ``interval`` is the time per frame in
    milliseconds. Returns :func:`animation_html`'s HTML player.
    """
    from matplotlib import animation

    videos = _numbers(videos, "videos")
    if videos.ndim == 4:
        videos = videos[None]
    if videos.ndim != 5 or videos.shape[2] not in (1, 3) or 0 in videos.shape:
        raise ValueError(f"videos must have shape (F, 3, H, W) or (N, F, 3, H, W), got {videos.shape}")
    n, frames = videos.shape[:2]
    if not np.isfinite(videos).all():
        raise ValueError("videos hold NaN or infinite values")
    if captions is not None:
        captions = checks.text_list(captions, "captions", length=n)
    if paths is not None:
        paths = _numbers(paths, "paths")
        paths = paths[None] if paths.ndim == 2 else paths
        if paths.shape != (n, frames, 2):
            raise ValueError(f"paths must have shape ({n}, {frames}, 2), one (x, y) per frame of each video, "
                             f"got {paths.shape}")
    ncols = min(checks.integer(ncols, "ncols", minimum=1), n)
    size = checks.number(size, "size", low=0.0, low_open=True)
    interval = checks.integer(interval, "interval", minimum=1)
    nrows = (n + ncols - 1) // ncols
    lines = max((len(textwrap.wrap(c, 22)) for c in captions), default=0) if captions else 0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.16 * lines) * nrows), squeeze=False)
    shown, trails = [], []
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        shown.append(ax.imshow(to_display(videos[i, 0]), interpolation="nearest"))
        if captions is not None:
            ax.set_title("\n".join(textwrap.wrap(captions[i], 22)), fontsize=7)
        if paths is not None:
            trails.append(ax.plot(paths[i, :1, 0] - 0.5, paths[i, :1, 1] - 0.5, color="white", lw=1, alpha=0.8)[0])
    fig.tight_layout()

    def draw(f):
        for i in range(n):
            shown[i].set_data(to_display(videos[i, f]))
            if paths is not None:        # imshow puts pixel centres at integers: pixel (x, y) is drawn at x − 0.5
                trails[i].set_data(paths[i, :f + 1, 0] - 0.5, paths[i, :f + 1, 1] - 0.5)
        return shown + trails

    anim = animation.FuncAnimation(fig, draw, frames=frames, interval=interval, blit=False)
    html = animation_html(anim)
    plt.close(fig)
    return html
