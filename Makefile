# Quick start: `make run` starts the hub; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check bench clean demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/meridian serve --config meridian.yaml --channels channels --data var

demo: $(STAMP)
	$(BIN)/meridian demo

check: $(STAMP)
	$(BIN)/meridian check --channels channels

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy engine connectors admin ainode bench

test: $(STAMP) lint typecheck
	$(BIN)/meridian check --channels channels
	$(BIN)/pytest -q

# Every benchmark next to its anchor (~10 min on 2 cores); rewrites BENCHMARKS.md and bench/results/.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
