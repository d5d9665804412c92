#!/usr/bin/env bash
# The GPU check (perf/gpu_check.py): on a bare machine with an NVIDIA GPU and no network, from the repository
# root, with only CUDA, PyTorch, torchvision, transformers, scipy and onnx installed, and no virtualenv.
# Wheels that cannot be installed there travel beside the checkout in .whl/ (at most 64 MiB with the
# repository; here, for Python 3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl av==18.1.0 PyNvVideoCodec==2.2.4      # 36 + 27 MB
# Without PyAV the drift stage is skipped; without PyNvVideoCodec the NVDEC stage; DALI (~400 MB) never
# travels, so its pipeline stage runs only where DALI is already installed. Under 8 minutes: the whole check
# is stopped at 470 s. Results: $OUT (default perf/gpu_check_out): results.jsonl, summary.md; exit 1 on a
# correctness failure.
#   perf/gpu_check.sh                    # on the GPU machine
#   perf/gpu_check.sh --device cpu --quick   # a smoke run of the script itself, anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-perf/gpu_check_out}
mkdir -p "$OUT"
SITE="$OUT/site"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl
fi
# the package as it installs: pyproject maps fusion_emotion.client and .export to client/ and export/
"$PY" scripts/lint_imports.py --layout "$OUT/layout" --layout-only
export PYTHONPATH="$OUT/layout:$SITE${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" || true
exec timeout 470 "$PY" perf/gpu_check.py --out "$OUT" "$@"
