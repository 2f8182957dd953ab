# The one entry point for people and CI. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo report test test-all bench lint format up down clean browser-deps wheel-smoke

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: embedded servers, then the whole before-and-after story on `small` data (short runs)
DEMO_BENCH := --scale small --rate 40 --duration 10 --warmup 3 --repeat 8
demo: $(STAMP)
	$(BIN)/opskit up
	$(BIN)/opskit bench $(DEMO_BENCH) -o reports/demo.html

## report: the stakeholder report at `medium`: the story plus each mode's capacity ramp
REPORT_BENCH := --scale medium --rate 40 --duration 20 --warmup 5 --repeat 4 \
	--capacity --capacity-users-max 5000 --capacity-step 250 --capacity-step-seconds 20
report: $(STAMP)
	$(BIN)/opskit up
	$(BIN)/opskit bench $(REPORT_BENCH) -o reports/medium.html

## test: the default suite (no benchmarks) against real servers
test: $(STAMP) browser-deps
	$(BIN)/pytest -m "not bench" $(PYTEST_ARGS)

## bench: the benchmarks with speed targets (slow)
bench: $(STAMP)
	$(BIN)/pytest -m bench $(PYTEST_ARGS)

## wheel-smoke: build the wheel, install it without extras at every dependency's floor
## (.ci/floors.txt) into a fresh venv outside the checkout, run seed..report on embedded servers
wheel-smoke:
	PYTHON=$(PYTHON) .ci/wheel-smoke

## browser-deps: Debian's chromium, for the report's headless-browser test (needs root or sudo)
browser-deps:
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

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
