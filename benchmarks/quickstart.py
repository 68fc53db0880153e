"""P3: the orchestration overhead of the quickstart itself (`make sweep`: 8 trials x 30 steps, ASHA, the default
LoRA baseline and the base model's scores beside the trials, W&B offline).

The ideal is the same work without Ray, measured right after: the data tokenized once, then in a pool of 2
processes (1 thread each, each keeping its loaded base for its next job like a reused Ray actor) the reference
job (base scores + default-LoRA baseline) and every trial's config trained for the steps the sweep let it run,
then the winner's test scoring on both cores. Ratio = sweep wall time / ideal wall time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import compose, load, public, ratio, sweep_once, timed
from benchmarks.settings import BenchSettings
from lora_tune.config import SweepConfig, TrialConfig


class StepsDone(Exception):
    """Raised from the report callback once a bare trial has run the steps its sweep trial ran."""


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def bare_trial(trial_cfg: TrialConfig, steps: int, data: Any) -> int:
    """Train `trial_cfg` (its full LR schedule) until step `steps`, as ASHA let the sweep's trial run."""
    from lora_tune.train import run_trial

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        if metrics["step"] >= steps:
            raise StepsDone

    with tempfile.TemporaryDirectory(prefix="lora_tune-bare-") as root, contextlib.suppress(StepsDone):
        run_trial(trial_cfg, report, checkpoint_root=root, num_threads=1, data=data)
    return steps


def bare_references(cfg: SweepConfig, data: Any) -> list[str]:
    """The base model's test scores and the default-LoRA baseline, as the sweep's reference task computes them."""
    from lora_tune.baseline import references

    with tempfile.TemporaryDirectory(prefix="lora_tune-bare-ref-") as location:
        return sorted(references(cfg, location, data, 1))


def trial_jobs(cfg: SweepConfig, rows: list[dict[str, Any]]) -> list[tuple[TrialConfig, int]]:
    """(trial config, steps it ran) of every trial row of the sweep (the baseline row is the reference job's)."""
    from lora_tune.space import column_names, decode_value

    columns = column_names(cfg.search_space)
    return [(cfg.trial_config({key: decode_value(row[col]) for key, col in columns.items()}), int(row["steps"]))
            for row in rows if row.get("role", "trial") == "trial" and row.get("steps")]


def ideal_run(cfg: SweepConfig, sweep: dict[str, Any], workers: int) -> dict[str, Any]:
    """The sweep's work without Ray (module docstring); wall seconds of each part."""
    from lora_tune.config import TrialConfig as Trial
    from lora_tune.evaluate import score_on_test
    from lora_tune.sweep import shared_task_data

    data, data_s = timed(lambda: shared_task_data(cfg))
    jobs = trial_jobs(cfg, sweep["rows"])

    def pool_work() -> None:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=one_thread) as pool:
            futures = [pool.submit(bare_references, cfg, data) if cfg.eval.baseline else None]
            futures += [pool.submit(bare_trial, trial_cfg, steps, data) for trial_cfg, steps in jobs]
            for future in futures:
                if future is not None:
                    future.result()

    _, pool_s = timed(pool_work)
    summary = sweep["summary"]
    winner_cfg = Trial.from_dict(summary["config"])
    _, score_s = timed(lambda: score_on_test(winner_cfg, summary["adapter"], workers))
    return {"data_s": round(data_s, 2), "pool_s": round(pool_s, 2), "winner_scoring_s": round(score_s, 2),
            "ideal_s": round(data_s + pool_s + score_s, 2), "trials": len(jobs),
            "steps": sum(steps for _, steps in jobs)}


def work_core_s(cfg: SweepConfig, sweep: dict[str, Any]) -> dict[str, int]:
    """Core-seconds of work the sweep's trials phase held (1 CPU each): every trial's own time (its last
    time_total_s) and, beside them, the reference job: the base model's test scoring (from the first trial's start
    to the baseline's), the default LoRA's training and its test scoring."""
    from lora_tune.baseline import BASELINE
    from lora_tune.preflight import sweep_location
    from lora_tune.storage import Store

    own: dict[str, float] = {}
    for result in sweep["results"]:
        own[result["trial_id"]] = max(own.get(result["trial_id"], 0.0), result["time_total_s"])
    work = {"trials": round(sum(own.values()))}
    if cfg.eval.baseline:
        baseline = Store.at(sweep_location(cfg)).read_json(f"{BASELINE}/result.json")
        first_start = min(r["timestamp"] - r["time_total_s"] for r in sweep["results"])
        trained = baseline["history"][-1]["timestamp"]
        work |= {"base_scoring": round(baseline["started"] - first_start),
                 "baseline_training": round(trained - baseline["started"]),
                 "baseline_scoring": round(baseline["finished"] - trained)}
    return work


def p3_overhead(s: BenchSettings, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The quickstart's wall time vs the same work done bare; returns (section, the sweep run)."""
    import torch

    threads = torch.get_num_threads()
    cfg = compose(s.quickstart_overrides(), out, "p3-quickstart")
    sweep = sweep_once(cfg)
    sweep["work_core_s"] = work_core_s(cfg, sweep)
    bare_load = load()
    try:
        ideal = ideal_run(cfg, sweep, s.max_concurrent)
    finally:
        torch.set_num_threads(threads)
    phases = sweep["phases"] or {}
    full = ratio(sweep["wall_s"], ideal["ideal_s"])
    return {
        "what": "the quickstart's wall time / the same work without Ray (2 processes, 1 thread each)",
        "settings": {"sweep": "experiment=quickstart " + " ".join(s.quickstart_overrides()),
                     "concurrency": s.max_concurrent, "bare_threads": 1},
        "raw": {"sweep": public(sweep), "ideal": ideal, "bare_load_avg": [bare_load, load()]},
        "ratio": {"sweep_over_ideal": full,
                  "trials_phase_over_pool": ratio(phases.get("trials_s"), ideal["pool_s"])},
        "target": "<= 1.15x (the whole run_sweep wall time: start-up, trials, tail)",
        "met": None if full is None else full <= 1.15,
    }, sweep
