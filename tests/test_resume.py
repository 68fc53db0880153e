"""A diverging trial ends as an error and the sweep goes on; resuming the sweep (README "Resume") with
`retry_errored=true` runs that trial again and nothing else; the base model's scores and the default-LoRA
baseline are read back, not computed again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_tune.compose import compose_config
from lora_tune.preflight import resolve_resume
from lora_tune.sweep import run_sweep
from tests.conftest import steps_reported, with_space


def plant(path: Path, key: str, inside: str | None = None) -> None:
    """Add `key` to a stored JSON file (or to its `inside` dict): a reference computed again would not have it."""
    data = json.loads(path.read_text())
    (data[inside] if inside else data)[key] = 1
    path.write_text(json.dumps(data))


@pytest.mark.slow  # two sweeps, the first with the baseline: ~90 s
def test_a_diverged_trial_errors_and_retry_errored_reruns_it_alone_reusing_the_references(tmp_path: Path) -> None:
    # fp16 weights overflow within two steps at lr 1e4 (no bf16 autocast to cast them to fp32's range): nan, an ERROR;
    # lr 1e-3 trains
    cfg = compose_config(["experiment=tiny", f"output_dir={tmp_path}", "sweep_name=again", "wandb.mode=disabled",
                          "num_samples=1", "scheduler=fifo", "quant.compute_dtype=fp16", "train.max_grad_norm=0",
                          "train.precision=fp32", "data.max_train_examples=16", "max_steps=8", "verbose=0",
                          "ray.max_failures=1", "eval.baseline=true"])
    cfg = with_space(cfg, lr={"key": "train.lr", "type": "grid", "values": [1e-3, 1e4]},
                     bits={"key": "quant.bits", "type": "choice", "values": [16]})
    summary = run_sweep(cfg)
    sweep = tmp_path / "again"
    before = {r["trial_id"]: r for r in json.loads((sweep / "results.json").read_text())}
    (errored,) = [t for t, r in before.items() if r["status"] == "ERROR"]
    assert before[errored]["lr"] == 1e4 and "train loss is nan" in before[errored]["error"]
    assert before[errored]["failures"] == cfg.ray.max_failures + 1  # retried, and the retry failed at once
    (finished,) = [t for t, r in before.items() if r["status"] == "TERMINATED" and r["role"] == "trial"]
    assert before[finished]["steps"] == 8 and summary["trial_id"] == finished  # the sweep went on and has a winner
    assert before["baseline"]["role"] == "baseline"
    reported = steps_reported(sweep, finished)
    assert reported == [4, 8]  # its evaluations (train.eval_every=4), each once
    plant(sweep / "base_scores.json", "planted_base")
    plant(sweep / "baseline" / "result.json", "planted_baseline", inside="test")
    adapter = sweep / "baseline" / "adapter" / "adapter_model.safetensors"
    adapter_written = adapter.stat().st_mtime_ns

    run_sweep(resolve_resume(compose_config([f"resume={sweep}", "retry_errored=true", "verbose=0"])))

    after = {r["trial_id"]: r for r in json.loads((sweep / "results.json").read_text())}
    assert after.keys() == before.keys()
    assert after[errored]["failures"] > before[errored]["failures"], "the errored trial was not run again"
    assert after[errored]["status"] == "ERROR"  # it diverges again
    assert steps_reported(sweep, finished) == reported  # the finished trial was not run again
    summary = json.loads((sweep / "best" / "summary.json").read_text())  # written again by the resume
    assert summary["test"]["planted_base"] == 1, "the base model was scored again"
    assert summary["test"]["planted_baseline"] == 1, "the baseline was trained again"
    assert adapter.stat().st_mtime_ns == adapter_written and summary["test"]["default_lora_steps"] == 8
    assert after["baseline"]["eval_loss"] == before["baseline"]["eval_loss"]
