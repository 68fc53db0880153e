"""Shared helpers for the benchmarks: composing configs, running a sweep, timing, machine load."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_tune.compose import compose_config
from lora_tune.config import SweepConfig


def compose(overrides: list[str], out: Path, name: str) -> SweepConfig:
    """The sweep config the command line would compose, writing under `out/name`, silent (verbose=0)."""
    cfg = compose_config([*overrides, f"output_dir={out}", f"sweep_name={name}", "ray.storage_path=null"])
    return dataclasses.replace(cfg, verbose=0)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds)."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def load() -> list[float]:
    """1, 5 and 15 minute load averages (other users of the 2 cores make timings noisy)."""
    return [round(x, 2) for x in os.getloadavg()]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def sweep_once(cfg: SweepConfig) -> dict[str, Any]:
    """Run one sweep as the command line does; its wall time and phases (summary.json's `timings`), rows,
    every result Ray recorded (with timestamps), the best metric and the steps trained."""
    from lora_tune.preflight import sweep_location
    from lora_tune.results import trial_histories
    from lora_tune.storage import Store
    from lora_tune.sweep import run_sweep

    started, load_before = time.time(), load()
    summary, wall = timed(lambda: run_sweep(cfg))
    store = Store.at(sweep_location(cfg))
    rows = store.read_json("results.json")
    results = [r for history in trial_histories(store).values() for r in history]
    trials = [r for r in rows if r.get("role", "trial") == "trial"]
    losses = [r["eval_loss"] for r in trials if isinstance(r.get("eval_loss"), float)]
    return {"wall_s": round(wall, 2), "started": started, "rows": rows, "results": results,
            "phases": (summary or {}).get("timings"), "summary": summary,
            "best_eval_loss": min(losses) if losses else None, "winner": summary and summary["trial_id"],
            "steps_trained": sum(int(r.get("steps") or 0) for r in trials),
            "stopped_early": sum(bool(r.get("stopped_early")) for r in trials), "load_avg": [load_before, load()]}


def public(run: dict[str, Any]) -> dict[str, Any]:
    """What goes into results.json of a sweep run: no raw Ray results or rows (kept in memory)."""
    keys = ("wall_s", "phases", "best_eval_loss", "winner", "steps_trained", "stopped_early", "load_avg",
            "work_core_s")
    return {k: run[k] for k in keys if k in run}


def time_to_reach(results: list[dict[str, Any]], started: float, target: float, metric: str = "eval_loss"
                  ) -> float | None:
    """Seconds from `started` (time.time()) to the first reported `metric` <= target (Ray's result timestamps
    are whole seconds)."""
    hits = [r["timestamp"] for r in results if r.get(metric) is not None and r[metric] <= target]
    return round(min(hits) - started, 1) if hits else None


# Two-sided 95 % quantiles of Student's t by degrees of freedom (seeds - 1): with few seeds, two standard errors
# is far too narrow an interval (4 seeds: 3.18). Beyond 10 seeds the 10's value, which errs on the wide side.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired(diffs: list[float]) -> dict[str, Any]:
    """Seed-by-seed differences between two arms (a seed fixes the data and the initial adapter of both): their
    mean, its standard error and 95 % interval; `within_noise`: the interval holds 0 (None for one seed)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "se": None, "interval95": None, "seeds": len(diffs), "within_noise": None}
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    half = T95[min(len(diffs) - 1, 10)] * se
    return {"mean": mean, "se": se, "interval95": [mean - half, mean + half], "seeds": len(diffs),
            "within_noise": mean - half <= 0 <= mean + half}


def paired_text(diff: dict[str, Any]) -> str:
    """'+0.0068 ± 0.0043 (standard error over 4 seeds; 95 % interval [...] holds 0: ...)' for a `paired` result."""
    if diff["se"] is None:
        return f"{diff['mean']:+.4f} (one seed: no interval, so no verdict beyond the numbers)"
    low, high = diff["interval95"]
    verdict = "holds 0: within the seeds' noise" if diff["within_noise"] else "excludes 0"
    return (f"{diff['mean']:+.4f} ± {diff['se']:.4f} (standard error over {diff['seeds']} seeds; 95 % interval "
            f"[{low:+.4f}, {high:+.4f}] {verdict})")
