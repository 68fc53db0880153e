"""A real Ray Tune sweep (local Ray) on the tiny model: ASHA stops weak trials, the sweep dir matches the contract."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lora_tune.sweep import run_sweep
from tests.conftest import with_space
from tests.procs import run_bounded


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, object]:
    """4 trials, one at a time so ASHA's rung order is fixed: lr 3e-2 (learns) then 1e-6 (does not), twice. One
    checkpoint kept by score (ray.num_to_keep=1) of the three a finished trial writes."""
    from lora_tune.compose import compose_config

    out = tmp_path_factory.mktemp("sweep")
    cfg = compose_config(["experiment=tiny", f"output_dir={out}", "sweep_name=asha", "wandb.mode=offline",
                          "num_samples=2", "search_alg.max_concurrent=1",
                          "data.max_train_examples=16", "ray.num_to_keep=1"])
    cfg = with_space(cfg, lr={"key": "train.lr", "type": "grid", "values": [3e-2, 1e-6]},
                     bits={"key": "quant.bits", "type": "choice", "values": [4, 16]})
    cfg = dataclasses.replace(cfg, verbose=0)
    summary = run_sweep(cfg)
    return out / "asha", summary, cfg


def rows_of(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_asha_stops_the_weak_trials(finished_sweep) -> None:
    sweep_dir, _, cfg = finished_sweep
    rows = rows_of(sweep_dir)
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)
    stopped = [r for r in rows if r["stopped_early"] == "True"]
    assert stopped, "ASHA stopped no trial"
    assert all(int(r["steps"]) < cfg.max_steps for r in stopped)
    finished = [r for r in rows if r["stopped_early"] == "False"]
    assert finished and all(int(r["steps"]) == cfg.max_steps for r in finished)
    # ASHA keeps the better trials: every stopped trial is worse than the best one that finished.
    best_finished = min(float(r["eval_loss"]) for r in finished)
    assert all(float(r["eval_loss"]) > best_finished for r in stopped)
    assert any(float(r["lr"]) == 1e-6 for r in stopped)


def test_results_files_match_the_contract(finished_sweep) -> None:
    sweep_dir, _, _ = finished_sweep
    rows = rows_of(sweep_dir)
    for column in ("trial_id", "status", "stopped_early", "steps", "eval_loss", "eval_exact_match", "lr", "bits"):
        assert column in rows[0]
    as_json = json.loads((sweep_dir / "results.json").read_text())
    assert [r["trial_id"] for r in as_json] == [r["trial_id"] for r in rows]
    assert {r["bits"] for r in as_json} <= {4, 16}
    config = yaml.safe_load((sweep_dir / "config.yaml").read_text())
    assert config["sweep_name"] == "asha" and config["model"]["name_or_path"] == "embedded:tiny"


def test_winner_is_the_best_trial_and_summary_records_it(finished_sweep) -> None:
    sweep_dir, summary, cfg = finished_sweep
    rows = json.loads((sweep_dir / "results.json").read_text())
    best = min(rows, key=lambda r: r["eval_loss"])
    on_disk = json.loads((sweep_dir / "best" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert on_disk["trial_id"] == best["trial_id"] and on_disk["value"] == best["eval_loss"]
    assert on_disk["hyperparameters"]["lr"] == 3e-2
    assert on_disk["bits"] == on_disk["config"]["quant"]["bits"] == best["bits"]
    assert on_disk["base_model"] == "embedded:tiny"
    test = on_disk["test"]
    assert test["examples"] == 16 and (test["base_exact_match"] * 16).is_integer()
    # the test scores are the exported adapter's: scoring it again here, on the threads the sweep's scoring task
    # had, gives them exactly
    from lora_tune.config import TrialConfig
    from lora_tune.evaluate import score_on_test
    from lora_tune.tuner import task_threads

    trial_cfg = TrialConfig.from_dict(on_disk["config"])  # the winner's config, as summary.json records it
    again = score_on_test(trial_cfg, str(sweep_dir / "best" / "adapter"), num_threads=task_threads(cfg, all_cpus=True))
    assert again["winner_exact_match"] == test["winner_exact_match"]
    assert again["winner_loss"] == pytest.approx(test["winner_loss"], rel=1e-6)
    # the eval loss's standard error over the eval rows, at the winner's best report, and in the last line
    se = best["eval_loss_se"]
    assert 0 < se < best["eval_loss"] and on_disk["eval_metrics"]["eval_loss_se"] == se
    from lora_tune.post_sweep import summary_line

    assert f"eval_loss={best['eval_loss']:.4f}±{se:.4f} test " in summary_line(on_disk, str(sweep_dir))
    # the generation metric's standard error, at evaluations (the row's) and on the test split (a proportion's)
    p, n = test["winner_exact_match"], test["examples"]
    assert test["winner_exact_match_se"] == pytest.approx((p * (1 - p) / (n - 1)) ** 0.5)
    assert "eval_exact_match_se" in best and "base_exact_match_se" in test


def test_best_adapter_loads_with_peft_and_generates(finished_sweep) -> None:
    import torch
    from peft import PeftModel

    from lora_tune.config import QuantConfig
    from lora_tune.model import load_base, load_tokenizer

    sweep_dir, summary, _ = finished_sweep
    adapter = sweep_dir / "best" / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    base = load_base("embedded:tiny", QuantConfig(bits=16))
    tuned = PeftModel.from_pretrained(base, str(adapter))
    tokenizer = load_tokenizer("embedded:tiny")
    batch = tokenizer(["Convert this date to ISO format (YYYY-MM-DD): May 1, 2001"], return_tensors="pt")
    with torch.no_grad():
        out = tuned.generate(**batch, max_new_tokens=5, do_sample=False)
        tuned_logits = tuned(**batch).logits
        with tuned.disable_adapter():
            base_logits = tuned(**batch).logits
    assert out.shape[1] == batch["input_ids"].shape[1] + 5
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "the exported adapter is untrained (lora_B all zero)"
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-4), "the adapter does not change the model's output"


def test_one_offline_wandb_run_per_trial_plus_the_sweep_run(finished_sweep) -> None:
    sweep_dir, _, _ = finished_sweep
    runs = sorted((sweep_dir / "wandb").glob("offline-run-*"))
    trial_runs = [run for run in runs if not run.name.endswith("-sweep")]
    assert len(trial_runs) == 4 and len(runs) == 5
    assert all(list(run.glob("*.wandb")) for run in runs)


def test_the_exported_adapter_is_the_checkpoint_where_the_metric_was_measured(finished_sweep) -> None:
    sweep_dir, summary, _ = finished_sweep
    (trial_dir,) = sweep_dir.glob(f"lora_trial_{summary['trial_id']}_*")
    at_step = [c for c in trial_dir.glob("checkpoint_*")
               if json.loads((c / "metrics.json").read_text())["step"] == summary["step"]]
    assert len(at_step) == 1, "the winner's checkpoint of its best step is kept"
    assert json.loads((at_step[0] / "metrics.json").read_text())["eval_loss"] == summary["value"]
    exported = (sweep_dir / "best" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert exported == (at_step[0] / "adapter" / "adapter_model.safetensors").read_bytes()


def test_a_finished_trial_keeps_its_best_checkpoint_and_its_latest_only(finished_sweep) -> None:
    """ray.num_to_keep=1: of the checkpoints at steps 4, 8 and 12, Ray keeps the best by the sweep's metric and
    (for resuming) the latest; with the default 2 it would keep all three."""
    from lora_tune.results import trial_histories
    from lora_tune.storage import Store

    sweep_dir, _, cfg = finished_sweep
    histories = trial_histories(Store.at(sweep_dir))
    finished = {t: reports for t, reports in histories.items() if reports[-1]["step"] == cfg.max_steps}
    assert finished
    for trial_id, reports in finished.items():
        (trial_dir,) = sweep_dir.glob(f"lora_trial_{trial_id}_*")
        kept = {json.loads((c / "metrics.json").read_text())["step"] for c in trial_dir.glob("checkpoint_*")}
        best = min(reports, key=lambda r: r["eval_loss"])["step"]
        assert kept == {best, cfg.max_steps}, (trial_id, kept, best)


def test_pbt_exploited_trials_train_at_their_own_mutated_learning_rate(tmp_path: Path) -> None:
    """After an exploit a trial continues from another trial's state with its mutated config: every report's lr
    is its current config's lr on the linear schedule (not the donor's, which the restored state would carry).
    24 steps: five perturbation rounds, so an exploited trial reports again after its exploit (an exploit at a
    trial's last report leaves no report with the new config)."""
    from lora_tune.compose import compose_config

    cfg = compose_config(["experiment=tiny", f"output_dir={tmp_path}", "sweep_name=pbt", "wandb.mode=disabled",
                          "scheduler=pbt", "scheduler.perturbation_interval=4", "scheduler.quantile_fraction=0.5",
                          "num_samples=4", "max_steps=24", "train.eval_every=4", "train.lr_scheduler=linear",
                          "train.warmup_ratio=0", "data.max_train_examples=16", "data.exact_match_examples=0",
                          "verbose=0"])
    cfg = with_space(cfg, lr={"key": "train.lr", "type": "loguniform", "low": 1e-6, "high": 1e-1},
                     bits={"key": "quant.bits", "type": "choice", "values": [16]})
    run_sweep(cfg)
    from lora_tune.results import trial_histories
    from lora_tune.storage import Store

    histories = trial_histories(Store.at(tmp_path / "pbt"))
    assert len(histories) == 4
    exploited = 0
    for reports in histories.values():
        lrs = {r["config"]["train.lr"] for r in reports}
        exploited += len(lrs) > 1
        for r in reports:
            expected = r["config"]["train.lr"] * (24 - r["step"]) / 24
            assert r["lr"] == pytest.approx(expected, rel=1e-6, abs=1e-12), (r["step"], r["lr"], expected)
    assert exploited, "PBT exploited no trial"
    rows = json.loads((tmp_path / "pbt" / "results.json").read_text())
    assert all(r["status"] == "TERMINATED" and r["steps"] == 24 for r in rows if r["role"] == "trial")


def test_a_scoring_that_cannot_start_is_one_error_line_and_the_results_stand(tmp_path: Path) -> None:
    """After the trials the driver waits for the winner's scoring at most ray.pending_timeout_s for it to start
    (here no time at all: a task cannot have started the instant it is submitted). The sweep says so in one line,
    writes its results, adapter, summary and report all the same, and exits 1."""
    import sys

    args = ["experiment=tiny", f"output_dir={tmp_path}", "sweep_name=stuck", "wandb.mode=disabled", "num_samples=1",
            "max_steps=4", "data.max_train_examples=16", "verbose=0", "ray.pending_timeout_s=1e-9"]
    done = run_bounded([sys.executable, "-m", "lora_tune.sweep", *args], capture_output=True, text=True,
                       timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("lora_tune: error:")]
    assert len(errors) == 1 and "the winner's test scoring did not start within ray.pending_timeout_s=1e-09 s: it " \
        "needs CPU " in errors[0] and "free: CPU " in errors[0], done.stderr[-3000:]
    sweep = tmp_path / "stuck"
    (row,) = rows_of(sweep)
    summary = json.loads((sweep / "best" / "summary.json").read_text())
    assert summary["trial_id"] == row["trial_id"] and summary["test"]["error"] == errors[0].split("error: ", 1)[1]
    assert (sweep / "best" / "adapter" / "adapter_model.safetensors").is_file()
    assert done.stdout.strip().splitlines()[-1].startswith(f"lora_tune: winner {row['trial_id']} ")
    assert "not scored on the test split" in done.stdout.strip().splitlines()[-1]
