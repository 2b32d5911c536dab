# One entry point for every job. The first target that needs the virtual environment
# creates it from a bare Python and installs the package with its test and dev tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test check lint types schemas schemas-check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agentfsm demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check agentfsm tests bench
	$(BIN)/ruff format --check agentfsm tests bench

types: $(STAMP)
	$(BIN)/mypy agentfsm

schemas: $(STAMP)
	$(BIN)/agentfsm schema --write

schemas-check: $(STAMP)
	$(BIN)/agentfsm schema --check

check: lint types schemas-check test

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/stores.py
	$(BIN)/python bench/models.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
