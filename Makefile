# fusion-emotion: `make setup` prepares a fresh machine, `make test` runs every test,
# `make demo` exports demo weights, serves them on a real tritonserver and predicts a generated clip.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt

.PHONY: setup test unit integration lint format demo export serve-local fuzz soak sbom lock clean

# every role (pyproject extras): serving + the bundled tritonserver + plots + DALI + export + dev tools
setup:
	@command -v espeak-ng >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[serving,triton,plots,dali,export,dev]"
	$(BIN)/python -c "import fusion_emotion.server.launcher as t; t.Bundle.locate().backend_dir()"
	@# tests/test_stock_sagemaker_triton.py packs for and runs the 24.10 image's Python 3.10 (pyenv here)
	$(BIN)/python -c "from fusion_emotion.deploy.execution_env import find_interpreter; print('Python 3.10 for the stock-image test:', find_interpreter('3.10'))"
	@echo "setup done: $(BIN)/fusion-emotion"

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

unit:
	$(BIN)/pytest -q -m "not integration"

integration:
	$(BIN)/pytest -q -m integration

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

export:
	$(BIN)/fusion-emotion export --init random --seed 0 --output build/demo_repo --force

demo:
	$(BIN)/python scripts/demo.py

fuzz:
	FUSION_EMOTION_FUZZ_EXAMPLES=$${FUSION_EMOTION_FUZZ_EXAMPLES:-5000} $(BIN)/pytest -q tests/test_fuzz.py

soak:
	$(BIN)/python perf/soak.py --minutes $${SOAK_MINUTES:-10} --concurrency 16 --output build/soak.json

sbom:
	bash scripts/supply_chain.sh

# hashed lock files (requirements/*.lock) from pyproject's extras + constraints.txt; needs the package index
lock:
	UV=$(BIN)/uv bash scripts/lock.sh

clean:
	rm -rf build .pytest_cache .ruff_cache
