#!/usr/bin/env bash
# Purpose: does quantizing the base cost accuracy? The same adapter (r=16, attention) on a 4-, 8- and 16-bit base; FIFO so every arm runs to the end.
# Extra Hydra overrides are appended, e.g. `sweeps/qlora_vs_lora.sh dry_run=true` or `sweeps/qlora_vs_lora.sh num_samples=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lora_tune.sweep \
  search_space=qlora_vs_lora \
  scheduler=fifo \
  num_samples=2 \
  peft.r=16 \
  peft.alpha=32 \
  peft.target_modules=attention \
  sweep_name=qlora_vs_lora-$(date +%Y%m%d-%H%M%S) \
  "$@"
