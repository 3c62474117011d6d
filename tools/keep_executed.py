"""Keeps the notebooks that nbval executed, with their outputs, for the book build of the same run.

A pytest plugin, loaded by `make test-notebooks` (``-p tools.keep_executed``). nbval runs every code
cell of a notebook in a fresh kernel and keeps what the cell printed and displayed
in message order (taken before nbval merges all of a cell's prints into one block for its comparisons,
which would move text printed after a figure above it). Cells are sent to the kernel as Jupyter
sends them (with ``store_history=True``), so their outputs are what the book's own execution gives. When *every* cell of a notebook passed
(none failed, none skipped) and no cell sent a message nbval does not keep (``clear_output``,
``update_display_data``), this writes the notebook with those outputs to
``_build/executed/<path>.ipynb``. A copy left from an earlier run is deleted as soon as the notebook
is collected, so a failed or partial run leaves none.

The book build of `make test` (``COURSE_EXECUTED=_build/executed``) renders these copies instead of
executing the notebooks a second time; book/_ext checks that each copy's code is the notebook's
code, cell for cell, and executes any notebook without a matching copy. `make book` alone executes
every notebook as before.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
from nbval import kernel as nbval_kernel, plugin as nbval


ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "_build" / "executed"


def executed_copy(notebook: Path) -> Path:
    return EXECUTED / Path(notebook).resolve().relative_to(ROOT)


_NOT_KEPT = ("clear_output", "update_display_data")   # nbval drops these; the book's execution would not


class _Keeper:
    def __init__(self):
        self.raw: list | None = None                      # the current cell's outputs, as the kernel sent them
        self.unkept = False
        self.cells: dict[Path, dict[int, list]] = {}      # notebook -> {cell number: outputs} of passed cells
        self.spoiled: set[Path] = set()                   # notebooks with a failed or skipped cell
        self.expected: dict[Path, int] = {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            if hasattr(item, "cell_num") and hasattr(item, "test_outputs"):     # an nbval cell
                path = Path(str(item.fspath))
                self.expected[path] = self.expected.get(path, 0) + 1
        for path in self.expected:
            executed_copy(path).unlink(missing_ok=True)

    def coalesce_streams(self, outputs):
        """nbval's own function, called first on the cell's outputs: keep a copy of them, unmerged."""
        if self.raw is None:
            self.raw = copy.deepcopy(list(outputs))
        return _coalesce(outputs)

    def get_kernel_message(self, original, file, *args, **kwargs):
        msg = original(file, *args, **kwargs)
        if msg.get("msg_type") in _NOT_KEPT:
            self.unkept = True
        return msg

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        self.raw, self.unkept = None, False
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not hasattr(item, "cell_num"):
            return
        path = Path(str(item.fspath))
        if report.failed or report.skipped or (report.when == "call" and (self.raw is None or self.unkept)):
            self.spoiled.add(path)
        elif report.when == "call":
            self.cells.setdefault(path, {})[item.cell_num] = self.raw

    def pytest_sessionfinish(self, session):
        for path, count in self.expected.items():
            cells = self.cells.get(path, {})
            if path in self.spoiled or len(cells) != count:
                continue
            nb = nbformat.read(path, as_version=4)
            code = [c for c in nb.cells if c.cell_type == "code"]
            for number, cell in enumerate(code):
                cell.outputs = [nbformat.from_dict(dict(o)) for o in cells[number]]
                cell.execution_count = number + 1
            nbformat.validate(nb)
            target = executed_copy(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)


_coalesce = nbval.coalesce_streams


def _execute_as_jupyter_does(self, cell_input, allow_stdin=None):
    """nbval's own request with ``store_history=True``, as Jupyter and the book's execution send it.

    nbval sends ``store_history=False``; IPython then cannot see the cell's text when it decides
    whether a trailing ``;`` hides the cell's value, so such a cell would show its figure twice.
    """
    return self.kc.execute(cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False)


def pytest_configure(config):
    keeper = _Keeper()
    config.pluginmanager.register(keeper, "keep-executed-notebooks")
    nbval.coalesce_streams = keeper.coalesce_streams
    nbval_kernel.RunningKernel.execute_cell_input = _execute_as_jupyter_does
    original = nbval.IPyNbFile.get_kernel_message
    nbval.IPyNbFile.get_kernel_message = lambda file, *a, **k: keeper.get_kernel_message(original, file, *a, **k)
