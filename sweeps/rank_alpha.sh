#!/usr/bin/env bash
# Purpose: capacity vs scaling: ranks 4-64 against alphas 8-128 on q+v of a 4-bit base; ASHA prunes early.
# Extra Hydra overrides are appended, e.g. `sweeps/rank_alpha.sh dry_run=true` or `sweeps/rank_alpha.sh num_samples=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lora_tune.sweep \
  search_space=rank \
  num_samples=2 \
  quant.bits=4 \
  sweep_name=rank_alpha-$(date +%Y%m%d-%H%M%S) \
  "$@"
