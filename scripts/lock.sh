#!/usr/bin/env bash
# Hashed lock files from pyproject.toml's extras and requirements/constraints.txt (`make lock`).
#
#   requirements/models-py310.lock   Python-backend model deps for images on Python 3.10 (Triton <= 24.10)
#   requirements/models-py312.lock   the same for Python 3.12 (Triton 24.11+); both feed
#                                    `fusion-emotion package --target sagemaker-triton`
#   requirements/serving-py310.lock  the serving image (Dockerfile, base tritonserver 24.10 = Python 3.10):
#                                    models + front end + DALI + the build backend
#   requirements/sbom-py310.lock     the Dockerfile's SBOM stage (cyclonedx-bom)
#
# Every version comes from constraints.txt (tests/test_supply_chain.py checks that the locks and
# the constraints agree). Resolution needs the package index (PyPI), nothing else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV="${UV:-$ROOT/.venv/bin/uv}"
REQ="$ROOT/requirements"
cd "$ROOT"
export UV_PYTHON_DOWNLOADS=never  # resolve for a Python version without fetching an interpreter

compile() {  # compile OUTPUT PYTHON_VERSION ARGS...
    local out="$1" version="$2"
    shift 2
    "$UV" pip compile --quiet --generate-hashes --no-annotate --only-binary :all: \
        --python-version "$version" --python-platform x86_64-manylinux_2_35 \
        --constraint requirements/constraints.txt \
        --custom-compile-command "make lock" \
        --output-file "$out" "$@"
    echo "wrote $out ($(grep -c '==' "$out") packages)"
}

compile "$REQ/models-py310.lock" 3.10 pyproject.toml --extra models
compile "$REQ/models-py312.lock" 3.12 pyproject.toml --extra models
compile "$REQ/serving-py310.lock" 3.10 pyproject.toml requirements/build-tools.in --extra serving --extra dali
compile "$REQ/sbom-py310.lock" 3.10 requirements/sbom-tools.in
