#!/usr/bin/env bash
# Purpose: a multi-turn chat task (data=shopping, messages format) judged by token F1 rather than exact match: which rank, targets and lr list the items best.
# Extra Hydra overrides are appended, e.g. `sweeps/shopping_list.sh dry_run=true` or `sweeps/shopping_list.sh num_samples=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lora_tune.sweep \
  data=shopping \
  'eval.metrics=[token_f1,exact_match]' \
  metric=eval_token_f1 \
  mode=max \
  quant.bits=16 \
  max_steps=40 \
  data.exact_match_examples=24 \
  data.test_examples=100 \
  sweep_name=shopping-$(date +%Y%m%d-%H%M%S) \
  "$@"
