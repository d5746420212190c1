# The two commands a user needs: `make train` and `make test`. Both set up .venv when missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.egra-installed
ARGS ?=
# Overrides of a study config (conf/study/): make compare STUDY="vary_data=true jobs=2"
STUDY ?=
GPUS ?=
DATASET ?= baby
SWEEP ?= lambda_grid
# make train: MODEL on the generated `small` data, or a recipe of conf/experiment/ (EXPERIMENT=).
MODEL ?= egra
EXPERIMENT ?=
# The newest sweep of any task (by modification time, not by name).
DIR ?= $(firstword $(shell ls -1dt logs/*/multiruns/*/ 2>/dev/null))

# GPU=1 (implied by GPUS=N where an NVIDIA driver is present): a CUDA torch with a matching
# FAISS (tools/gpu_stack.py), in its own stamp. Without a driver GPUS=N keeps the CPU stack, so
# `make train GPUS=2 ARGS="trainer.accelerator=cpu"` runs DDP on CPU processes.
ifneq ($(strip $(GPUS)),)
  TRAIN_DEVICES := trainer=ddp trainer.devices=$(GPUS)
  ifneq ($(shell command -v nvidia-smi 2>/dev/null),)
    GPU ?= 1
  endif
endif
# The venv remembers its stack (first line of $(STACK_RECORD)): without GPU= a GPU stack stays,
# so a later plain `make test` or `make train` neither reinstalls nor swaps it. GPU=0 goes back
# to the CPU stack.
STACK_RECORD := $(VENV)/.egra-stack
RECORDED_STACK := $(shell head -n1 $(STACK_RECORD) 2>/dev/null)
ifeq ($(strip $(GPU)),)
  ifneq ($(filter cu%,$(RECORDED_STACK)),)
    GPU := 1
  else ifeq ($(RECORDED_STACK)$(wildcard $(VENV)/.egra-installed-gpu),$(VENV)/.egra-installed-gpu)
    # a venv set up for a GPU before the record existed
    GPU := 1
  endif
endif
# FAISS_GPU=auto|yes|no and TORCH_INDEX=<PyTorch index URL>: default the venv's earlier choice,
# else auto / by compute capability; given here, they re-run the GPU install.
FAISS_GPU ?=
TORCH_INDEX ?=
NVIDIA_SMI ?= nvidia-smi
STACK_OPTS = --python $(BIN)/python --record $(STACK_RECORD)
GPU_OPTS = --nvidia-smi $(NVIDIA_SMI) $(if $(FAISS_GPU),--faiss-gpu $(FAISS_GPU)) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))
CPU_STAMP := $(VENV)/.egra-installed
GPU_STAMP := $(VENV)/.egra-installed-gpu
ifeq ($(strip $(GPU)),1)
  STAMP := $(GPU_STAMP)
endif

.DEFAULT_GOAL := help
.PHONY: FORCE help setup train test lint format data bench clean report sweep compare reproduce results

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-10s %s\n", $$1, $$2}'

# tools/gpu_stack.py installs (and records) a stack: whatever replaces an installed torch or FAISS
# package is downloaded before anything is removed, so a failed download changes nothing.
$(CPU_STAMP): requirements.txt requirements-core.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PYTHON) tools/gpu_stack.py install --cpu $(STACK_OPTS)
	@rm -f $(GPU_STAMP)
	@touch $(CPU_STAMP)

# Checks the GPUs and driver first: on a machine without one it stops here, before a venv exists.
$(GPU_STAMP): requirements.txt requirements-core.txt requirements-gpu.txt requirements-dev.txt pyproject.toml tools/gpu_stack.py $(if $(FAISS_GPU)$(TORCH_INDEX),FORCE)
	@$(PYTHON) tools/gpu_stack.py check --record $(STACK_RECORD) $(GPU_OPTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PYTHON) tools/gpu_stack.py install $(STACK_OPTS) $(GPU_OPTS)
	@rm -f $(CPU_STAMP)
	@touch $(GPU_STAMP)

FORCE:

setup: $(STAMP) ## Create .venv: the CPU stack, or with GPU=1 a CUDA torch + matching FAISS (FAISS_GPU=auto|yes|no; GPU=0 back to CPU)

train: $(STAMP) ## Pretrain MGCN -> S^pt -> EGRA on generated data (MODEL= or EXPERIMENT=, GPUS=N, ARGS="k=v ...")
	$(BIN)/egra-train $(if $(EXPERIMENT),experiment=$(EXPERIMENT),$(if $(filter model=%,$(ARGS)),,model=$(MODEL))) $(TRAIN_DEVICES) $(ARGS)

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

PRESET ?= small
TRIALS ?= 8
SEEDS ?= 0,1,2,3,4
MODELS ?= paper
compare: $(STAMP) ## Models under the comparison protocol (docs/experiments.md): PRESET= TRIALS= SEEDS=0,1,2,3,4 MODELS=paper ARGS="k=v ..." (egra-train overrides)
	$(BIN)/egra-compare dataset=$(PRESET) trials=$(TRIALS) 'eval_seeds=[$(SEEDS)]' models=$(MODELS) $(STUDY) -- $(ARGS)

# DATASET given on the command line (or in the environment) picks the data; otherwise the
# budget's own (smoke: tiny, full: baby).
BUDGET ?= smoke
REPRO_DATASET := $(if $(filter command line environment,$(origin DATASET)),dataset=$(DATASET))
reproduce: $(STAMP) ## The paper's experiments on one dataset: make reproduce DATASET=baby|tiny|... BUDGET=smoke|full [ARGS="data.root=DIR"]
	$(BIN)/egra-reproduce budget=$(BUDGET) $(REPRO_DATASET) $(STUDY) -- $(ARGS)

report: $(STAMP) ## Tables and plots of a sweep: make report DIR=logs/<task>/multiruns/<time> (default: newest)
	@test -n "$(DIR)" || { echo "usage: make report DIR=<multirun dir> [ARGS='--out D --metrics ...']"; exit 2; }
	$(BIN)/egra-report $(DIR) $(ARGS)

results: $(STAMP) ## Re-render the results blocks of README.md and docs/*.md from bench/results/ (ARGS=--check: only check)
	$(BIN)/python -m egra.experiments.registry $(ARGS)

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools

format: $(STAMP) ## ruff format + autofix
	$(BIN)/ruff format src tests bench tools
	$(BIN)/ruff check --fix src tests bench tools

data: $(STAMP) ## Place a real dataset: make data DATASET=baby|sports|clothing|elec|microlens
	$(BIN)/python -m egra.data.fetch $(DATASET) --data-dir data $(ARGS)

bench: $(STAMP) ## Run the benchmarks in bench/ (writes bench/results/*.json)
	$(BIN)/python bench/knn_graph.py
	$(BIN)/python bench/train_throughput.py

clean: ## Remove generated data, logs and artifacts (keeps .venv)
	rm -rf data/synthetic logs artifacts outputs multirun
