# The README's two commands. Both set up what they need and are fast the second time:
# the virtual environment is rebuilt only when pyproject.toml changes.
#   make run    a node with its web UI (ARGS="--home DIR --interface 127.0.0.1" to choose)
#   make test   the whole test suite (PYTEST_ARGS="-k name" to choose)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/lannode up $(ARGS)

system-deps:
	@sh tests/system-deps.sh

test: $(VENV)/.test-deps system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
