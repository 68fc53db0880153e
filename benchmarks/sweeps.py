"""P1 (ASHA vs FIFO on the same sampled configs) and P3 (orchestration overhead vs bare `run_trial` calls).

Both call `lora_tune.sweep.run_sweep` on configs composed exactly as the command line would, with local Ray,
W&B disabled, 2 concurrent trials of 1 CPU each, outputs under a temporary folder.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import compose, load, median, phases, ratio, time_to_reach, timed, trial_results, trials_span
from benchmarks.settings import BenchSettings
from lora_tune.config import SweepConfig


def sweep_once(cfg: SweepConfig) -> dict[str, Any]:
    """Run one sweep; its wall time, rows, every Ray result (timestamps) and the best metric."""
    from lora_tune.sweep import run_sweep, sweep_dir_of

    started, load_before = time.time(), load()
    summary, wall = timed(lambda: run_sweep(cfg))
    sweep_dir = sweep_dir_of(cfg)
    rows = json.loads((sweep_dir / "results.json").read_text())
    results = trial_results(sweep_dir)
    losses = [r["eval_loss"] for r in rows if isinstance(r.get("eval_loss"), float)]
    return {"wall_s": round(wall, 2), "started": started, "rows": rows, "results": results,
            "phases": phases(results, started, wall),
            "best_eval_loss": min(losses) if losses else None, "winner": summary and summary["trial_id"],
            "steps_trained": sum(int(r.get("steps") or 0) for r in rows),
            "stopped_early": sum(bool(r.get("stopped_early")) for r in rows), "load_avg": [load_before, load()]}


def config_key(row: dict[str, Any], cfg: SweepConfig) -> tuple:
    """The sampled hyperparameters of a results row (to check both sweeps ran the same configs)."""
    return tuple(str(row.get(name)) for name in sorted(cfg.search_space))


def public(run: dict[str, Any]) -> dict[str, Any]:
    """What goes into results.json: no raw Ray results (kept in memory for time-to-target)."""
    keys = ("wall_s", "phases", "best_eval_loss", "winner", "steps_trained", "stopped_early", "load_avg")
    return {k: run[k] for k in keys}


def p1_asha_vs_fifo(s: BenchSettings, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """FIFO then ASHA over the same `num_samples` configs (same seed); returns (section, raw runs)."""
    runs = {}
    for scheduler in ("fifo", "asha"):
        cfg = compose(s, out, f"p1-{scheduler}", [f"scheduler={scheduler}", f"num_samples={s.num_samples}",
                                                  f"max_steps={s.max_steps}"])
        runs[scheduler] = sweep_once(cfg)
    fifo, asha = runs["fifo"], runs["asha"]
    same = sorted(config_key(r, cfg) for r in fifo["rows"]) == sorted(config_key(r, cfg) for r in asha["rows"])
    loss_ratio = ratio(asha["best_eval_loss"], fifo["best_eval_loss"])
    time_ratio = ratio(asha["wall_s"], fifo["wall_s"])
    met = None if loss_ratio is None or time_ratio is None else loss_ratio <= 1.02 and time_ratio <= 0.40
    section = {
        "what": "ASHA vs FIFO on the same sampled configs: best eval loss and sweep wall time",
        "settings": {"num_samples": s.num_samples, "max_steps": s.max_steps, "eval_every": s.eval_every,
                     "grace_period": s.grace_period, "reduction_factor": s.reduction_factor,
                     "search_space": "default", "concurrency": s.max_concurrent},
        "raw": {"fifo": public(fifo), "asha": public(asha), "same_configs": same},
        "ratio": {"time_asha_over_fifo": time_ratio, "loss_asha_over_fifo": loss_ratio,
                  "steps_asha_over_fifo": ratio(asha["steps_trained"], fifo["steps_trained"])},
        "target": "best loss within 2 % (loss ratio <= 1.02) and time <= 0.40x",
        "met": met,
    }
    return section, runs


def bare_trials(cfg: SweepConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the sweep's configs one after another in this process with plain `run_trial` (1 thread each)."""
    from lora_tune import model as models
    from lora_tune.space import column_names, decode_value
    from lora_tune.sweep import shared_task_data
    from lora_tune.train import run_trial

    models.BASE_CACHE.clear()
    data = shared_task_data(cfg)
    columns = column_names(cfg.search_space)
    timings = []
    for row in rows:
        trial_cfg = cfg.trial_config({key: decode_value(row[col]) for key, col in columns.items()})
        with tempfile.TemporaryDirectory() as ckpt:
            metrics, wall = timed(functools.partial(run_trial, trial_cfg, lambda m, c: None, checkpoint_root=ckpt,
                                                    num_threads=1, data=data))
        timings.append({"trial_id": row["trial_id"], "wall_s": round(wall, 2), "base_reused": metrics["base_reused"],
                        "tokens_per_s": metrics["tokens_per_s"], "eval_loss": metrics["eval_loss"]})
    models.BASE_CACHE.clear()
    return timings


def p3_overhead(s: BenchSettings, out: Path) -> dict[str, Any]:
    """Sweep wall time vs (sum of bare run_trial times) / concurrency, same configs (FIFO, every trial runs)."""
    import torch

    threads = torch.get_num_threads()
    cfg = compose(s, out, "p3-sweep", ["scheduler=fifo", f"num_samples={s.p3_samples}", f"max_steps={s.p3_steps}",
                                       f"train.eval_every={max(1, s.p3_steps // 2)}"])
    sweep = sweep_once(cfg)
    bare_load = load()
    try:
        bare = bare_trials(cfg, sweep["rows"])
    finally:
        torch.set_num_threads(threads)
    ideal = sum(t["wall_s"] for t in bare) / s.max_concurrent
    span = trials_span(sweep["results"])
    full = ratio(sweep["wall_s"], ideal)
    return {
        "what": "orchestration overhead: sweep wall time / (sum of bare run_trial times / concurrency)",
        "settings": {"num_samples": s.p3_samples, "max_steps": s.p3_steps, "scheduler": "fifo",
                     "concurrency": s.max_concurrent, "bare_threads": 1},
        "raw": {"sweep": public(sweep), "bare_trials": bare, "bare_load_avg": [bare_load, load()],
                "bare_sum_s": round(sum(t["wall_s"] for t in bare), 2), "ideal_s": round(ideal, 2),
                "trials_span_s": span, "median_bare_trial_s": median([t["wall_s"] for t in bare])},
        "ratio": {"sweep_over_ideal": full, "trials_span_over_ideal": ratio(span, ideal)},
        "target": "<= 1.15x (judged on the whole run_sweep wall time: Ray start, trials, results, test-split eval)",
        "met": None if full is None else full <= 1.15,
    }


def time_to_target(run: dict[str, Any], target: float) -> float | None:
    """Seconds from a sweep's start to its first eval_loss <= target."""
    return time_to_reach(run["results"], run["started"], target)
