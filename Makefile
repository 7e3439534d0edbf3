# The two commands of the README:
#   make run    start the demo services and the gateway on plugins.toml
#   make test   run every test
# Both create .venv (Python 3.11+) and install the workspace into it first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: run test install lint

$(BIN)/bascule: sdk/pyproject.toml core/pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e sdk -e 'core[test]' $(addprefix -e ,$(dir $(PLUGINS))) ruff build
	touch $@

install: $(BIN)/bascule

run: install
	$(BIN)/python examples/demo.py plugins.toml

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
