# The two commands of the README:
#   make run    start the demo services and the gateway on plugins.toml
#   make test   run every test
#   make test-fast   every test but those marked slow (load, fuzzing, several processes, wheels), to iterate
#   make dist   a wheel and an sdist of every distribution (sdk, core, plugins/*) in dist/
# Each creates .venv (Python 3.11+) and installs the workspace into it first.
#   make lint   ruff (lint and format) and mypy, as CI runs them

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: run test test-fast install lint dist

# One line per step. PYTHONWARNINGS: setuptools' editable builds print a framed
# "Editable installation ... be careful with folders" notice per distribution that
# pip --quiet lets through; it is information only (our packages are not src-layout).
$(BIN)/bascule: sdk/pyproject.toml core/pyproject.toml $(PLUGINS)
	@echo "setup: virtualenv $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "setup: pip, setuptools, wheel"
	@$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	@echo "setup: sdk, core and plugins (editable), test and lint tools"
	@PYTHONWARNINGS='ignore:Editable installation' \
	$(BIN)/pip install --quiet -e sdk -e 'core[test]' $(addprefix -e ,$(dir $(PLUGINS))) \
		'ruff==0.17.6' 'mypy==2.4.1' build  # lint tools pinned: a new release may judge old code anew
	@touch $@

install: $(BIN)/bascule

# exec: python replaces the shell, so the SIGTERM that make passes on to its child
# (or a supervisor's, to the whole group) reaches the demo, which stops its services and the gateway.
CONFIG ?= plugins.toml
run: install
	exec $(BIN)/python examples/demo.py $(CONFIG)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Built without isolation by the virtualenv's setuptools: no download. Each sdist is built
# first and the wheel from it, so a file missing from an sdist fails here.
dist: install
	rm -rf dist
	@for d in sdk core $(dir $(PLUGINS)); do \
	  echo "dist: $$d"; \
	  out=$$($(BIN)/python -m build --no-isolation --outdir dist $$d 2>&1) || { echo "$$out"; exit 1; }; \
	done
	@ls dist

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
