# The two commands of the README, plus a few helpers. Each installs what it needs first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench bootstrap clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(BIN)/telemeter-stack

test: bootstrap lint typecheck
	$(BIN)/pytest -q

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: bootstrap
	$(BIN)/mypy

unit: bootstrap
	$(BIN)/pytest -q tests/unit

bench: bootstrap
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf build *.egg-info telemeter/_*.c telemeter/*.so .mypy_cache .ruff_cache .pytest_cache
