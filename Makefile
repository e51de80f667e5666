# irepa developer entry points. The two README commands are `make demo` and `make test`; both create .venv and
# install the pinned environment (constraints.txt) on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.irepa-installed
PYTEST_ARGS ?= -n auto

.PHONY: help install demo test lint pytest bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv with the pinned dev environment

demo: $(STAMP)  ## run the embedded end-to-end demo (offline, CPU, minutes)
	$(VENV)/bin/irepa demo

lint: $(STAMP)  ## ruff lint + format check
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

pytest: $(STAMP)  ## run the test suite (parallel over the CPU cores; PYTEST_ARGS= for serial)
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest  ## lint + tests (what CI runs)

bench: $(STAMP)  ## run the benchmarks and write benchmarks/results/*.json
	$(PY) benchmarks/run.py

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
