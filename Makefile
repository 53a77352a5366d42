# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install concur, run the quick benchmark
#   make test   create .venv with the dev extras, run ruff, mypy and pytest
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/concur bench --quick

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests examples tools
	$(BIN)/ruff format --check src tests examples tools

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

test: lint typecheck pytest

# The full benchmarks against every peer, recorded in docs/ (about 45 minutes):
# pools and auto, then the server models.
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[plot,peers]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/concur bench --json docs/bench.json --plot docs/bench.png | tee docs/bench.txt
	$(BIN)/concur bench-server --json docs/bench-server.json | tee docs/bench-server.txt

clean:
	rm -rf $(VENV) .venv-* build src/*.egg-info .mypy_cache .ruff_cache
