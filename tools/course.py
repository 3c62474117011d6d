"""Maintenance commands for the course's notebooks.

    python -m tools.course sync      # Colab badges and install lines from _config.yml's repository
    python -m tools.course student   # regenerate the student copies in student/
    python -m tools.course strip     # remove outputs and execution counts from notebooks/

The repository URL and branch in ``_config.yml`` are the one setting that the Colab badge of every
notebook, its first cell's install line and the book's launch buttons derive from.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
STUDENT = ROOT / "student"
BADGE_IMAGE = "../book/images/colab-badge.svg"
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
INSTALL_RE = re.compile(r'%pip install -q "vlmlib @ git\+[^"]*"')
SOLUTION_TAG = "solution"
EXERCISE_RE = re.compile(r"^#\s*(Exercise\s+\d+\.\d+)\s*[:.—-]\s*(.+)$", re.M)
FALLBACK_IMPORT = "from vlmlib.exercises import fallback"


# -- the one setting ------------------------------------------------------------------------------
def repository() -> tuple[str, str]:
    """(url, branch) of the course repository, from _config.yml."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def colab_url(path: Path) -> str:
    url, branch = repository()
    github = url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{github}/blob/{branch}/{path.relative_to(ROOT).as_posix()}"


def badge(path: Path) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(path)})"


def install_line() -> str:
    url, branch = repository()
    return f'%pip install -q "vlmlib @ git+{url}@{branch}"'


# -- notebook I/O -----------------------------------------------------------------------------------
def read(path: Path) -> dict:
    return json.loads(path.read_text())


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def set_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


# -- sync --------------------------------------------------------------------------------------------
def synced(nb: dict, path: Path) -> dict:
    """The notebook with its badge and install line made to agree with _config.yml."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        text = source(cell)
        if cell["cell_type"] == "markdown" and BADGE_RE.search(text):
            set_source(cell, BADGE_RE.sub(lambda m: badge(path), text))
        elif cell["cell_type"] == "code" and INSTALL_RE.search(text):
            set_source(cell, INSTALL_RE.sub(lambda m: install_line(), text))
    return nb


def stripped(nb: dict) -> dict:
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    return nb


# -- student copies -------------------------------------------------------------------------------
def stub_for(code: str) -> str:
    """Replace a solution cell's code by a stub that parses and raises NotImplementedError.

    The cell's first line must be ``# Exercise N.M: what to do``. Functions keep their signature and
    docstring; their bodies become the ``raise``, and ``@fallback("N.M")`` lets later cells run on
    with vlmlib's version while the exercise waits. A cell without functions (one that sets values)
    becomes the ``raise`` inside a ``with fallback("N.M"):`` block, which sets vlmlib's values instead.
    """
    match = EXERCISE_RE.search(code)
    if not match:
        raise ValueError(f"a solution cell must start with '# Exercise N.M: what to do', got:\n{code[:200]}")
    message = f"{match.group(1)}: {match.group(2).strip()}"
    number = match.group(1).split()[-1]
    tree = ast.parse(code)
    lines = code.splitlines()
    out = [match.group(0)]
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.extend(lines[node.lineno - 1: node.end_lineno])
    out.append(FALLBACK_IMPORT)
    for node in functions:
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        body = node.body
        has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str)
        keep_to = body[0].end_lineno if has_doc else body[0].lineno - 1
        indent = " " * body[0].col_offset
        out.extend(["", "", f'@fallback("{number}")  # while this waits, later cells use vlmlib\'s {node.name}'])
        out.extend(lines[first - 1: keep_to])
        out.append(f"{indent}# Your code here")
        out.append(f"{indent}raise NotImplementedError({message!r})")
    if not functions:
        names = [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
        out.extend(["", f'with fallback("{number}"):  # while this waits, later cells use vlmlib\'s '
                        f'{", ".join(names) or "values"}',
                    "    # Your code here", f"    raise NotImplementedError({message!r})"])
    stub = "\n".join(out).strip() + "\n"
    ast.parse(stub)   # a stub must always parse
    return stub


_EXERCISE_BLOCK = re.compile(r"^(`{3,}|:{3,})\{exercise\}[ \t]*(.*?)\n(.*?)^\1[ \t]*$", re.S | re.M)


def _plain_exercise(text: str) -> str:
    """Turn MyST ``{exercise}`` blocks into plain Markdown that Jupyter and Colab render."""
    def plain(m: re.Match) -> str:
        body = "\n".join(line for line in m.group(3).splitlines() if not line.startswith(":")).strip()
        return f"**Exercise: {m.group(2).strip()}**\n\n{body}"
    return _EXERCISE_BLOCK.sub(plain, text)


def student_copy(nb: dict, path: Path) -> dict:
    """The notebook with solutions removed: stubs instead of solution cells, no solution markers."""
    nb = stripped(nb)
    cells = []
    for cell in nb["cells"]:
        text = source(cell)
        if cell["cell_type"] == "markdown" and re.match(r"^(`{3,}|:{3,})\{solution-(start|end)\}", text.strip()):
            continue
        if cell["cell_type"] == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            cell = copy.deepcopy(cell)
            set_source(cell, stub_for(text))
            cell["metadata"]["tags"] = [t for t in cell["metadata"]["tags"] if t != SOLUTION_TAG] + ["exercise"]
        elif cell["cell_type"] == "markdown":
            set_source(cell, _plain_exercise(text))
        cells.append(cell)
    nb["cells"] = cells
    student_path = STUDENT / path.name
    return synced(nb, student_path)


def expected_files() -> dict[Path, str]:
    """Every generated file and the text it should hold."""
    files = {}
    for path in notebooks():
        files[STUDENT / path.name] = dumps(student_copy(read(path), path))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "student", "strip"])
    args = parser.parse_args(argv)
    if args.command in ("sync", "strip"):
        for path in notebooks():
            nb = read(path)
            new = stripped(nb) if args.command == "strip" else synced(nb, path)
            if new != nb:
                path.write_text(dumps(new))
                print(f"updated {path.relative_to(ROOT)}")
    if args.command in ("sync", "student"):
        STUDENT.mkdir(exist_ok=True)
        expected = expected_files()
        for path, text in expected.items():
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
        for path in STUDENT.glob("*.ipynb"):
            if path not in expected:
                path.unlink()
                print(f"removed {path.relative_to(ROOT)} (its notebook is gone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
