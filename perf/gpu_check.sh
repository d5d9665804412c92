#!/usr/bin/env bash
# GPU check: run on a machine with an NVIDIA GPU and no network, from the repository root, with the
# serving environment (make setup: DALI 1.53, torch, tritonclient). ~7-8 minutes typical, every stage under
# its own timeout; later stages are skipped rather than run past 10 minutes:
#   1. NVDEC decode throughput of the generated 720p H.264 clip (DALI mixed), with nvidia-smi dmon's
#      decoder utilisation sampled alongside (frames/s, clips/s; 1 and 4 pipelines)
#   2. R3D-18 and HuBERT-base in FP16 with torch on CUDA, batch 1..32
#   3. the whole ensemble (profiles gpu = PyAV decode, gpu_dali = NVDEC) when a tritonserver with the onnxruntime backend is there
#      (FUSION_EMOTION_TRITONSERVER, e.g. /opt/tritonserver/bin/tritonserver in NVIDIA's image)
# Results: $OUT (default perf/gpu_check_out) — JSON lines per stage, dmon log, summary.txt.
#
# GPU_CHECK_DEVICE=cpu runs stages 1-2 on the CPU (DALI's CPU decoder, torch FP32, small batches) as a
# smoke test of the script itself; its numbers say nothing about a GPU.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-perf/gpu_check_out}
DEVICE=${GPU_CHECK_DEVICE:-gpu}
DECODE_S=${GPU_CHECK_DECODE_S:-40}
mkdir -p "$OUT"
log() { printf '[gpu_check %(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$OUT/summary.txt"; }

if [ "$DEVICE" = gpu ]; then
  command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA driver here" >&2; exit 2; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
  TORCH_DEVICE=cuda DTYPE=fp16 BATCHES=1,2,4,8,16,32 PIPELINES=1,4 ITERS=20 WARMUP=3
else
  TORCH_DEVICE=cpu DTYPE=fp32 BATCHES=1,2 PIPELINES=1 ITERS=2 WARMUP=1 DECODE_S=${GPU_CHECK_DECODE_S:-6}
fi

log "clip: generated 1280x720 30 fps H.264 ~8 Mbit/s, 3.5 s (RAVDESS-like)"
timeout 60 "$PY" perf/gpu_check.py clip "$OUT/clip720.mp4" | tee "$OUT/clip.jsonl"

DMON_PID=""
if [ "$DEVICE" = gpu ]; then
  # u: sm, mem, enc, dec utilisation (%), one sample a second, while decode runs
  nvidia-smi dmon -s u -d 1 -o T > "$OUT/dmon.log" 2>&1 &
  DMON_PID=$!
fi
log "decode: device=$DEVICE pipelines=$PIPELINES ${DECODE_S}s per count"
timeout $((DECODE_S * 2 + 60)) "$PY" perf/gpu_check.py decode "$OUT/clip720.mp4" --device "$DEVICE" \
  --seconds "$DECODE_S" --pipelines "$PIPELINES" | tee "$OUT/decode.jsonl" || log "decode stage FAILED ($?)"
if [ -n "$DMON_PID" ]; then
  kill "$DMON_PID" 2>/dev/null || true
  wait "$DMON_PID" 2>/dev/null || true
  # columns: time gpu sm mem enc dec ...: mean/max of dec over samples with any decoder activity
  awk '!/^#/ && NF>=6 { n++; s+=$6; if ($6>m) m=$6; if ($6>0) a++ }
       END { if (n) printf "nvdec utilisation: mean %.1f %%, max %d %% over %d samples (%d active)\n", s/n, m, n, a }' \
    "$OUT/dmon.log" | tee -a "$OUT/summary.txt"
fi

log "encoders: torch device=$TORCH_DEVICE dtype=$DTYPE batches=$BATCHES"
timeout 150 "$PY" perf/gpu_check.py encoders --device "$TORCH_DEVICE" --dtype "$DTYPE" --batches "$BATCHES" \
  --iterations "$ITERS" --warmup "$WARMUP" \
  | tee "$OUT/encoders.jsonl" || log "encoder stage FAILED ($?)"

TRITON=${FUSION_EMOTION_TRITONSERVER:-/opt/tritonserver/bin/tritonserver}
if [ "$DEVICE" = gpu ] && [ "$SECONDS" -lt 300 ] && [ -x "$TRITON" ] && [ -d "$(dirname "$TRITON")/../backends/onnxruntime" ]; then
  log "ensemble: gpu profile on $TRITON"
  FE=${FUSION_EMOTION:-.venv/bin/fusion-emotion}
  timeout 90 "$FE" export --init random --seed 0 --output "$OUT/repo" --force >/dev/null
  export FUSION_EMOTION_TRITONSERVER="$TRITON"
  for PROFILE in gpu gpu_dali; do  # decode with PyAV on the CPU, then with NVDEC
    # each profile takes at most ~160 s: start one only while the whole check stays under 10 minutes
    if [ "$SECONDS" -gt 440 ]; then log "ensemble $PROFILE: skipped (time budget)"; continue; fi
    log "ensemble: profile $PROFILE"
    "$FE" triton --repository "$OUT/repo" --profile "$PROFILE" --grpc-port 18001 --http-port 18000 \
      --metrics-port 18002 > "$OUT/tritonserver-$PROFILE.log" 2>&1 &
    TRITON_PID=$!
    for _ in $(seq 100); do curl -sf localhost:18000/v2/health/ready >/dev/null && break; sleep 1; done
    timeout 60 "$FE" bench --triton localhost:18001 --video "$OUT/clip720.mp4" --requests 32 \
      --sweep 1,8,16 --output "$OUT/ensemble-$PROFILE.json" | tee "$OUT/ensemble-$PROFILE.txt" \
      || log "ensemble $PROFILE FAILED ($?)"
    kill -TERM "$TRITON_PID" 2>/dev/null || true
    wait "$TRITON_PID" 2>/dev/null || true
  done
else
  log "ensemble: skipped (needs a GPU, a tritonserver with the onnxruntime backend, and time left)"
fi
log "done: results in $OUT"
