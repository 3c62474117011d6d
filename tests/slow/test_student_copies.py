"""Each student copy runs top to bottom with every exercise left undone.

What a student meets who skips the exercises: no cell fails, each checker cell says that its
exercise is "waiting for you" and that the cells below use vlmlib's version, and no other cell says
anything about the exercises. The copies run against the shared artifact cache ($VLMLIB_CACHE),
which the notebook stage of `make test` fills just before: a student copy trains nothing the
notebook did not, so it costs about what the notebook costs with a warm cache.
"""

from __future__ import annotations

import json
import os
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from tools import course
from vlmlib.cache import cache_dir

pytestmark = pytest.mark.slow
# `make test-colab` runs two copies at a time (pytest-xdist, one per core): each kernel then gets one
# thread, since two kernels with two threads each on two cores run several times slower than one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
EXERCISE_TEXT = re.compile(r"Exercise \d+\.\d+|NotImplementedError|Traceback")


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for kind in ("text/plain", "text/markdown", "text/html"):
            data = out.get("data", {}).get(kind, "")
            parts.append("".join(data) if isinstance(data, list) else data)
        parts.extend(out.get("traceback", []))
    return "".join(parts)


# Instrumentation around the student copy (it changes nothing the notebook does): which artifacts
# the run had to build because the cache did not hold them.
RECORD = """import vlmlib.cache as _cache_
_built_, _save_ = [], _cache_.save_artifact
def _record_(artifact, *args, **kwargs):
    _built_.append(artifact.name)
    return _save_(artifact, *args, **kwargs)
_cache_.save_artifact = _record_
"""
REPORT = "import json as _json_; print('BUILT', _json_.dumps(_built_))"


@pytest.mark.parametrize("path", course.notebooks(), ids=lambda p: p.name)
def test_student_copy_runs_top_to_bottom_with_every_exercise_left_undone(path, tmp_path):
    nb = nbformat.read(course.STUDENT / path.name, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    stubs = [i for i in code if "exercise" in nb.cells[i].metadata.get("tags", [])]
    checks = {next(j for j in code if j > i): course.EXERCISE_RE.search(nb.cells[i].source).group(1) for i in stubs}
    warm = any(cache_dir().glob("*.json"))
    nb.cells = [nbformat.v4.new_code_cell(RECORD)] + nb.cells + [nbformat.v4.new_code_cell(REPORT)]
    start = time.perf_counter()
    # cwd outside the checkout, so nothing a notebook writes lands in student/
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    built = json.loads(_text(nb.cells.pop()).split("BUILT", 1)[1])
    nb.cells.pop(0)

    for i in code:
        said = _text(nb.cells[i])
        if i in checks:
            assert f"✎ {checks[i]} is waiting for you" in said, f"cell {i} should report {checks[i]} waiting:\n{said}"
            assert "the cells below use vlmlib's" in said, said
            assert "✓" not in said and "✗" not in said, said
        else:
            assert not EXERCISE_TEXT.search(said), f"cell {i} talks about an exercise:\n{nb.cells[i].source}\n{said}"
    if warm:   # the notebook stage filled the cache: the student copy computes what the notebook computed
        assert not built, (f"the student copy trained {built}, which the cache ({cache_dir()}) did not hold: run "
                           "the notebooks first (make test-notebooks), or the copy computes what its notebook does not")
