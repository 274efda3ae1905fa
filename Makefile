# Two commands on a fresh machine: `make demo` and `make test`. Each creates (or reuses) .venv.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/ns-nifr-demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

.PHONY: install demo test
