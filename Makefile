# diffusion-gym: the two commands of the README, and the setup they share.
#   make run   - set up .venv (once) and run the main job: diffusion-gym run on the embedded Shapes world
#   make test  - set up .venv (once) and run the lint and the default test suite
#   make test-learning - the learning tests (every agent must learn on the Shapes world; a few minutes)
# CI (.ci/run) runs both.
# Setup is idempotent: it reruns only when pyproject.toml or this Makefile change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# These machines keep torch 2.14.1 / torchvision 0.29.1 on local disk (the only pairing in which torchvision
# imports here). On a GPU machine pick your own build, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN_ARGS ?= --agent ddpo
PYTEST_ARGS ?=

STAMP := $(VENV)/.diffusion-gym-setup

.PHONY: setup run test test-learning lint format clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev,imagereward]"
	# image-reward 1.5 pins an old transformers; install it without its deps (the extra above has what it imports)
	$(BIN)/pip install --quiet --no-deps "image-reward==1.5"
	touch $(STAMP)

run: setup
	$(BIN)/diffusion-gym run $(RUN_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-learning: setup
	$(BIN)/python -m pytest -m learning $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
