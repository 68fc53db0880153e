#!/usr/bin/env bash
# `make gpu-rehearsal`: make gpu-check's whole path on this machine, without a GPU and without network, before
# device time is spent on it. A clean venv stands in for the GPU image (torch 2.13.0 from this disk plus the
# packages the image is relied on for, gpu_wheels.py's image.txt); the wheels are cut for this Python as
# `make gpu-wheels` cuts them for the GPU machine's; then scripts/gpu_check.sh runs in a network namespace with
# loopback only (unshare -n: nothing can be downloaded), on the CPU (resources=cpu, 4 steps, 4 and 16 bits), with an
# empty HOME and model cache. Results: $REHEARSAL_DIR/results/results_gpu.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
REH=${REHEARSAL_DIR:-/tmp/lora_tune_rehearsal}
rm -rf "$REH" && mkdir -p "$REH/home"
PYV=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
.venv/bin/python scripts/gpu_wheels.py --out "$REH/parts" --python-version "$PYV"
python3 -m venv "$REH/venv"
"$REH/venv/bin/pip" install --quiet torch==2.13.0 pytest -r "$REH/parts/image.txt"
unshare -n env REH="$REH" bash -c 'ip link set lo up && HOME="$REH/home" LORA_TUNE_CACHE="$REH/cache" \
  GPU_PYTHON="$REH/venv/bin/python" GPU_PARTS="$REH/parts" GPU_SITE="$REH/site" GPU_RESULTS="$REH/results" \
  GPU_CHECK_ARGS="--cpu --steps 4 --samples 1 --bits 4 16" bash scripts/gpu_check.sh'
echo "gpu-rehearsal: passed with no network; results in $REH/results"
