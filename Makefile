# One entry point for every job. The virtual environment is built from a bare Python and the
# lock files in requirements/ (exact versions, each with its hashes), never from whatever was
# published last. `make lock` rewrites them from pyproject.toml; see "Contributing" in README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet
OLDEST := $(VENV)/oldest
COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --quiet

.PHONY: demo test test-oldest check lint types schemas schemas-check bench lock lock-upgrade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs the package, its dependencies and its build backend: nothing else.
$(VENV)/.demo: requirements/demo.txt pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes -r requirements/demo.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# Everything the tests, checks, benchmarks and `make lock` need.
$(VENV)/.dev: requirements/dev.txt pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes -r requirements/dev.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# The oldest versions pyproject.toml allows, in a folder that shadows them (make test-oldest).
$(OLDEST)/.installed: requirements/oldest.txt | $(VENV)/.dev
	rm -rf $(OLDEST)
	$(PIP) install --require-hashes --target $(OLDEST) -r requirements/oldest.txt
	touch $@

demo: $(VENV)/.demo
	$(BIN)/agentfsm demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest

# The whole suite again on the oldest supported pydantic, msgspec, transitions, httpx and
# psycopg, so the ranges in pyproject.toml are true (and the generated files identical).
test-oldest: $(OLDEST)/.installed
	PYTHONPATH=$(CURDIR)/$(OLDEST) $(BIN)/python -m pytest -p no:cacheprovider -q

lint: $(VENV)/.dev
	$(BIN)/ruff check agentfsm tests bench
	$(BIN)/ruff format --check agentfsm tests bench

types: $(VENV)/.dev
	$(BIN)/mypy agentfsm

schemas: $(VENV)/.dev
	$(BIN)/agentfsm schema --write

schemas-check: $(VENV)/.dev
	$(BIN)/agentfsm schema --check

check: lint types schemas-check test test-oldest

bench: $(VENV)/.dev
	$(BIN)/python bench/run.py
	$(BIN)/python bench/stores.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/decisions.py
	$(BIN)/python bench/sessions.py
	$(BIN)/python bench/inbox.py
	$(BIN)/python bench/tracing.py
	$(BIN)/python bench/kit.py
	$(BIN)/python bench/nested.py

# The oldest lock leaves out the mcp extra: the SDK needs pydantic>=2.12, which would lift the
# core's tested pydantic floor (2.7); the mcp tests skip there.
# Rewrite the locks after a change to pyproject.toml, keeping every pin that still fits;
# lock-upgrade moves every pin to the newest release allowed.
lock: $(VENV)/.dev
	$(COMPILE) $(UPGRADE) --extra postgres --extra otel --extra web --extra mcp --extra testing --group dev -o requirements/dev.txt
	$(COMPILE) --group build -c requirements/dev.txt -o requirements/demo.txt
	$(COMPILE) $(UPGRADE) --extra postgres --extra otel --extra web --extra testing --resolution lowest-direct -o requirements/oldest.txt

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
