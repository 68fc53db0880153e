#!/usr/bin/env bash
# Purpose: DoRA and rsLoRA on or off, attention vs all-linear targets (PEFT variants as search dimensions).
# Extra Hydra overrides are appended, e.g. `sweeps/peft_variants.sh dry_run=true` or `sweeps/peft_variants.sh num_samples=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lora_tune.sweep \
  search_space=variants \
  num_samples=2 \
  quant.bits=4 \
  sweep_name=peft_variants-$(date +%Y%m%d-%H%M%S) \
  "$@"
