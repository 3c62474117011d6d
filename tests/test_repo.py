"""The repository's own rules: notebooks stored clean, Colab links from the one setting, student
copies up to date, exact pins for local runs and ranges for Colab."""

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools import course

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = course.notebooks()
IDS = [p.name for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebooks_are_stored_without_outputs(path):
    nb = course.read(path)
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert dirty == [], f"{path.name}: cells {dirty} carry outputs; run `python -m tools.course strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_header_badge_and_first_cell_follow_the_one_setting(path):
    nb = course.read(path)
    header = course.source(nb["cells"][0])
    assert header.startswith("# "), "the first cell is the title"
    assert course.badge(path) in header, "the Colab badge is missing or stale: run `make sync`"
    for words in ("What you will learn", "Prerequisites", "Run time"):
        assert words in header, f"the header lacks '{words}'"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    text = course.source(first_code)
    assert course.install_line() in text and '"google.colab" in sys.modules' in text
    assert "vlmlib.setup(" in text
    assert course.synced(nb, path) == nb, "a badge or install line disagrees with _config.yml: run `make sync`"
    installs = sum(course.source(c).count("%pip install") for c in nb["cells"])
    assert installs == 1, "vlmlib is installed in the first code cell and nowhere else"


def test_every_notebook_is_in_the_table_of_contents_and_back():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {ch["file"] for part in toc["parts"] for ch in part["chapters"]}
    assert {f"notebooks/{p.stem}" for p in NOTEBOOKS} <= files
    for f in files | {toc["root"]}:
        assert (ROOT / f"{f}.ipynb").exists() or (ROOT / f"{f}.md").exists(), f"_toc.yml names a missing page {f}"


def test_colab_urls_derive_from_the_repository_setting():
    url, branch = course.repository()
    assert url.startswith("https://github.com/") and branch
    colab = course.colab_url(ROOT / "notebooks" / "x.ipynb")
    assert colab == f"https://colab.research.google.com/github/{url[19:]}/blob/{branch}/notebooks/x.ipynb"
    assert course.install_line() == f'%pip install -q "vlmlib @ git+{url}@{branch}"'


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_code_lines_fit_the_rendered_page(path):
    long = [line for c in course.read(path)["cells"] if c["cell_type"] == "code"
            for line in course.source(c).splitlines() if len(line) > 88 and "%pip install" not in line]
    assert long == [], f"{path.name}: code lines longer than 88 characters are cut off in the book: {long}"


SHOWN_ONLY_LAST = {"table", "Markdown", "HTML"}      # they return an object that Jupyter shows only at a cell's end


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_tables_and_markdown_are_shown_where_they_are_built(path):
    """``vlmlib.table(...)``, ``Markdown(...)`` and ``HTML(...)`` return what they draw: written as a
    statement anywhere but at the end of a cell, the reader never sees it (wrap it in ``display``)."""
    hidden = []
    for cell in course.read(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = [line for line in course.source(cell).splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            body = ast.parse("\n".join(lines)).body
        except SyntaxError:                          # the Colab install cell; nbval runs every cell anyway
            continue
        for statement in body[:-1]:
            call = statement.value if isinstance(statement, ast.Expr) else None
            if isinstance(call, ast.Call):
                name = getattr(call.func, "attr", getattr(call.func, "id", ""))
                if name in SHOWN_ONLY_LAST:
                    hidden.append(f"cell {cell.get('id')}, line {statement.lineno}: {name}(...)")
    assert hidden == [], f"{path.name}: built but never shown (not the cell's last statement): {hidden}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_solution_is_gated_and_followed_by_a_check(path):
    cells = course.read(path)["cells"]
    for i, cell in enumerate(cells):
        if course.SOLUTION_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        text = course.source(cell)
        assert course.EXERCISE_RE.search(text), f"cell {i}: a solution starts with '# Exercise N.M: ...'"
        assert "{solution-start}" in course.source(cells[i - 1]) and "{solution-end}" in course.source(cells[i + 1])
        assert ".check_" in course.source(cells[i + 2]), f"cell {i + 2} should check the exercise"


def test_student_copies_are_up_to_date():
    stale = [str(p.relative_to(ROOT)) for p, text in course.expected_files().items()
             if not p.exists() or p.read_text() != text]
    assert stale == [], f"regenerate the student copies with `make student`: {stale}"
    extra = {p.name for p in course.STUDENT.glob("*.ipynb")} - {p.name for p in NOTEBOOKS}
    assert not extra, f"student copies without a notebook: {extra}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copies_hold_stubs_not_solutions(path):
    master, student = course.read(path), course.read(course.STUDENT / path.name)
    solutions = [course.source(c) for c in master["cells"] if course.SOLUTION_TAG in c["metadata"].get("tags", [])]
    stubs = [course.source(c) for c in student["cells"] if "exercise" in c["metadata"].get("tags", [])]
    assert len(stubs) == len(solutions)
    for solution, stub in zip(solutions, stubs):
        ast.parse(stub)
        number = course.EXERCISE_RE.search(solution).group(1)
        assert re.search(rf"raise NotImplementedError\(['\"]{number}: ", stub)
        assert "{solution" not in json.dumps(student)
        body_lines = [l for l in solution.splitlines() if l.strip() and not l.lstrip().startswith(("#", "def ", '"""'))]
        assert not any(l in stub for l in body_lines if "import" not in l), "a stub gives the solution away"
    assert course.badge(course.STUDENT / path.name) in course.source(student["cells"][0])


def test_stub_generation_handles_functions_and_plain_statements():
    stub = course.stub_for('# Exercise 3.2: scale it\nimport numpy as np\n\n@staticmethod\ndef f(x, y=2):\n    """Doc."""\n    return x * y\n')
    assert "import numpy as np" in stub and "@staticmethod" in stub and '"""Doc."""' in stub
    assert "return x * y" not in stub and "raise NotImplementedError('Exercise 3.2: scale it')" in stub
    plain = course.stub_for("# Exercise 1.1: set the width\nwidth = 64\n")
    assert plain.strip().endswith("raise NotImplementedError('Exercise 1.1: set the width')") and "64" not in plain
    with pytest.raises(ValueError, match="must start with '# Exercise N.M"):
        course.stub_for("x = 1\n")


def test_requirements_pin_exactly_and_pyproject_gives_ranges():
    pins = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^\s=]+", l) for l in pins), "requirements.txt is a lock"
    names = {l.split("==")[0].lower(): l.split("==")[1] for l in pins}
    assert names["torch"] == "2.14.1" and names["torchvision"] == "0.29.1"
    assert names["jupyter-book"] == "1.0.4.post1" and names["sphinx-exercise"] == "1.2.1"
    for package in ("transformers", "diffusers", "tokenizers", "safetensors", "nbval", "pytest", "playwright",
                    "matplotlib", "jupyterlab", "scikit-image", "scikit-learn"):
        assert package in names, f"{package} is not pinned"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        assert "==" not in dep, f"pyproject.toml pins {dep}: Colab needs ranges"
        name = re.split(r"[<>=!~ ]", dep)[0].lower()
        assert name in names, f"{name} is a dependency of vlmlib but missing from requirements.txt"


def test_vlmlib_reads_no_files_of_the_repository():
    source = "\n".join(p.read_text() for p in (ROOT / "vlmlib").rglob("*.py"))
    assert "__file__" not in source and "parents[" not in source


def _pins() -> dict[str, str]:
    lines = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    return {canonicalize_name(l.split("==")[0]): l.split("==")[1] for l in lines}


#: Packages whose preinstalled Colab builds vlmlib uses as they are (see pyproject.toml and README).
COLAB_RUNTIME = {"torch", "numpy"}


def test_pyproject_promises_only_tested_versions():
    """Colab installs against pyproject's ranges: each is met by the pin CI tests, and starts at it."""
    pins = _pins()
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        pinned = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(pinned, prereleases=True), f"{dep} excludes the tested version {pinned}"
        if canonicalize_name(req.name) in COLAB_RUNTIME:
            continue        # Colab's own builds are kept; the README says their bounds are untested
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower == [pinned], f"{dep}: the lower bound should be the tested version {pinned} (see README)"


def _workflow(name: str) -> dict:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))       # YAML 1.1 reads the key `on` as true
    return workflow


def _steps(job: dict) -> tuple[list[str], list[str]]:
    return [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s], [s["run"] for s in job["steps"] if "run" in s]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_the_book_is_published_on_github_pages_as_jupyter_book_documents():
    workflow = _workflow("book.yml")
    assert "push" in workflow["on"] and workflow["on"]["push"]["branches"] == ["main"]
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    uses, runs = _steps(build)
    assert "make book" in _readme_commands() and runs == ["make book"], "the workflow builds with the README's command"
    assert uses == ["actions/checkout", "actions/setup-python", "actions/upload-pages-artifact"]
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert _steps(deploy)[0] == ["actions/deploy-pages"] and deploy["environment"]["name"] == "github-pages"
    assert "write" not in build.get("permissions", {}).values(), "the build job needs no write access"


def test_the_site_address_derives_from_the_repository_url():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    owner, repo = config["repository"]["url"].removeprefix("https://github.com/").split("/")
    assert config["html"]["baseurl"] == f"https://{owner}.github.io/{repo}/"


def test_the_gpu_workflow_runs_the_notebook_validation_with_the_gpu_budget():
    workflow = _workflow("notebooks-gpu.yml")
    assert list(workflow["on"]) == ["workflow_dispatch"], "started by hand: a GPU runner is not always there"
    job = workflow["jobs"]["notebooks"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"]) and job["env"]["VLMLIB_BUDGET"] == "gpu"
    runs = _steps(job)[1]
    assert "make test-notebooks" in runs and "make test-book" in runs
    test_recipe = re.search(r"^test:\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "test-notebooks" in test_recipe and "test-book" in test_recipe, "`make test` runs the same stages"
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"last measured on a GPU", readme), "the README says which figures were measured on a GPU"


def test_the_timing_report_adds_up_per_notebook_and_projects_twelve_chapters(tmp_path, monkeypatch):
    from tools import ci_report

    monkeypatch.setattr(ci_report, "TIMINGS", tmp_path)
    first, n = NOTEBOOKS[0].name, len(NOTEBOOKS)
    (tmp_path / "stages.tsv").write_text("environment\t100.0\t0\nunit\t20.0\t0\nnotebooks\t300.0\t0\n"
                                         "book\t50.0\t0\nbrowser\t10.0\t0\ncolab\t120.0\t0\n")
    (tmp_path / "notebooks.json").write_text(json.dumps({"items": {
        f"notebooks/{first}::Cell 0": 30.0, f"notebooks/{first}::Cell 1": 12.5}}))
    (tmp_path / "colab.json").write_text(json.dumps({"items": {
        f"tests/slow/test_fresh_install.py::test_student_copy_runs[{first}]": 7.5,
        "tests/slow/test_fresh_install.py::test_colab_like_fresh_install": 90.0}}))
    (tmp_path / "book.json").write_text(json.dumps({f"notebooks/{NOTEBOOKS[0].stem}": {"how": "nbval's outputs",
                                                                                        "seconds": 2.0}}))
    text = ci_report.report()
    row = next(line for line in text.splitlines() if line.strip().startswith(first))
    assert row.split()[1:] == ["42", "2", "nbval's", "outputs", "8", "52"]
    growing = 42.5 + 2 + 7.5 + 20 + 10            # the notebook's time in each stage, unit and browser tests
    fixed = 600 - growing
    assert f"{fixed:.0f} s + 12 x {growing / n:.0f} s = {fixed + growing * 12 / n:.0f} s" in text
    assert re.search(r"total +600 s", text)


def test_the_timing_report_gives_parallel_student_copies_their_share_of_the_wall_time(tmp_path, monkeypatch):
    from tools import ci_report

    monkeypatch.setattr(ci_report, "TIMINGS", tmp_path)
    first, second = NOTEBOOKS[0].name, NOTEBOOKS[1].name
    (tmp_path / "stages.tsv").write_text("environment\t100.0\t0\nunit\t20.0\t0\nnotebooks\t300.0\t0\n"
                                         "book\t50.0\t0\nbrowser\t10.0\t0\ncolab\t60.0\t0\n")
    (tmp_path / "colab.json").write_text(json.dumps({"items": {     # two workers: 120 s of tests in 60 s
        f"tests/slow/test_student_copies.py::test_student_copy[{first}]": 80.0,
        f"tests/slow/test_student_copies.py::test_student_copy[{second}]": 40.0}}))
    text = ci_report.report()
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip().startswith(("00_", "01_"))}
    assert rows[first][-2:] == ["40", "40"] and rows[second][-2:] == ["20", "20"]
    assert re.search(r"total +540 s", text)


def test_the_book_renders_an_executed_copy_only_if_it_is_the_notebook(tmp_path, monkeypatch):
    import importlib.util
    import types

    import nbformat

    spec = importlib.util.spec_from_file_location("course_book", ROOT / "book" / "_ext" / "course_book.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    source = tmp_path / "notebooks" / "n.ipynb"
    source.parent.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# N"), nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(nb, source)
    app = types.SimpleNamespace(srcdir=str(tmp_path), env=types.SimpleNamespace(doc2path=lambda d: str(tmp_path / f"{d}.ipynb")))
    executed = nbformat.reads(nbformat.writes(nb), as_version=4)
    executed.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    copy = tmp_path / "executed" / "notebooks" / "n.ipynb"
    copy.parent.mkdir(parents=True)
    nbformat.write(executed, copy)

    def render(environment):
        monkeypatch.setattr(ext.os, "environ", environment)
        text = [source.read_text()]
        ext._reuse_executed_copy(app, "notebooks/n", text)
        return nbformat.reads(text[0], as_version=4)

    assert render({})["cells"][1]["outputs"] == [], "make book alone executes the notebook itself"
    used = render({ext.EXECUTED_ENV: "executed"})
    assert used.cells[1].outputs[0]["text"] == "1\n" and used.metadata["mystnb"] == {"execution_mode": "off"}
    executed.cells[1].source = "print(2)"                   # the notebook changed after nbval ran it
    nbformat.write(executed, copy)
    stale = render({ext.EXECUTED_ENV: "executed"})
    assert stale.cells[1].outputs == [] and "mystnb" not in stale.metadata


def test_every_shipped_weight_file_is_package_data():
    """Colab installs vlmlib from git, not editable: a file the globs miss would not be installed."""
    import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vlmlib"]
    folder = ROOT / "vlmlib"
    missed = [str(p.relative_to(folder)) for p in (folder / "weights").rglob("*") if p.is_file()
              and not any(fnmatch.fnmatchcase(str(p.relative_to(folder)), g) and
                          str(p.relative_to(folder)).count("/") == g.count("/") for g in globs)]
    assert missed == [], f"add package-data globs to pyproject.toml for {missed}"
