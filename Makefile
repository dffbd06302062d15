# One command sets up and runs the main job; one sets up and passes the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the seed's story as a scenario, in a fresh temporary home.
run: $(STAMP)
	@home=$$(mktemp -d /tmp/ublox-run-XXXXXX)/ublox; \
	$(BIN)/ublox-sim run scenarios/harmonic_caverns.yaml --home $$home && \
	$(BIN)/ublox-sim verify --home $$home

lint: $(STAMP)
	$(BIN)/ruff check ublox_sim tests benchmarks
	$(BIN)/ruff format --check ublox_sim tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
