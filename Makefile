# fusion-emotion: `make setup` prepares a fresh machine, `make test` runs every test,
# `make demo` exports demo weights, serves them on a real tritonserver and predicts a generated clip.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
PERF_ANALYZER_REQS := requirements/perf-analyzer.txt
PERF_ANALYZER_DIR := $(VENV)/opt/perf-analyzer
PY312_VENV ?= .venv-py312

.PHONY: setup test unit integration lint format demo export serve-local fuzz soak sbom lock clean perf-analyzer perf-compare model-analyzer

# every role (pyproject extras): serving + the bundled tritonserver + plots + DALI + export + dev tools
setup:
	@command -v espeak-ng >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng; }
	@# the playground's browser tests drive Debian's chromium with PyPI playwright (its own download is unreachable)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@# tests/test_observability_live.py evaluates the Grafana dashboard's queries in a real Prometheus (Debian's)
	@command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[serving,triton,plots,dali,export,dev]"
	$(BIN)/python -c "import fusion_emotion.server.launcher as t; t.Bundle.locate().backend_dir()"
	@# perf_analyzer (tritonclient 2.51 wheel, off sys.path) + libb64 (Debian) + libcudart 12 (PyPI); see the reqs file
	@ldconfig -p | grep -q 'libb64\.so\.0d' || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d; }
	@cmp -s $(PERF_ANALYZER_REQS) $(PERF_ANALYZER_DIR)/requirements.txt || { rm -rf $(PERF_ANALYZER_DIR) && \
	  $(BIN)/python -m pip install -q --no-deps --require-hashes --only-binary=:all: --target $(PERF_ANALYZER_DIR) \
	    -r $(PERF_ANALYZER_REQS) && cp $(PERF_ANALYZER_REQS) $(PERF_ANALYZER_DIR)/requirements.txt; }
	$(BIN)/fusion-emotion perf-analyzer --version
	@# tests/test_stock_sagemaker_triton.py packs for and runs the 24.10 image's Python 3.10 (pyenv here)
	$(BIN)/python -c "from fusion_emotion.deploy.execution_env import find_interpreter; print('Python 3.10 for the stock-image test:', find_interpreter('3.10'))"
	@# `fusion-emotion stream --sagemaker-endpoint` (AWS's SDK needs Python >= 3.12) and the stand-in of SageMaker's
	@# bridge: their own venv, used by tests/test_sagemaker_stream.py (docs/deploy/streaming.md)
	@test -x $(PY312_VENV)/bin/python || "$$($(BIN)/python -c "from fusion_emotion.deploy.execution_env import find_interpreter; print(find_interpreter('3.12'))")" -m venv $(PY312_VENV)
	$(PY312_VENV)/bin/python -m pip install -q --upgrade pip
	$(PY312_VENV)/bin/python -m pip install -q -c $(CONSTRAINTS) -e ".[serving,sagemaker-bridge]"
	@echo "setup done: $(BIN)/fusion-emotion"

# mkdocs: the documentation site (mkdocs.yml, docs/) into build/site; --strict fails on a broken link or nav entry
test: lint
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/pytest -q -p no:cacheprovider

unit:
	$(BIN)/pytest -q -m "not integration"

integration:
	$(BIN)/pytest -q -m integration

# ruff, then the import contracts of docs/architecture.md on the package as it installs
lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/lint_imports.py

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

# perf_analyzer concurrency sweep on fusion_emotion over gRPC (real clip as --input-data) -> perf_analyzer.csv
perf-analyzer:
	$(BIN)/python perf/perf_analyzer_sweep.py --concurrency $${PA_CONCURRENCY:-1,2,4} --requests $${PA_REQUESTS:-16} \
	  --output-dir build/perf/perf_analyzer

# the same, with `fusion-emotion bench --triton` interleaved at each concurrency (perf/README.md comparison)
perf-compare:
	$(BIN)/python perf/perf_analyzer_sweep.py --bench --concurrency $${PA_CONCURRENCY:-1,2,4} \
	  --requests $${PA_REQUESTS:-16} --rounds $${PA_ROUNDS:-2} --output-dir build/perf/perf_compare

# Triton Model Analyzer (own venv), local launch mode on our tritonserver: bounded quick search, report
MA_VENV := build/model-analyzer/venv
model-analyzer:
	@test -x $(MA_VENV)/bin/model-analyzer || { $(PYTHON) -m venv $(MA_VENV) && \
	  $(MA_VENV)/bin/python -m pip install -q -r requirements/model-analyzer.txt; }
	$(BIN)/python -m fusion_emotion.ops.model_analyzer --venv $(MA_VENV) --output-dir build/model-analyzer

sbom:
	bash scripts/supply_chain.sh

# hashed lock files (requirements/*.lock) from pyproject's extras + constraints.txt; needs the package index
lock:
	UV=$(BIN)/uv bash scripts/lock.sh

clean:
	rm -rf build .pytest_cache .ruff_cache
