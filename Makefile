# The one entry point for people and CI. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint format up down clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: start embedded servers, seed `small` data, print row counts
demo: $(STAMP)
	$(BIN)/opskit up
	$(BIN)/opskit seed --scale small --force
	$(BIN)/opskit env

## test: the default suite (no benchmarks) against real servers
test: $(STAMP)
	$(BIN)/pytest -m "not bench" $(PYTEST_ARGS)

## bench: the benchmarks with speed targets (slow)
bench: $(STAMP)
	$(BIN)/pytest -m bench $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check opskit tests
	$(BIN)/ruff format --check opskit tests

format: $(STAMP)
	$(BIN)/ruff format opskit tests
	$(BIN)/ruff check --fix opskit tests

up: $(STAMP)
	$(BIN)/opskit up

down: $(STAMP)
	$(BIN)/opskit down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
