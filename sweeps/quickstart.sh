#!/usr/bin/env bash
# Purpose: the default study in minutes on 2 CPUs: rank, alpha, targets, bits and lr on SmolLM2-135M, ASHA.
# Extra Hydra overrides are appended, e.g. `sweeps/quickstart.sh dry_run=true` or `sweeps/quickstart.sh num_samples=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lora_tune.sweep \
  experiment=quickstart \
  "$@"
