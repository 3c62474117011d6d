"""Slow check of what a student meets on Colab: a fresh install.

A Colab-like run: a fresh virtual environment whose preinstalled packages are the scientific stack
(as Colab's are), `pip install` of the package itself (not editable), and notebook 00 executed from
a directory outside the checkout. (The student copies are checked in test_student_copies.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(VLMLIB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_colab_like_fresh_install_runs_notebook_00_outside_the_checkout(tmp_path):
    venv = tmp_path / "colab"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                              text=True).strip())
    # Colab comes with torch, numpy, matplotlib, transformers... preinstalled: lend ours, read-only.
    (fresh_site / "colab_preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _env(tmp_path)
    # Install from a copy holding only what the package ships (building in place would litter the checkout).
    source = tmp_path / "source"
    shutil.copytree(ROOT / "vlmlib", source / "vlmlib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation", str(source)], cwd=work,
                             env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    where = subprocess.check_output([str(python), "-c", "import vlmlib; print(vlmlib.__file__)"], cwd=work, env=env,
                                    text=True).strip()
    assert where.startswith(str(fresh_site)), f"vlmlib was imported from {where}, not from the fresh install"
    # chapter 5's checkpoint ships inside the package (Colab has no checkout to read it from)
    shipped = subprocess.run([str(python), "-c", "from vlmlib import diffusion as D; m, r = D.load_checkpoint(); "
                              "print(D.checkpoint_folder(), r['metrics']['train_steps'])"],
                             cwd=work, env=env, capture_output=True, text=True)
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    assert shipped.stdout.startswith(str(fresh_site)), f"the checkpoint was not installed: {shipped.stdout}"

    notebook = ROOT / "notebooks" / "00_shapesworld_tour.ipynb"
    script = (
        "import nbformat, sys\n"
        "from nbclient import NotebookClient\n"
        f"nb = nbformat.read({str(notebook)!r}, as_version=4)\n"
        "NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': '.'}}).execute()\n"
        "print('executed', sum(c.cell_type == 'code' for c in nb.cells), 'code cells')\n"
    )
    run = subprocess.run([str(python), "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "executed" in run.stdout
    assert list((tmp_path / "cache").glob("colour-reader-*.safetensors")), "the notebook's model was not cached"
