#!/usr/bin/env bash
# Purpose: which layers to adapt: q+v, all attention, MLP only, all-linear, at fixed r=8 on a 4-bit base.
# Extra Hydra overrides are appended, e.g. `sweeps/target_modules.sh dry_run=true` or `sweeps/target_modules.sh num_samples=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lora_tune.sweep \
  search_space=target_modules \
  num_samples=2 \
  peft.r=8 \
  peft.alpha=16 \
  quant.bits=4 \
  sweep_name=target_modules-$(date +%Y%m%d-%H%M%S) \
  "$@"
