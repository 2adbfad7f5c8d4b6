# Set-up and main targets. `make run` and `make test` work from a fresh clone with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch is installed first so nothing later pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP = $(VENV)/bin/pip
STAMP = $(VENV)/.lowbit-installed

.PHONY: setup run test test-all lint bench clean hls4ml-check finn-check

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
	$(VENV)/bin/lowbit bench --out runs/bench
	$(VENV)/bin/python benchmarks/runtime_speed.py

# Accelerator toolchains (optional). hls4ml installs into the main venv (pure Python + g++).
hls4ml-check: $(STAMP)
	$(PIP) install --quiet -e ".[hls4ml]"
	$(VENV)/bin/python -m pytest -q -m slow tests/targets/test_hls4ml.py

# FINN lives in its own venv: finn-plus 1.6.1 pins onnx 1.21 / onnxruntime 1.25.1 / protobuf 5.29
# and brevitas==0.13.0 (which does not resolve next to torch 2.13), so it is installed --no-deps
# and its other requirements from requirements-finn.txt.
FINN_VENV ?= .venv-finn
FINN_STAMP = $(FINN_VENV)/.lowbit-finn-installed

$(FINN_STAMP): requirements-finn.txt pyproject.toml
	$(PYTHON) -m venv $(FINN_VENV)
	$(FINN_VENV)/bin/pip install --quiet --upgrade pip
	$(FINN_VENV)/bin/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(FINN_VENV)/bin/pip install --quiet --no-deps finn-plus==1.6.1
	$(FINN_VENV)/bin/pip install --quiet -r requirements-finn.txt "brevitas>=0.11"
	$(FINN_VENV)/bin/pip install --quiet --no-deps -e .
	$(FINN_VENV)/bin/pip install --quiet pillow scikit-image tqdm pytest hypothesis
	touch $(FINN_STAMP)

finn-check: $(FINN_STAMP)
	$(FINN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m slow tests/targets/test_finn.py

clean:
	rm -rf $(VENV) runs .pytest_cache
