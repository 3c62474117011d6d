"""A small Sphinx extension for this book's build.

Under Jupyter Book 1.0.4, the inline configuration scripts of sphinx-thebe and
sphinx-togglebutton end up twice on every page, and the browser then throws "Identifier
'THEBE_JS_URL' has already been declared". This drops exact duplicates from each page's scripts
when the page is rendered (the browser tests check that no page logs an error).
"""


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
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)   # early: a later handler may end the event
    return {"parallel_read_safe": True, "parallel_write_safe": True}
