"""benchmarks/parity.py (issue 34): run_trial and HF Trainer trained on the same model, data and optimisation,
both scored by lora_tune's eval_loss; the quick variant (tiny model, 2 seeds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.procs import run_bounded

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_quick_parity_comparison_trains_both_arms_alike(tmp_path: Path) -> None:
    """Without dropout (whose draws differ between the two loops), HF Trainer fed run_trial's batches ends at
    run_trial's losses: the loops compute the same updates; every arm learns."""
    done = run_bounded([sys.executable, "-m", "benchmarks.parity", "--quick", "--out", str(tmp_path),
                        "peft.dropout=0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "results_parity.json").read_text())
    assert [run["seed"] for run in result["runs"]] == [0, 1]
    for run in result["runs"]:
        ours, plain, hf, ordered = (run[arm] for arm in ("lora_tune", "lora_tune_random", "hf_trainer",
                                                         "hf_same_order"))
        assert list(ours) == list(plain) == list(hf) == list(ordered) == ["4", "8", "12"]  # the same steps
        for losses in (ours, plain, hf, ordered):  # every arm learns
            assert losses["12"] < losses["4"]
        assert plain != ours  # the batch order differs, so the losses do
    assert result["same_order_max_gap"] < 1e-4, result["same_order_max_gap"]
    ratio = result["ratio"]["lora_tune_over_hf_mean_final"]
    assert ratio <= 1.10 and result["met"]  # no worse than HF on average
    assert "| 0 | hf_trainer |" in (tmp_path / "results_parity.md").read_text()
