# One entry point for a fresh machine: `make run` (set up + main job) and `make test`.
# torch is installed first, pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

ZOO_VENV ?= .venv-zoo
ZOO_BIN  := $(ZOO_VENV)/bin
ZOO_STAMP := $(ZOO_VENV)/.installed

.PHONY: setup setup-zoo run test test-slow test-zoo lint bench clean

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

test: setup
	$(BIN)/python -m pytest

# The slow tests include a headless-browser check of the MLflow UI: it needs Chromium
# (Debian: apt-get install chromium) and is skipped without it unless CI is set.
test-slow: setup
	$(BIN)/python -m pytest -m slow

# The model zoo (tests/test_model_zoo.py) needs torchvision and timm. PyPI's torchvision for torch 2.13 does not
# import beside the CPU torch 2.13.0 wheel, so the zoo gets an environment of its own: torch 2.14.1 and
# torchvision 0.29.1 (a CUDA build that runs on the CPU, installed from the local wheels) and the project.
setup-zoo: $(ZOO_STAMP)

$(ZOO_STAMP): pyproject.toml
	test -x $(ZOO_BIN)/python || $(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_BIN)/python -m pip install -q --upgrade pip
	$(ZOO_BIN)/python -m pip install -q --progress-bar on torch==2.14.1 torchvision==0.29.1
	$(ZOO_BIN)/python -m pip install -q --progress-bar on -e '.[dev,zoo]'
	touch $(ZOO_STAMP)

test-zoo: setup-zoo
	$(ZOO_BIN)/python -m pytest -m zoo tests/test_model_zoo.py

lint: setup
	$(BIN)/ruff check automl envs agents search_spaces tests benchmarks

bench: setup
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/cost_speed.py
	$(BIN)/python benchmarks/env_speed.py

clean:
	rm -rf $(VENV) $(ZOO_VENV) *.egg-info .pytest_cache
