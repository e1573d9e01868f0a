# Convenience targets; the README's two commands work without make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: all build run test bench annotate clean

all: build

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

build: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

run: build
	$(BIN)/sorter demo --seconds 20

test: build
	$(BIN)/python -m pytest

bench: build
	$(BIN)/python -m bench --json bench/out/full.json --plot bench/plots

# HTML view of what in the core still touches Python (yellow lines).
annotate: $(BIN)/python
	$(BIN)/cython -a -3 sorter/core/_core.pyx -o /tmp/_core_annotated.c && mv sorter/core/_core.html . && echo "see _core.html"

clean:
	rm -rf build *.egg-info
	find sorter -name '*.c' -o -name '*.so' -o -name '*.html' | xargs rm -f
