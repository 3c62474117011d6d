"""Where `make test`'s time goes: a per-stage and a per-notebook table, and a projection to twelve chapters.

Two roles:

- a pytest plugin (``-p tools.ci_report --timings NAME``) that writes each test's seconds (setup, call
  and teardown together) to ``_build/timings/NAME.json``; nbval's tests are a notebook's cells, so
  their sum per file is that notebook's run time, kernel start included;
- ``python -m tools.ci_report`` prints the tables from ``_build/timings/``: ``stages.tsv`` (written by
  tools/stage.sh), the pytest files and ``book.json`` (written by the book's extension, book/_ext).

The projection scales what grows with the chapters (notebook runs in every stage, unit and browser
tests) by ``CHAPTERS / notebooks now`` and keeps the rest (setting up the environment, the Colab-like
install, the book build's fixed part) as measured.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "_build" / "timings"
CHAPTERS = 12            # the course's chapters (notebooks 00 to 11)
BUDGET_S = 45 * 60       # the CI target for the whole `make test` on a fresh 2-core machine


# ---- the pytest plugin -------------------------------------------------------------------------

def pytest_addoption(parser):
    parser.addoption("--timings", metavar="NAME", default=None,
                     help="write each test's seconds to _build/timings/NAME.json (tools/ci_report)")


def pytest_configure(config):
    name = config.getoption("--timings")
    if name and not hasattr(config, "workerinput"):     # under pytest-xdist, the controller writes
        config.pluginmanager.register(_Recorder(TIMINGS / f"{name}.json"), "ci-report-recorder")


class _Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] += report.duration

    def pytest_sessionfinish(self, session):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"items": dict(self.seconds)}, indent=1))


# ---- the report ----------------------------------------------------------------------------------

def _notebook_of(nodeid: str) -> str | None:
    """The notebook a test belongs to: an nbval cell of it, or a test parametrised by its file name."""
    path = nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        return Path(path).name
    match = re.search(r"\[([^\]]*?\.ipynb)\]$", nodeid)
    return Path(match.group(1)).name if match else None


def _pytest_items(name: str) -> dict[str, float]:
    path = TIMINGS / f"{name}.json"
    return json.loads(path.read_text())["items"] if path.exists() else {}


def per_notebook(name: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for nodeid, seconds in _pytest_items(name).items():
        notebook = _notebook_of(nodeid)
        if notebook:
            totals[notebook] += seconds
    return dict(totals)


def _stages() -> list[tuple[str, float, int]]:
    path = TIMINGS / "stages.tsv"
    if not path.exists():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return [(name, float(seconds), int(status)) for name, seconds, status in rows]


def _book() -> dict[str, dict]:
    path = TIMINGS / "book.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _minutes(seconds: float) -> str:
    return f"{seconds:7.0f} s  ({seconds / 60:4.1f} min)"


def report() -> str:
    stages = _stages()
    lines = ["", "Time per stage of `make test`", ""]
    lines += [f"  {name:<14} {_minutes(seconds)}{'' if status == 0 else '  FAILED'}" for name, seconds, status in stages]
    total = sum(s for _, s, _ in stages)
    lines += [f"  {'total':<14} {_minutes(total)}", ""]

    nbval, student, book = per_notebook("notebooks"), per_notebook("colab"), _book()
    # The student copies run two at a time (pytest-xdist): a copy's share of the stage's wall time is
    # its own seconds scaled by the stage's wall time over the sum of its tests' seconds.
    colab_sum, colab_wall = sum(_pytest_items("colab").values()), dict((n, s) for n, s, _ in stages).get("colab")
    if colab_wall and colab_sum > colab_wall:
        student = {nb: s * colab_wall / colab_sum for nb, s in student.items()}
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    lines += [f"  {'seconds per notebook':<28} {'nbval':>7} {'book':>7}  {'(how)':<18} {'student':>7} {'total':>7}"]
    per_chapter = 0.0
    for nb in notebooks:
        entry = book.get(f"notebooks/{Path(nb).stem}", {})
        b = entry.get("seconds", 0.0)
        how = entry.get("how", "-")
        row = nbval.get(nb, 0.0) + b + student.get(nb, 0.0)
        per_chapter += row
        lines.append(f"  {nb:<28} {nbval.get(nb, 0.0):7.0f} {b:7.0f}  {how:<18} {student.get(nb, 0.0):7.0f} {row:7.0f}")
    if not stages:                  # a part of the suite run alone (the GPU workflow): no projection
        return "\n".join(lines[4:])

    if any(status != 0 for _, _, status in stages):
        return "\n".join(lines + ["", "A stage failed: no projection from a partial run."])
    seconds = {name: s for name, s, _ in stages}
    n = max(len(notebooks), 1)
    # what grows with the chapters: the notebooks' own time in every stage, the unit and browser tests
    growing = per_chapter + seconds.get("unit", 0.0) + seconds.get("browser", 0.0)
    fixed = max(total - growing, 0.0)
    projected = fixed + growing * CHAPTERS / n
    lines += [
        "",
        f"Per chapter: {per_chapter / n:.0f} s of notebook runs (nbval + book + student copy) and "
        f"{(growing - per_chapter) / n:.0f} s of unit and browser tests; the rest, {fixed:.0f} s, does not grow.",
        f"Projection for {CHAPTERS} chapters: {fixed:.0f} s + {CHAPTERS} x {growing / n:.0f} s = "
        f"{projected:.0f} s ({projected / 60:.1f} min; the target is {BUDGET_S / 60:.0f} min)"
        + ("." if projected <= BUDGET_S else ": OVER THE TARGET."),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    sys.exit(0)
