"""After the trials: the results table, the winner's adapter, its test-split scores and best/summary.json.

Everything is written to the sweep's storage (a local folder or a bucket): results.csv/json, best/adapter
(complete or absent: its manifest is written last) and best/summary.json. The winner is the best trial by the
sweep's metric; its adapter is the checkpoint of the very report at which that metric was measured.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lora_tune import __version__
from lora_tune import confirm as confirms
from lora_tune.config import SweepConfig, to_dict
from lora_tune.redaction import redact
from lora_tune.results import finite, sort_rows, trial_row, write_results
from lora_tune.space import column_names, encode_value, overrides_from_params
from lora_tune.storage import Store

ADAPTER_DIR = "adapter"  # inside a trial checkpoint, and under best/


def result_rows(cfg: SweepConfig, grid: Any, failures: dict[str, int]) -> tuple[list[dict], dict[str, Any]]:
    """(rows, trial_id -> Ray Result) for every trial of the sweep."""
    metric_columns = [name for name in cfg.metric_names() if name != "train_loss" or cfg.metric == "train_loss"]
    metric_columns.append("eval_loss_se")  # how far another draw of the eval rows could move eval_loss
    metric_columns += [f"{name}_se" for name in cfg.metric_names() if name not in ("eval_loss", "train_loss")]
    rows, results = [], {}
    for result in grid:
        row = trial_row(result, cfg.metric, cfg.mode, cfg.max_steps, metric_columns, column_names(cfg.search_space),
                        encode_value)
        row["failures"] = failures.get(row["trial_id"], 0)
        rows.append(row)
        results[row["trial_id"]] = result
    return rows, results


def ranked_candidates(rows: list[dict[str, Any]], cfg: SweepConfig) -> list[dict[str, Any]]:
    """The trials that may win, best first by the sweep's metric: the finished ones, then (when none finished) the
    errored ones; the default-LoRA baseline never wins."""
    trials = [r for r in rows if r.get("role") == "trial" and finite(r.get(cfg.metric))]
    finished = [r for r in trials if r["status"] == "TERMINATED"]
    return sort_rows(finished or trials, cfg.metric, cfg.mode)


def checkpoints_by_preference(result: Any, step: int | None, cfg: SweepConfig) -> list[tuple[Any, bool]]:
    """(checkpoint, reported at `step`) for the trial's checkpoints, the one of `step` (where its best metric was
    measured) first."""
    kept = result.best_checkpoints or []
    exact = [(checkpoint, True) for checkpoint, metrics in kept if metrics.get("step") == step]
    others = [result.get_best_checkpoint(cfg.metric, cfg.mode), result.checkpoint]
    return [*exact, *((c, False) for c in others if c is not None)]


def export_adapter(result: Any, step: int | None, cfg: SweepConfig, store: Store, local_best: Path) -> Path:
    """Copy the adapter of the checkpoint at `step` to best/adapter in the sweep's storage (manifest last) and
    to `local_best`. Should that checkpoint be gone (a sweep resumed from a snapshot older than Ray's pruning),
    the trial's best kept one is exported, with a warning."""
    for checkpoint, at_step in checkpoints_by_preference(result, step, cfg):
        try:
            with tempfile.TemporaryDirectory(prefix="lora_tune-best-") as tmp, checkpoint.as_directory() as folder:
                staged = Path(tmp) / ADAPTER_DIR
                shutil.copytree(Path(folder) / ADAPTER_DIR, staged)
                store.put_dir(staged, f"best/{ADAPTER_DIR}")
                if not store.is_local:
                    shutil.rmtree(local_best / ADAPTER_DIR, ignore_errors=True)
                    shutil.copytree(staged, local_best / ADAPTER_DIR)
        except (FileNotFoundError, OSError):
            continue
        if not at_step:
            print(f"lora_tune: warning: the checkpoint of step {step} is gone; exported the trial's best kept one",
                  file=sys.stderr)
        return local_best / ADAPTER_DIR
    raise RuntimeError(f"the winner's checkpoints are missing from {store.uri}")


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


def export_winner(ranked: list[dict[str, Any]], results: dict[str, Any], cfg: SweepConfig, store: Store,
                  local_best: Path) -> dict[str, Any] | None:
    """The best trial whose adapter can be exported (its checkpoints are in storage), exported."""
    for row in ranked:
        try:
            export_adapter(results[row["trial_id"]], row.get("best_step"), cfg, store, local_best)
            return row
        except RuntimeError as exc:
            print(f"lora_tune: warning: {exc}; the next best trial wins", file=sys.stderr)
    return None


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
           start_scoring: Any, references: dict[str, Any] | None = None, timings: Any = None,
           confirm: Any = None) -> dict[str, Any] | None:
    """Results table (the baseline's row included), winner adapter, test-split scores and summary.json;
    `start_scoring(trial_cfg, adapter location)` starts the winner's test scoring where the sweep's resources are
    (a Task); `confirm(points)` runs the confirmation trials (confirm.py) meanwhile and returns their Results;
    `timings()` says where the sweep's time went (summary.json's `timings`)."""
    rows, results = result_rows(cfg, grid, failures)
    rows = add_baseline(rows, references, cfg, tracker)
    write_results(store, rows)
    local_best = Path(store.path("best")) if store.is_local else local_dir / "best"
    ranked = ranked_candidates(rows, cfg)
    winner = export_winner(ranked, results, cfg, store, local_best)
    if winner is None:
        print("lora_tune: no trial produced a finite metric and an adapter; see results.csv", file=sys.stderr)
        tracker.log_sweep(rows, None, redact(to_dict(cfg)))
        return None
    adapter = f"{store.uri}/best/{ADAPTER_DIR}"
    scoring = start_scoring(winner_config(cfg, results, winner), adapter)  # beside the confirmation
    confirmation = None
    top = confirms.candidates(ranked, cfg) if confirm is not None else []
    if top:
        rows, confirmation = confirmed_rows(cfg, rows, top, results, confirm)
        write_results(store, rows)
        order = confirms.reranked(ranked, rows, cfg)
        if order[0]["trial_id"] != winner["trial_id"]:
            drain(scoring)  # its process reads best/adapter, which the confirmed winner's export replaces
            searched, winner = winner, export_winner(order, results, cfg, store, local_best) or winner
            print(f"lora_tune: confirmation over seeds {confirmation['seeds']}: {winner['trial_id']} wins by the "
                  f"mean {cfg.metric} (the search's best: {searched['trial_id']})", file=sys.stderr, flush=True)
            scoring = start_scoring(winner_config(cfg, results, winner), adapter)
        winner = next(row for row in rows if row["trial_id"] == winner["trial_id"])
    trial_cfg = winner_config(cfg, results, winner)
    test = {**winner_scores(scoring, cfg), **reference_scores(references)}
    summary = summarise(cfg, winner, trial_cfg, test, store, tracker)
    if confirmation is not None:
        summary["confirmation"] = confirmation
    if timings is not None:
        summary["timings"] = timings()
    store.write_json("best/summary.json", summary)
    if not store.is_local:
        (local_best / "summary.json").write_text(store.read_text("best/summary.json"))
    tracker.log_sweep(rows, summary, redact(to_dict(cfg)), local_best)  # trials table + model artifact + link
    return summary


def winner_config(cfg: SweepConfig, results: dict[str, Any], winner: dict[str, Any]) -> Any:
    return cfg.trial_config(overrides_from_params(results[winner["trial_id"]].config, cfg.search_space))


def confirmed_rows(cfg: SweepConfig, rows: list[dict[str, Any]], top: list[dict[str, Any]], results: dict[str, Any],
                   confirm: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The rows with the confirmation's columns, and summary.json's `confirmation`; a confirmation that fails is
    a warning (the search's ranking stands)."""
    params = {row["trial_id"]: results[row["trial_id"]].config for row in top}
    try:
        grid = confirm(confirms.points(top, params, cfg))
    except Exception as exc:  # noqa: BLE001 - the search's own winner stands without the confirmation
        reason = (str(exc).strip().splitlines() or [""])[-1][:300]
        print(f"lora_tune: warning: the confirmation of the top {len(top)} configs failed ({reason})",
              file=sys.stderr)
        return rows, None
    found = confirms.values_by_candidate([confirm_row(result, cfg) for result in grid], cfg)
    rows = confirms.with_confirmation(rows, top, found, cfg)
    return rows, confirms.summary(rows, top[0], cfg)


def confirm_row(result: Any, cfg: SweepConfig) -> dict[str, Any]:
    """A confirmation trial's status, best value by the metric, seed and the search trial it repeats."""
    row = trial_row(result, cfg.metric, cfg.mode, cfg.max_steps, [cfg.metric], {}, encode_value)
    config = result.config or {}
    return {**row, "seed": config.get("seed"), confirms.CANDIDATE: config.get(confirms.CANDIDATE)}


def drain(scoring: Any) -> None:
    """Wait for a scoring whose result is no longer wanted to end (whatever it ends with)."""
    with contextlib.suppress(Exception):  # its result is discarded, whatever ended it
        scoring.result(None)  # no start deadline: it waits for the confirmation's resources at most


def winner_scores(scoring: Any, cfg: SweepConfig) -> dict[str, Any]:
    """The winner's test scores (the started scoring task's value); a scoring that never got resources to start
    is an error in summary.json's `test` (one line on stderr), and the sweep's results, adapter and summary are
    written all the same."""
    from lora_tune.tuner import TaskStuck

    try:
        return scoring.result(cfg.ray.pending_timeout_s)
    except TaskStuck as exc:
        print(f"lora_tune: error: {exc}", file=sys.stderr, flush=True)
        return {"error": str(exc)}


def spread(summary: dict[str, Any]) -> str:
    """'±SE' after the winner's eval_loss (differences between trials smaller than it are noise of the eval rows),
    and with a confirmation the winner's mean and spread over its seeds."""
    se = summary.get("eval_metrics", {}).get("eval_loss_se")
    out = f"±{se:.4f}" if summary["metric"] == "eval_loss" and isinstance(se, float) else ""
    confirmed = [c for c in (summary.get("confirmation") or {}).get("configs", [])
                 if c["trial_id"] == summary["trial_id"]]
    for config in confirmed:
        std = config["confirm_std"]
        out += (f" (seeds {config['confirm_seeds'].replace(' ', ',')}: mean {config['confirm_mean']:.4f}"
                + (f"±{std:.4f}" if isinstance(std, float) else "") + ")")
    return out


def summary_line(summary: dict[str, Any] | None, location: str) -> str:
    """The last line a sweep prints: the winner, its metric, its test scores against the base and default LoRA."""
    if summary is None:
        return f"lora_tune: no winner; results in {location}/results.csv"
    test = summary["test"]
    if "error" in test:
        return (f"lora_tune: winner {summary['trial_id']} {summary['metric']}={summary['value']:.4f}, not scored on "
                f"the test split (see the error above); adapter {summary['adapter']}")
    name = test.get("headline", "exact_match")
    se = test.get(f"winner_{name}_se")
    others = [f"{label} {test[key]:.3f}" for label, key in (("base", f"base_{name}"),
                                                            ("default LoRA", f"default_lora_{name}"))
              if isinstance(test.get(key), (int, float))]
    compared = f" ({', '.join(others)})" if others else ""
    return (f"lora_tune: winner {summary['trial_id']} {summary['metric']}={summary['value']:.4f}{spread(summary)} "
            f"test {name.replace('_', ' ')} {test[f'winner_{name}']:.3f}{f'±{se:.3f}' if se is not None else ''}"
            f"{compared} adapter {summary['adapter']}")
