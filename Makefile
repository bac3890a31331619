# One entry point for a fresh machine: `make run` (set up + main job) and `make test`.
# torch is installed first, pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: setup run test test-all test-slow lint bench docs results-pages clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "setup 1/3: virtual environment $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "setup 2/3: torch 2.13.0 (CPU build)"
	$(BIN)/python -m pip install -q --progress-bar on torch==2.13.0
	@echo "setup 3/3: automl-mpq and its dependencies"
	$(BIN)/python -m pip install -q --progress-bar on -e '.[dev,postgres]'
	touch $(STAMP)

# The reference network ships with the package (automl/weights), so this is the search itself.
run: setup
	$(BIN)/automl search

# Progress per test file, then the 15 slowest tests and the total time.
test: setup
	$(BIN)/python -m pytest --durations=15

# Everything CI runs: the default suite, then the slow tests.
test-all: test test-slow

# The slow tests include a headless-browser check of the MLflow UI: it needs Chromium
# (Debian: apt-get install chromium) and is skipped without it unless CI is set.
test-slow: setup
	$(BIN)/python -m pytest -m slow --durations=15

lint: setup
	$(BIN)/ruff check automl envs agents search_spaces tests benchmarks

# The documentation, built strictly into site/ (a broken link or a docstring naming a parameter the
# function lacks fails). Results pages are generated from docs/results/*.jsonl: see results-pages.
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,postgres,docs]'
	touch $(DOCS_STAMP)

docs: setup $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Every results page written again from its saved rows (benchmarks/results.py --regenerate).
results-pages: setup
	$(BIN)/python benchmarks/results.py --regenerate

bench: setup
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/cost_speed.py
	$(BIN)/python benchmarks/env_speed.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache site

# The highest supported torch (pyproject.toml states the range): a second environment with torch
# $(TORCH_LATEST) (the CUDA build from local disk, ~5.5 GB; it runs on the CPU), where installing
# the project must keep that torch, then the default suite (PYTEST_ARGS narrows it, e.g.
# PYTEST_ARGS=tests/test_device.py).
LATEST_VENV  ?= .venv-torch-latest
TORCH_LATEST ?= 2.14.1
PYTEST_ARGS  ?=

.PHONY: test-torch-latest

test-torch-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q --progress-bar on torch==$(TORCH_LATEST)
	$(LATEST_VENV)/bin/python -m pip install -q --progress-bar on -e '.[dev,postgres]'
	$(LATEST_VENV)/bin/python -c "import sys, torch; v = torch.__version__; ok = v.split('+')[0] == '$(TORCH_LATEST)'; \
	  print('torch', v, 'kept by the install' if ok else 'replaced by the install'); \
	  sys.exit(0 if ok else 'installing automl-mpq replaced torch $(TORCH_LATEST) with ' + v)"
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)
