# The README's two commands: `make demo` and `make test`. Both build a virtual environment in .venv
# from scratch if it is missing and install tensorwire into it (a real, non-editable install), again
# only when a source file, pyproject.toml or setup.py changed since the last install (a stamp file in
# the venv records it), so a second `make demo` starts the demo at once.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# What the installed package is built from. Generated files (fastpath/*.c, proto/inference.binpb) are
# left out: the install itself writes them.
SOURCES := $(shell find src server fastpath export proto bench -name '*.py' -o -name '*.pyx' -o -name '*.pxd' \
             -o -name '*.proto' 2>/dev/null) pyproject.toml setup.py

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-demo: $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install -q ".[cpu,export]"
	touch $@

$(VENV)/.installed-test: $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install -q ".[cpu,export,bench,test]"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/tensorwire demo

# Installs the system packages some tests need when it can (root or passwordless sudo; .ci/system-packages.sh);
# otherwise those tests skip with the reason.
test: $(VENV)/.installed-test
	@bash .ci/system-packages.sh
	$(BIN)/pytest

lint: $(BIN)/python
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info proto/inference.binpb fastpath/*.c fastpath/*.so model_repository
