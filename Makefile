# scan-outbox: `make run` starts the stack, `make test` runs every test.
# Both create .venv and install the project on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-faults test-fast lint typecheck fmt bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run api, relay and worker on embedded PostgreSQL/Redis (or DATABASE_URL/REDIS_URL).
run: install
	$(BIN)/scanctl dev --data-dir .data

## Every test: unit, integration (real PostgreSQL + Redis) and end-to-end (three processes).
test: install
	$(BIN)/python -m pytest

## The fault suite alone: kills, freezes and server restarts under load, then the invariants.
test-faults: install
	$(BIN)/python -m pytest tests/faults

## Unit tests only: no servers.
test-fast: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## Benchmarks on their own embedded servers; writes bench/results/ (not part of make test).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench --readme

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
