# Land-cover MLOps platform. `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/landcover
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

# moto's Step Functions parser needs antlr4 4.13, Hydra pins 4.9: the 4.13 runtime lives apart
# and setup/tools/moto_shim.py swaps it in for the duration of a local run.
SFN_ANTLR4 := .cache/sfn-antlr4
$(SFN_ANTLR4)/antlr4/__init__.py: | $(STAMP)
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(SFN_ANTLR4) antlr4-python3-runtime==4.13.2

.PHONY: setup_env
setup_env: $(STAMP) $(SFN_ANTLR4)/antlr4/__init__.py ## Create .venv and install everything (idempotent: seconds when up to date)

.PHONY: lint
lint: setup_env ## Lint and format-check with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: test
test: setup_env iac_tools browser lint ## Lint, then run the whole test suite (the CI command)
	@# pytest exits 5 when it collects no tests: not a failure of the code.
	$(VENV)/bin/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

.PHONY: test-fast
test-fast: setup_env iac_tools browser lint ## Lint, then the suite without the tests marked slow
	$(VENV)/bin/pytest -q -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

.PHONY: lambda_requirements
lambda_requirements: setup_env ## Re-lock the Lambda image's packages (pyproject's inference extra) for x86_64 and arm64 with hashes
	$(PY) setup/lambda_requirements.py

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
	$(CLI) train baseline $(ARGS)

.PHONY: train
train: setup_env ## Run the training pipeline without Airflow: make train ARGS="model=clay_small training.epochs=3"
	$(PY) -m training.data.synthetic
	$(CLI) train --no-airflow $(ARGS)

.PHONY: pretrain
pretrain: setup_env ## Continued pretraining of the encoder (Clay's masked autoencoder) -> an encoder version in the registry (ARGS="pretrain.steps=100")
	$(PY) -m training.data.synthetic
	$(CLI) pretrain $(ARGS)

# --- Observability: Grafana provisioning, the static report, the headless browser ---

.PHONY: browser
browser: ## Install Debian's headless Chromium (for the report test) if /usr/bin/chromium is missing
	@if [ -x /usr/bin/chromium ]; then \
	  echo "chromium present: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium fonts-dejavu-core; \
	fi

.PHONY: dashboards
dashboards: setup_env ## Regenerate observability/grafana/dashboards/*.json from the panel SQL (observability/panels.py)
	$(PY) -m observability.build_dashboards

.PHONY: promote_challenger
promote_challenger: setup_env ## Promotion gate for the registry's challenger with its shadow evidence from the ledger (ARGS="training.shadow.min_scenes=20")
	$(CLI) promote-challenger $(ARGS)

REPORT ?= outputs/report.html
.PHONY: report
report: setup_env ## Write outputs/report.html: the Grafana panels' SQL run on the ledger, as a static HTML report
	$(CLI) report --out $(REPORT) $(ARGS)

GRAFANA_URL ?= http://localhost:3000
.PHONY: setup_inference_observability
setup_inference_observability: env_file ## Start Grafana (docker compose) on the ledger: datasource, dashboards, alerts provisioned
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then \
	  docker compose up -d --wait grafana && \
	  echo "Grafana is up: $(GRAFANA_URL)  login admin, password GRAFANA_ADMIN_PASSWORD in $(ENV_FILE)" && \
	  echo "Dashboard 'Land cover inference' (folder 'Land cover'); alert rules under Alerting > Alert rules."; \
	else \
	  echo "No Docker engine available here: Grafana cannot start."; \
	  echo "Building the embedded equivalent instead: the static report from the same SQL ($(REPORT))."; \
	  echo "(With Docker: docker compose up -d grafana, then $(GRAFANA_URL), login admin, password GRAFANA_ADMIN_PASSWORD in $(ENV_FILE).)"; \
	  $(MAKE) --no-print-directory report; \
	fi

.PHONY: run_inference
run_inference: setup_env ## Run the inference state machine locally (moto interpreter + real handlers); ARGS="--ledger-url ... --s3-prefix ... overrides"
	$(CLI) infer run $(ARGS)

# Scale runs (issue: real-size scenes), each in its own folders and ledger under outputs/.
SCALE_DIR := $(CURDIR)/outputs/scale
SCALE_ARGS := --ledger-url sqlite:///$(SCALE_DIR)/ledger.db inference.input_uri=file://$(SCALE_DIR)/input inference.output_uri=file://$(SCALE_DIR)/predictions

.PHONY: scale_run
scale_run: setup_env ## One 6,000 x 7,000 px (40 km²-class) synthetic scene through the local state machine in many blocks, with the large preset's Lambda figures (ARGS=...)
	$(CLI) infer run --scene-size 6000x7000 $(SCALE_ARGS) inference.block_chips=8 $(ARGS)

.PHONY: load_run
load_run: setup_env ## 200 small synthetic scenes in one execution: each predicted exactly once, exact totals, flat memory (ARGS=...)
	rm -rf $(SCALE_DIR)/load
	$(CLI) infer run --load 200 --size 256 --ledger-url sqlite:///$(SCALE_DIR)/load/ledger.db inference.input_uri=file://$(SCALE_DIR)/load/input inference.output_uri=file://$(SCALE_DIR)/load/predictions $(ARGS)

.PHONY: upload_and_run_inference
upload_and_run_inference: setup_env ## Drop N new synthetic scenes into the input prefix; uploads of one window coalesce into one run, as S3 triggers do (ARGS="--scenes 3 --interval 10 --window 60")
	$(CLI) infer upload $(ARGS)

# --- Training stack: the Airflow UI without Docker, and the docker compose stack ---

AIRFLOW_PORT ?= 8080
.PHONY: airflow_ui
airflow_ui: setup_env ## Airflow standalone on 127.0.0.1:$AIRFLOW_PORT (default 8080) without Docker; prints the URL and login
	$(CLI) airflow-ui --port $(AIRFLOW_PORT)

# The compose stack's secrets: docker compose reads .env (untracked, 0600) and refuses to start
# without it. Generated once with random values; an existing file is never overwritten.
ENV_FILE := .env
.PHONY: env_file
env_file: ## Write .env (mode 0600) with random secrets for the compose stack, unless it exists
	@python3 -m setup.compose_env --env-file $(ENV_FILE)

# Fails with a clear message unless the docker CLI, its compose plugin and an engine are all there.
define require_docker
	@command -v docker >/dev/null 2>&1 || { echo "No docker CLI found: the compose stack needs Docker (docker.com)."; \
	  echo "Without Docker: 'make airflow_ui' (Airflow UI) or 'make train_baseline' (in-process)."; exit 1; }
	@docker compose version >/dev/null 2>&1 || { echo "The docker CLI has no 'compose' plugin (Docker Compose v2 is needed), or no Docker engine here."; \
	  echo "Without Docker: 'make airflow_ui' (Airflow UI) or 'make train_baseline' (in-process)."; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "No Docker engine is reachable (docker info failed): start Docker first."; \
	  echo "Without Docker: 'make airflow_ui' (Airflow UI) or 'make train_baseline' (in-process)."; exit 1; }
endef

.PHONY: launch_training_infra
launch_training_infra: env_file ## docker compose up the training stack (Airflow 3, Postgres, MLflow, AWS emulator, Grafana), wait for health, print URLs
	$(require_docker)
	@mkdir -p data
	AIRFLOW_UID=$$(id -u) docker compose up -d --build --wait --wait-timeout 900
	@echo ""
	@echo "  (Ports listen on $${LANDCOVER_BIND_ADDRESS:-127.0.0.1}; passwords are in $(ENV_FILE): grep NAME $(ENV_FILE))"
	@echo "  Airflow   http://localhost:$${AIRFLOW_PORT:-8080}   (user admin, password AIRFLOW_ADMIN_PASSWORD)"
	@echo "  MLflow    http://localhost:$${MLFLOW_PORT:-5000}"
	@echo "  Grafana   http://localhost:3000   (user admin, password GRAFANA_ADMIN_PASSWORD)"
	@echo "  AWS       http://localhost:4566   (moto server; buckets $${LANDCOVER_PROJECT:-landcover-demo}-{artifacts,registry,mlflow})"
	@echo "  Postgres  localhost:$${POSTGRES_PORT:-5432}   (user postgres, password POSTGRES_PASSWORD; databases airflow, mlflow, ledger)"
	@echo "  Train:    AIRFLOW_URL=http://localhost:$${AIRFLOW_PORT:-8080} make train_baseline"

.PHONY: clean_up_training
clean_up_training: ## docker compose down -v: stop the training stack and delete its volumes
	$(require_docker)
	docker compose down -v --remove-orphans

# --- Inference infrastructure (inference/tf) ---------------------------------------------------
# IaC checkers live in .cache/, outside the project's environment: checkov pins many packages.
IAC_CACHE             := .cache
CHECKOV_VERSION       := 3.3.30
ASL_VALIDATOR_VERSION := 4.0.0
CHECKOV_STAMP         := $(IAC_CACHE)/checkov-venv/.checkov-$(CHECKOV_VERSION)
ASL_VALIDATOR_STAMP   := $(IAC_CACHE)/npm/.asl-validator-$(ASL_VALIDATOR_VERSION)

$(CHECKOV_STAMP):
	@echo "installing checkov==$(CHECKOV_VERSION) into $(IAC_CACHE)/checkov-venv"
	@rm -rf $(IAC_CACHE)/checkov-venv
	python3 -m venv $(IAC_CACHE)/checkov-venv
	@$(IAC_CACHE)/checkov-venv/bin/pip install --quiet "checkov==$(CHECKOV_VERSION)" > $(IAC_CACHE)/checkov-install.log 2>&1 \
		|| { cat $(IAC_CACHE)/checkov-install.log; exit 1; }
	@touch $@

$(ASL_VALIDATOR_STAMP):
	@echo "installing asl-validator@$(ASL_VALIDATOR_VERSION) into $(IAC_CACHE)/npm"
	@rm -f $(IAC_CACHE)/npm/.asl-validator-*
	npm install --silent --no-save --no-fund --no-audit --prefix $(IAC_CACHE)/npm "asl-validator@$(ASL_VALIDATOR_VERSION)"
	@touch $@

.PHONY: iac_tools
iac_tools: $(CHECKOV_STAMP) $(ASL_VALIDATOR_STAMP) ## Install checkov (own venv) and asl-validator (npm) into .cache/ (idempotent)

.PHONY: setup_inference_infra
setup_inference_infra: setup_env ## Render tfvars from the Hydra config, create ECR, build and push the Lambda image (needs AWS creds, Docker)
	bash setup/infra.sh setup

.PHONY: provision_inference_infra
provision_inference_infra: setup_env ## terraform apply the inference stack (S3, RDS, Lambdas, Step Functions, schedule, alarms)
	bash setup/infra.sh provision

.PHONY: clean_up_infra
clean_up_infra: setup_env ## Destroy the inference stack, buckets, ECR images and RDS included (asks first)
	bash setup/infra.sh clean

.PHONY: bench_sync_memory
bench_sync_memory: setup_env ## Peak memory of the synchronous API under hostile payloads (declared-huge rasters, full 6 MB requests)
	$(PY) -m setup.tools.bench.sync_memory

.PHONY: faults
faults: setup_env ## Fault-injection suite (SIGKILL, 45 s database outage, overlapping runs, S3 5xx, leases, redrive); make test runs it with a 4 s outage
	FAULTS_FULL=1 $(VENV)/bin/pytest -v tests/faults

.PHONY: bench
# Read when make starts, before setup_env: the bench's time budget counts a fresh clone's venv build.
bench: BENCH_STARTED := $(shell date +%s.%N)
bench: setup_env ## CPU inference benchmark (GEMM peak, eager fp32 vs ONNX int8, RSS, cold start, scenes, cost) -> outputs/bench/bench.json
	$(CLI) bench --out outputs/bench/bench.json --started-at $(BENCH_STARTED) $(ARGS)

.PHONY: batch_image
batch_image: ## Build the AWS Batch training image (training/Dockerfile.batch; needs Docker): make batch_image TAG=<repository_url>:<tag>
	docker build -f training/Dockerfile.batch -t $(or $(TAG),landcover-training:latest) .

.PHONY: bench_features
bench_features: setup_env ## Encoder feature-extraction chips/s on the best device (GPU bf16 where present) + whole-release time/cost: ARGS="--preset large --usd-per-hour 1.0"
	$(PY) -m setup.tools.bench_features $(ARGS)
