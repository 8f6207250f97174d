#!/usr/bin/env bash
# The full speed matrix in one device call: GPU parity, bench lines for bf16/fp32 x 512x384/512x288 x batch 1/4,
# the reference-style baseline, memory over 2,000 frames, drift, and profiles. Logs and JSON go to $OUT.
# Usage (repo root, GPU machine): bash scripts/gpu_bench.sh [stages]
# All stages take ~15-20 min on an H100; under a 10-minute limit per command run them in two calls, e.g.
#   bash scripts/gpu_bench.sh env,parity,matrix,memory,drift     (~9 min: the numbers in docs/speed_notes.md)
#   bash scripts/gpu_bench.sh gputests,engine,levers,profile     (~9 min; engine = what the node gets)
# The parity vectors must be inside the repo there (ignored folder .gpuref/, passed along explicitly).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_bench_out}"
mkdir -p "$OUT"
export TTT3R_PARITY_FILE="${TTT3R_PARITY_FILE:-$PWD/.gpuref/parity_tiny.safetensors}"
exec python3 scripts/gpu_bench.py --stages "${1:-env,parity,gputests,matrix,engine,levers,memory,drift,profile}" --out "$OUT"
