"""After the trials: the results table, the winner's adapter, its test-split scores and best/summary.json.

Everything is written to the sweep's storage (a local folder or a bucket): results.csv/json, best/adapter
(complete or absent: its manifest is written last) and best/summary.json. The winner is the best trial by the
sweep's metric; its adapter is the checkpoint of the very report at which that metric was measured.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lora_tune import __version__
from lora_tune.config import SweepConfig, to_dict
from lora_tune.redaction import redact
from lora_tune.results import best, trial_row, write_results
from lora_tune.space import column_names, encode_value, overrides_from_params
from lora_tune.storage import Store

ADAPTER_DIR = "adapter"  # inside a trial checkpoint, and under best/


def result_rows(cfg: SweepConfig, grid: Any, failures: dict[str, int]) -> tuple[list[dict], dict[str, Any]]:
    """(rows, trial_id -> Ray Result) for every trial of the sweep."""
    metric_columns = [name for name in cfg.metric_names() if name != "train_loss" or cfg.metric == "train_loss"]
    rows, results = [], {}
    for result in grid:
        row = trial_row(result, cfg.metric, cfg.mode, cfg.max_steps, metric_columns, column_names(cfg.search_space),
                        encode_value)
        row["failures"] = failures.get(row["trial_id"], 0)
        rows.append(row)
        results[row["trial_id"]] = result
    return rows, results


def pick_winner(rows: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, Any] | None:
    """The best trial by the sweep's metric; the default-LoRA baseline never wins."""
    return best([r for r in rows if r.get("role") == "trial"], cfg.mode, lambda row: row.get(cfg.metric))


def checkpoint_at(result: Any, step: int | None, cfg: SweepConfig) -> Any:
    """The trial's checkpoint reported at `step` (where its best metric was measured)."""
    for checkpoint, metrics in result.best_checkpoints or []:
        if metrics.get("step") == step:
            return checkpoint
    print(f"lora_tune: warning: no checkpoint kept at step {step}; exporting the trial's best kept one",
          file=sys.stderr)
    return result.get_best_checkpoint(cfg.metric, cfg.mode) or result.checkpoint


def export_adapter(checkpoint: Any, store: Store, local_best: Path) -> Path:
    """Copy the checkpoint's adapter to best/adapter in the sweep's storage (manifest last) and to `local_best`."""
    with tempfile.TemporaryDirectory(prefix="lora_tune-best-") as tmp, checkpoint.as_directory() as folder:
        staged = Path(tmp) / ADAPTER_DIR
        shutil.copytree(Path(folder) / ADAPTER_DIR, staged)
        store.put_dir(staged, f"best/{ADAPTER_DIR}")
        if not store.is_local:
            shutil.rmtree(local_best / ADAPTER_DIR, ignore_errors=True)
            shutil.copytree(staged, local_best / ADAPTER_DIR)
    return local_best / ADAPTER_DIR


def summarise(cfg: SweepConfig, winner: dict[str, Any], trial_cfg: Any, test: dict[str, Any], store: Store,
              tracker: Any) -> dict[str, Any]:
    return {
        "trial_id": winner["trial_id"], "metric": cfg.metric, "mode": cfg.mode, "value": winner[cfg.metric],
        "step": winner.get("best_step"),
        "eval_metrics": {k: v for k, v in winner.items() if k.startswith("eval_")}, "test": test,
        "base_model": cfg.model.name_or_path, "bits": trial_cfg.quant.bits,
        "hyperparameters": {k: v for k, v in winner.items() if k in cfg.search_space},
        "config": redact(trial_cfg.to_dict()), "adapter": f"{store.uri}/best/{ADAPTER_DIR}", "sweep": store.uri,
        "lora_tune_version": __version__, "wandb": tracker.refs(),
    }


def reference_scores(references: dict[str, Any] | None) -> dict[str, Any]:
    """The base model's and the default LoRA's test scores (baseline.py), for summary.json's `test`."""
    if not references:
        return {"references_missing": "the reference task failed; see the log"}
    from lora_tune.baseline import DEFAULT_LORA

    out = dict(references.get("base") or {})
    baseline = references.get("baseline")
    if baseline:
        out |= baseline["test"]
        out["default_lora"] = {k: v for k, v in DEFAULT_LORA.items() if k != "peft.method"}
        out["default_lora_steps"] = baseline["history"][-1]["step"] if baseline["history"] else 0
    return out


def add_baseline(rows: list[dict[str, Any]], references: dict[str, Any] | None, cfg: SweepConfig,
                 tracker: Any) -> list[dict[str, Any]]:
    """The baseline trial's row (role=baseline) and its W&B run, from what the reference task returned."""
    from lora_tune.baseline import BASELINE, baseline_row

    baseline = (references or {}).get("baseline")
    if not baseline:
        return rows
    tracker.trial_started(BASELINE, baseline["config"], role=BASELINE)
    for report in baseline["history"]:
        tracker.trial_result(BASELINE, report)
    tracker.trial_ended(BASELINE, {"status": "TERMINATED", "steps": baseline["history"][-1]["step"],
                                   "stopped_early": False})
    return [*rows, baseline_row(baseline, cfg, column_names(cfg.search_space))]


def finish(cfg: SweepConfig, grid: Any, store: Store, local_dir: Path, tracker: Any, failures: dict[str, int],
           score_on_test: Any, references: dict[str, Any] | None = None,
           timings: Any = None) -> dict[str, Any] | None:
    """Results table (the baseline's row included), winner adapter, test-split scores and summary.json;
    `score_on_test(trial_cfg, adapter location)` scores the winner where the sweep's resources are;
    `timings()` says where the sweep's time went (summary.json's `timings`)."""
    rows, results = result_rows(cfg, grid, failures)
    rows = add_baseline(rows, references, cfg, tracker)
    write_results(store, rows)
    winner = pick_winner(rows, cfg)
    if winner is None:
        print("lora_tune: no trial produced a finite metric; see results.csv", file=sys.stderr)
        tracker.log_sweep(rows, None, redact(to_dict(cfg)))
        return None
    result = results[winner["trial_id"]]
    trial_cfg = cfg.trial_config(overrides_from_params(result.config, cfg.search_space))
    local_best = Path(store.path("best")) if store.is_local else local_dir / "best"
    export_adapter(checkpoint_at(result, winner.get("best_step"), cfg), store, local_best)
    test = {**score_on_test(trial_cfg, f"{store.uri}/best/{ADAPTER_DIR}"), **reference_scores(references)}
    summary = summarise(cfg, winner, trial_cfg, test, store, tracker)
    if timings is not None:
        summary["timings"] = timings()
    store.write_json("best/summary.json", summary)
    if not store.is_local:
        (local_best / "summary.json").write_text(store.read_text("best/summary.json"))
    tracker.log_sweep(rows, summary, redact(to_dict(cfg)), local_best)  # trials table + model artifact + link
    return summary


def summary_line(summary: dict[str, Any] | None, location: str) -> str:
    """The last line a sweep prints: the winner, its metric, its test scores against the base and default LoRA."""
    if summary is None:
        return f"lora_tune: no winner; results in {location}/results.csv"
    test = summary["test"]
    name = test.get("headline", "exact_match")
    others = [f"{label} {test[key]:.3f}" for label, key in (("base", f"base_{name}"),
                                                            ("default LoRA", f"default_lora_{name}"))
              if isinstance(test.get(key), (int, float))]
    compared = f" ({', '.join(others)})" if others else ""
    return (f"lora_tune: winner {summary['trial_id']} {summary['metric']}={summary['value']:.4f} "
            f"test {name.replace('_', ' ')} {test[f'winner_{name}']:.3f}{compared} adapter {summary['adapter']}")
