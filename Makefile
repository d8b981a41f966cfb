# The README's two commands: `make demo` and `make test`. Both build a virtual environment in .venv
# from scratch if it is missing and install tensorwire into it (a real, non-editable install).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

demo: $(BIN)/python
	$(BIN)/python -m pip install -q ".[cpu,export]"
	$(BIN)/tensorwire demo

test: $(BIN)/python
	$(BIN)/python -m pip install -q ".[cpu,export,bench,test]"
	$(BIN)/pytest

lint: $(BIN)/python
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info proto/inference.binpb fastpath/_wire.c fastpath/_wire*.so model_repository
