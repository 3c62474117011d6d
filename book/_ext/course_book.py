"""A small Sphinx extension for this book's build.

1. The notebooks executed by the notebook tests are reused (`make test`). With
``COURSE_EXECUTED=<folder>`` set, a notebook whose executed copy is in that folder (written by
tools/keep_executed.py while nbval ran it) is rendered from that copy, with myst-nb's execution off
for it, so the build does not run it a second time. The copy is used only if, outputs aside, it is
the notebook itself (every cell's type, source and metadata, and the notebook's metadata); any
other notebook is executed as usual. Without the variable (`make book`) every notebook is executed.

2. Seconds per page (reading, which includes executing a notebook) and how each notebook got its
outputs are written to ``_build/timings/book.json`` for tools/ci_report.

3. Under Jupyter Book 1.0.4, the inline configuration scripts of sphinx-thebe and
sphinx-togglebutton end up twice on every page, and the browser then throws "Identifier
'THEBE_JS_URL' has already been declared". This drops exact duplicates from each page's scripts
when the page is rendered (the browser tests check that no page logs an error).
"""

import json
import os
import time
from pathlib import Path

import nbformat
from sphinx.util import logging

EXECUTED_ENV = "COURSE_EXECUTED"
logger = logging.getLogger(__name__)
_started: dict[str, float] = {}
_timings: dict[str, dict] = {}


def _shape(nb) -> tuple:
    return (nb.metadata, [(c.cell_type, c.source, c.metadata) for c in nb.cells])


def _reuse_executed_copy(app, docname, source):
    _started[docname] = time.perf_counter()
    folder = os.environ.get(EXECUTED_ENV)
    path = Path(app.env.doc2path(docname))
    if not folder or path.suffix != ".ipynb":
        return
    copy = Path(app.srcdir) / folder / path.relative_to(app.srcdir)
    how = "executed (no nbval copy)"
    if copy.exists():
        executed = nbformat.reads(copy.read_text(encoding="utf8"), as_version=4)
        if _shape(executed) == _shape(nbformat.reads(source[0], as_version=4)):
            executed.metadata.setdefault("mystnb", {})["execution_mode"] = "off"
            source[0] = nbformat.writes(executed)
            how = "nbval's outputs"
        else:
            how = "executed (stale nbval copy)"
    if how != "nbval's outputs":
        logger.info(f"{docname}: no matching notebook executed by the tests in {folder}; executing it")
    _timings[docname] = {"how": how}


def _time_page(app, doctree):
    docname = app.env.docname
    if docname in _started:
        entry = _timings.setdefault(docname, {"how": "executed" if docname.startswith("notebooks/") else "page"})
        entry["seconds"] = round(time.perf_counter() - _started.pop(docname), 1)


def _write_timings(app, exception):
    if exception is None and _timings:
        path = Path(app.outdir).parent / "timings" / "book.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_timings, indent=1))


class _UniqueScripts(list):
    """A view of the page's script list that yields each distinct script once."""

    def __init__(self, scripts):
        super().__init__()
        self._scripts = scripts            # the builder's list, which later handlers may still extend

    def __iter__(self):
        seen = set()
        for js in self._scripts:
            key = (str(getattr(js, "filename", js) or ""), tuple(sorted(getattr(js, "attributes", {}).items())))
            if key not in seen:
                seen.add(key)
                yield js

    def __len__(self):
        return sum(1 for _ in self)


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    if isinstance(context.get("script_files"), list):
        context["script_files"] = _UniqueScripts(context["script_files"])


def setup(app):
    app.connect("source-read", _reuse_executed_copy)
    app.connect("doctree-read", _time_page)
    app.connect("build-finished", _write_timings)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)   # early: a later handler may end the event
    return {"parallel_read_safe": True, "parallel_write_safe": True}
