# Connecting Language to the World: the commands of the README.
#   make book   build the rendered book into _build/html (sets everything up first)
#   make test   run the whole test suite (what CI runs)
#   make lab    open the notebooks in JupyterLab
# Each target creates .venv and installs requirements.txt the first time, and skips that when done.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Trained models are cached here, shared by the notebook tests and the book build.
export VLMLIB_CACHE ?= $(CURDIR)/.cache/vlmlib
# Notebooks executed for the tests and the book print plain-text progress bars, not widgets.
export VLMLIB_PLAIN_PROGRESS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help venv browser audio book test test-unit test-notebooks test-book test-browser test-colab lab student sync benchmark lock clean

help:
	@sed -n '2,5p' Makefile

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	@touch $(STAMP)
	@echo "Environment ready in $(VENV)."

venv: $(STAMP)

# Chromium for the browser tests (Debian's package; needs root or sudo the first time).
browser:
	@bash tools/install_chromium.sh

# eSpeak NG, the speech synthesiser of chapter 9 (Debian's package; needs root or sudo the first time).
audio:
	@bash tools/install_espeak.sh

# The book, strictly: warnings are errors, and so is an error in any notebook cell.
JB_BUILD := $(BIN)/jupyter-book build . -W -n --keep-going
# Each pytest stage of `make test` writes its tests' seconds to _build/timings/ (tools/ci_report.py).
PYTEST := $(BIN)/python -m pytest -p tools.ci_report

book: venv audio
	$(JB_BUILD)
	@echo "The book is built: open $(CURDIR)/_build/html/index.html"

# Two workers (pytest-xdist), one torch thread each: on two cores that beats one worker with two
# threads, since most tests are small and single-threaded.
test-unit: venv audio
	OMP_NUM_THREADS=1 $(PYTEST) --timings unit -q -n 2 tests --ignore=tests/browser --ignore=tests/slow

# nbval executes every notebook in a fresh kernel; tools/keep_executed.py keeps each notebook whose
# cells all passed, with its outputs, in _build/executed/ for test-book.
test-notebooks: venv audio
	$(PYTEST) --timings notebooks -p tools.keep_executed -q --nbval-lax --nbval-current-env -p no:randomly notebooks

# The book as `make book` builds it, from every page again (--all), rendering the notebooks that
# test-notebooks just executed instead of executing them twice (book/_ext checks each copy is the
# notebook; one without a matching copy is executed).
test-book: venv
	COURSE_EXECUTED=_build/executed $(JB_BUILD) --all

test-browser: venv browser
	$(PYTEST) --timings browser -q tests/browser

# Two at a time (pytest-xdist): the student copies run with a warm cache, so they only read it.
test-colab: venv
	$(PYTEST) --timings colab -q -n 2 tests/slow

# Every stage, timed; the tables of where the time went (per stage, per notebook) and the projection
# to twelve chapters are printed at the end (and after a failed stage).
STAGE := tools/stage.sh
test:
	@rm -rf _build/timings
	@$(STAGE) environment $(MAKE) --no-print-directory venv browser audio
	@$(STAGE) unit $(MAKE) --no-print-directory test-unit
	@$(STAGE) notebooks $(MAKE) --no-print-directory test-notebooks
	@$(STAGE) book $(MAKE) --no-print-directory test-book
	@$(STAGE) browser $(MAKE) --no-print-directory test-browser
	@$(STAGE) colab $(MAKE) --no-print-directory test-colab
	@$(BIN)/python -m tools.ci_report
	@echo "All test stages passed."

lab: venv audio
	$(BIN)/jupyter lab notebooks

student: venv
	$(BIN)/python -m tools.course student

sync: venv
	$(BIN)/python -m tools.course sync

benchmark: venv
	$(BIN)/python -m tools.benchmark

# Rewrite requirements.txt from what .venv holds now (after installing a new version on purpose).
lock: venv
	{ sed -n '/^#/p' requirements.txt; $(BIN)/python -m pip freeze --exclude-editable | sort -f; } > requirements.txt.new
	mv requirements.txt.new requirements.txt

clean:
	rm -rf _build .cache
