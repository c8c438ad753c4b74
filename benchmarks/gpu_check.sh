#!/usr/bin/env bash
# The GPU checks in one table, on one GPU, in under 8 minutes (a hard 480 s limit):
# a search with --gpus 1 --gpus-per-trial 0.25 (4 trials at once, each on CUDA), the vectorised
# seeds on CUDA vs CPU, and the stable-diffusion backend's mixed-precision fine-tune step and
# sampling on a tiny local pipeline. Usage: benchmarks/gpu_check.sh [--device cuda:0] [--json F]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
