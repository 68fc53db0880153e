#!/usr/bin/env bash
# `make gpu-check`: run on a bare GPU machine with no network (the image's CUDA torch, no lora_tune dependencies).
# Joins the wheel parts that `make gpu-wheels` cut (GPU_PARTS: a folder of part-NN + bundle.sha256; earlier device
# calls may have staged them one per call), checks the bundle's sha256, installs the wheels beside the image's
# torch (--target, no index, no dependencies resolved), prepares SmolLM2-135M from its GGUF, runs the GPU-gated
# tests (pytest -m gpu) and the measurement sweeps at 4, 8 and 16 bits (benchmarks/gpu_check.py), which write
# results_gpu.json + .md into GPU_RESULTS (default benchmarks/).
#
#   GPU_PARTS=/tmp/lora_tune_parts GPU_RESULTS=$OUT bash scripts/gpu_check.sh
#   GPU_CHECK_ARGS="--cpu --steps 4" ...   # the rehearsal on a machine without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${GPU_PARTS:-.gpu}
SITE=${GPU_SITE:-/tmp/lora_tune_site}
RESULTS=${GPU_RESULTS:-benchmarks}
PY=${GPU_PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cat "$PARTS"/part-* > "$WORK/bundle.tar"
echo "$(cat "$PARTS/bundle.sha256")  $WORK/bundle.tar" | sha256sum --check --quiet
tar -xf "$WORK/bundle.tar" -C "$WORK"
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$WORK"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PATH="$SITE/bin:$PATH"  # ray's command-line tools, should anything call them
"$PY" -c 'import torch; print("gpu-check: torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
"$PY" -m lora_tune.embedded
tests_rc=0  # a failing GPU-gated test still lets the measurements run; the script's status reports it
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_train.py || tests_rc=$?
# shellcheck disable=SC2086  # GPU_CHECK_ARGS holds several arguments
"$PY" -m benchmarks.gpu_check --out "$RESULTS" ${GPU_CHECK_ARGS:-}
exit "$tests_rc"
