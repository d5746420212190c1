# The two commands a user needs: `make train` and `make test`. Both set up .venv when missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.egra-installed
ARGS ?=
GPUS ?=
DATASET ?= baby
SWEEP ?= lambda_grid
EXPERIMENT ?= egra_small
# The newest sweep of any task (by modification time, not by name).
DIR ?= $(firstword $(shell ls -1dt logs/*/multiruns/*/ 2>/dev/null))

ifneq ($(strip $(GPUS)),)
  TRAIN_DEVICES := trainer=ddp trainer.devices=$(GPUS)
endif

.DEFAULT_GOAL := help
.PHONY: help setup train test lint format data bench clean report sweep

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch is pinned in the same pip command as lightning, or pip pulls a CUDA build.
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the pinned CPU stack (about a minute)

train: $(STAMP) ## Pretrain MGCN -> S^pt -> EGRA on generated data (EXPERIMENT=, GPUS=N, ARGS="k=v ...")
	$(BIN)/egra-train experiment=$(EXPERIMENT) $(TRAIN_DEVICES) $(ARGS)

test: $(STAMP) ## Run the test suite on tiny generated data
	$(BIN)/python -m pytest -q $(ARGS)

# A sweep writes to a new timestamped directory; SWEEP_DIR=<that directory> re-runs it in place
# (finished jobs are skipped, failed and missing ones run).
ifeq ($(origin SWEEP_DIR),undefined)
  SWEEP_DIR := logs/$(SWEEP)/multiruns/$(shell date +%Y-%m-%d_%H-%M-%S_%N)
endif

sweep: $(STAMP) ## Run a sweep, then report it: SWEEP=lambda_grid|k_pt|seeds|ablations|optuna ARGS="k=v ..." [SWEEP_DIR=<dir>]
	@# Failed jobs end the sweep with status 4: report anyway, then pass that status on.
	$(BIN)/egra-train -m hparams_search=$(SWEEP) hydra.sweep.dir=$(SWEEP_DIR) $(ARGS); \
	  status=$$?; $(BIN)/egra-report $(SWEEP_DIR); exit $$status

report: $(STAMP) ## Tables and plots of a sweep: make report DIR=logs/<task>/multiruns/<time> (default: newest)
	@test -n "$(DIR)" || { echo "usage: make report DIR=<multirun dir> [ARGS='--out D --metrics ...']"; exit 2; }
	$(BIN)/egra-report $(DIR) $(ARGS)

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP) ## ruff format + autofix
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

data: $(STAMP) ## Place a real dataset: make data DATASET=baby|sports|clothing|elec
	$(BIN)/python -m egra.data.fetch $(DATASET) --data-dir data $(ARGS)

bench: $(STAMP) ## Run the benchmarks in bench/ (writes bench/results/*.json)
	$(BIN)/python bench/knn_graph.py
	$(BIN)/python bench/train_throughput.py

clean: ## Remove generated data, logs and artifacts (keeps .venv)
	rm -rf data/synthetic logs artifacts outputs multirun
