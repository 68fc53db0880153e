#!/usr/bin/env bash
# Purpose: QLoRA on Llama-3-8B-Instruct on a Ray GPU cluster, one 24 GB GPU per trial (check first: append dry_run=true).
# Extra Hydra overrides are appended, e.g. `sweeps/cluster_llama3_8b.sh dry_run=true` or `sweeps/cluster_llama3_8b.sh num_samples=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lora_tune.sweep \
  model=llama3_8b \
  resources=gpu \
  resources.gpu_memory_gb=24 \
  quant.bits=4 \
  search_space=large_model \
  num_samples=4 \
  max_steps=300 \
  train.batch_size=4 \
  train.eval_every=25 \
  data.max_seq_len=512 \
  scheduler.grace_period=50 \
  ray.address=${RAY_ADDRESS:-auto} \
  wandb.mode=${WANDB_MODE:-auto} \
  sweep_name=llama3_8b-$(date +%Y%m%d-%H%M%S) \
  "$@"
