# Set-up and main targets. `make run` and `make test` work from a fresh clone with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch is installed first so nothing later pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP = $(VENV)/bin/pip
STAMP = $(VENV)/.lowbit-installed

.PHONY: setup run test test-all lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test,bench]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lowbit run

test: $(STAMP)
	$(VENV)/bin/ruff check lowbit tests benchmarks
	$(VENV)/bin/python -m pytest -q

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m ""

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/recipes.py
	$(VENV)/bin/python benchmarks/runtime_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
