"""Slow: a short real sweep on SmolLM2-135M (the embedded GGUF, converted once), 4-bit NF4 and 16-bit trials."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from lora_tune.compose import compose_config
from lora_tune.sweep import run_sweep
from tests.conftest import with_space

pytestmark = pytest.mark.slow


def test_short_sweep_on_smollm2_learns_the_task(tmp_path: Path) -> None:
    cfg = compose_config([f"output_dir={tmp_path}", "sweep_name=smol", "wandb.mode=offline", "num_samples=1",
                          "scheduler=fifo", "eval.baseline=false", "eval.confirm_top_k=0",  # confirmed: test_tracking
                          "max_steps=8", "train.eval_every=4",
                          "data.eval_examples=16", "data.exact_match_examples=8", "data.test_examples=24",
                          "verbose=0"])
    cfg = with_space(cfg, bits={"key": "quant.bits", "type": "grid", "values": [4, 16]},
                     lr={"key": "train.lr", "type": "choice", "values": [2e-3]},
                     target_modules={"key": "peft.target_modules", "type": "choice", "values": ["all-linear"]})
    summary = run_sweep(cfg)
    sweep_dir = tmp_path / "smol"
    rows = json.loads((sweep_dir / "results.json").read_text())
    assert sorted(r["bits"] for r in rows) == [4, 16]
    assert all(r["status"] == "TERMINATED" and r["steps"] == 8 for r in rows)
    for trial_dir in sweep_dir.glob("lora_trial_*"):
        with open(trial_dir / "progress.csv", newline="") as handle:
            losses = [float(r["eval_loss"]) for r in csv.DictReader(handle)]
        assert len(losses) == 2 and losses[1] < losses[0], losses  # both precisions learn
    assert summary["base_model"] == "embedded:smollm2-135m"
    assert math.isfinite(summary["value"]) and summary["value"] < 1.0
    test = summary["test"]
    assert test["examples"] == 24
    assert test["winner_exact_match"] > test["base_exact_match"], test
