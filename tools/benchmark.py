"""The benchmark: speed and quality bars of the course, as one table.

    python -m tools.benchmark                 # everything; writes BENCHMARK.md
    python -m tools.benchmark --notebooks 00  # only some notebooks

It measures ShapesWorld's render rate (median of several runs), then executes each notebook in a
fresh kernel, in the book's order, with an artifact cache that starts empty and holds only what the
earlier chapters trained (so each chapter's own training is timed, not loaded; a chapter that
reuses an earlier chapter's model, as chapter 2 does chapter 1's ViTs, loads it, as it does for a
reader who goes through the book and in CI), and collects the values that the notebook measured
with `vlmlib.expect` / `vlmlib.record` / `vlmlib.stopwatch`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

from tools import course
from vlmlib.report import METRICS_ENV
from vlmlib.shapesworld import ShapesWorld

ROOT = course.ROOT
RENDER_BAR = 2000
#: Each chapter's run-time budget in seconds on a 2-core CPU (COURSE.md: about 3 minutes; the issues
#: give chapter 3 about 4). Chapter 5 also trains the judge on an empty cache (about 40 s).
RUN_TIME_BUDGET = {"03": 240, "05": 240, "06": 240}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def render_rate(max_shapes: int, n: int = 5000, repeats: int = 5) -> float:
    world = ShapesWorld(max_shapes=max_shapes, seed=0)
    world.sample(200, captions=None)                     # warm up
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        world.sample(n, seed=r, captions=None)
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def run_notebook(path: Path, cache: Path) -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        old = {k: os.environ.get(k) for k in ("VLMLIB_CACHE", METRICS_ENV, "VLMLIB_PLAIN_PROGRESS")}
        os.environ.update({"VLMLIB_CACHE": str(cache), METRICS_ENV: str(metrics),
                           "VLMLIB_PLAIN_PROGRESS": "1"})
        try:
            nb = nbformat.read(path, as_version=4)
            start = time.perf_counter()
            NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
            seconds = time.perf_counter() - start
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return seconds, rows


def fmt(value: float, unit: str) -> str:
    if unit.strip() == "s":
        return f"{value:.1f} s"
    if 0 <= value <= 1 and not unit:
        return f"{value:.1%}"
    return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:.3g}{unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default="all", help="comma-separated prefixes (e.g. 00,01), 'all' or 'none'")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARK.md"))
    args = parser.parse_args(argv)

    rows: list[tuple[str, str, str, str]] = []
    for k in (1, 3):
        rate = render_rate(k)
        rows.append(("ShapesWorld", f"render rate, {k} shape{'s' if k > 1 else ''} per image (median of 5)",
                     f"{rate:,.0f} images/s", f"≥ {RENDER_BAR:,} images/s"))
        print(rows[-1])
    selected = [] if args.notebooks == "none" else [
        p for p in course.notebooks() if args.notebooks == "all" or p.name.split("_")[0] in args.notebooks.split(",")]
    shared = tempfile.TemporaryDirectory()          # the cache of this run, shared by the chapters in order
    for path in selected:
        print(f"running {path.name} ...", flush=True)
        seconds, metrics = run_notebook(path, Path(shared.name) / "cache")
        chapter = path.stem
        budget = RUN_TIME_BUDGET.get(chapter.split("_")[0], 180)
        rows.append((chapter, "run time, top to bottom, cache of the earlier chapters only", f"{seconds:.0f} s",
                     f"≈ {budget} s or less"))
        for m in metrics:
            rows.append((chapter, m["name"], fmt(m["value"], m.get("unit", "")), m.get("bar", "") or "(reported)"))
        print(rows[-1], flush=True)

    table = ["| chapter | measurement | value | bar |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = (f"# Benchmark\n\nMeasured on {date.today().isoformat()} with `make benchmark` on: {machine()}.\n"
            f"Timings on a shared machine are noisy; rates are medians. Bars come from the chapters.\n\n"
            + "\n".join(table) + "\n")
    print("\n" + text)
    Path(args.output).write_text(text)
    print(f"written to {args.output}")
    shared.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
