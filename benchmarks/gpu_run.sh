#!/usr/bin/env bash
# Every GPU measurement of the Benchmarks page in one run, inside 8 minutes on one H100/H200:
#   bash benchmarks/gpu_run.sh            (from the repository root; PYTHON defaults to .venv/bin/python)
# Raw outputs go to docs/assets/gpu/; each part has its own time limit, so a slow part cuts only itself.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=docs/assets/gpu
mkdir -p "$OUT"
stamp="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
run() {  # run LIMIT_S FILE CMD...: the command's output into $OUT/FILE, headed by the command
  local limit=$1 file=$2; shift 2
  { echo "# $* ($stamp)"; timeout "$limit" "$@" 2>&1; echo "# exit status $?"; } | tee "$OUT/$file"
}
run 120 tests_cuda.txt "$PY" -m pytest -p no:xdist -q tests/test_cuda.py tests/test_sampling_graphs.py
run 170 bench_gpu.txt "$PY" benchmarks/bench_gpu.py --compile-modes default
run 110 bench_gpu_max_autotune.txt "$PY" benchmarks/bench_gpu.py --only training --compile-modes max-autotune-no-cudagraphs --steps 10
run 40 profile.txt "$PY" benchmarks/bench_gpu.py --profile --steps 5
