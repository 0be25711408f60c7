# Land-cover MLOps platform. `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

# Extra Hydra overrides for the data/training targets, e.g. make synthetic_data ARGS="data.synthetic.size=1024"
ARGS ?=

.PHONY: help
help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-30s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[inference,training,dev]'
	@touch $(STAMP)

.PHONY: setup_env
setup_env: $(STAMP) ## Create .venv and install everything (idempotent: seconds when up to date)

.PHONY: lint
lint: setup_env ## Lint and format-check with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: test
test: setup_env ## Run the whole test suite (the CI command)
	@# pytest exits 5 when it collects no tests: not a failure of the code.
	$(VENV)/bin/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

.PHONY: synthetic_data
synthetic_data: setup_env ## Generate the default synthetic dataset (train/val/test scenes) if missing
	$(PY) -m training.data.synthetic $(ARGS)

.PHONY: download_data
download_data: setup_env ## Download the real CVPR 2019 Chesapeake Land Cover release (needs internet)
	$(PY) -m training.data.download $(ARGS)

.PHONY: preview
preview: setup_env ## Write outputs/preview.png: a scene beside its label coloured by the class table
	@test -d data/synthetic || $(MAKE) synthetic_data
	$(PY) -m training.data.preview --out outputs/preview.png $(ARGS)

.PHONY: train_baseline
train_baseline: setup_env ## Train the baseline (Airflow in-process, or AIRFLOW_URL's Airflow) and promote if better
	$(PY) -m training.data.synthetic
	$(PY) -m training.airflow_runner baseline $(ARGS)

.PHONY: train
train: setup_env ## Run the training pipeline without Airflow: make train ARGS="model=clay_small training.epochs=3"
	$(PY) -m training.data.synthetic
	$(PY) -m training.train $(ARGS)
