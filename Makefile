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

# The main job: the seed's story as a scenario. Its home is one folder in the checkout,
# emptied at the start of each `make run` (so runs never pile up in /tmp) and kept after
# it, so the store can be looked at; `make clean` removes it.
RUN_HOME ?= $(CURDIR)/build/run-home

run: $(STAMP)
	@# Empty it only if it is a store (or nothing): a RUN_HOME=... typo must not wipe a folder.
	@if [ -e '$(RUN_HOME)' ] && [ ! -f '$(RUN_HOME)/ublox.db' ] && [ -n "$$(ls -A '$(RUN_HOME)')" ]; then \
		echo "make run: $(RUN_HOME) is not a ublox store; not emptying it" >&2; exit 2; fi
	@rm -rf '$(RUN_HOME)'
	$(BIN)/ublox-sim run scenarios/harmonic_caverns.yaml --home '$(RUN_HOME)'
	$(BIN)/ublox-sim verify --home '$(RUN_HOME)'
	@echo "make run: the store is in $(RUN_HOME) (emptied by the next make run, removed by make clean)"
	@echo "  look inside: $(BIN)/ublox-sim stats --home '$(RUN_HOME)'"

lint: $(STAMP)
	$(BIN)/ruff check ublox_sim tests
	$(BIN)/ruff format --check ublox_sim tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build/run-home
