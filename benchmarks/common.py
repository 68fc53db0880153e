"""Shared helpers for the benchmarks: composing configs, timing, machine load, reading Ray trial results."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.settings import BenchSettings
from lora_tune.config import SweepConfig
from lora_tune.compose import compose_config


def compose(s: BenchSettings, out: Path, name: str, extra: list[str] | None = None) -> SweepConfig:
    """The composed sweep config for one benchmark run, writing under `out/name`, silent (verbose=0)."""
    cfg = compose_config([*s.overrides(), f"output_dir={out}", f"sweep_name={name}", *(extra or [])])
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


def trial_results(experiment_dir: Path) -> list[dict[str, Any]]:
    """Every result Ray Tune recorded (each trial dir's result.json lines), with its trial dir name."""
    rows = []
    for path in sorted(experiment_dir.glob("*/result.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append({**json.loads(line), "trial_dir": path.parent.name})
    return rows


def time_to_reach(results: list[dict[str, Any]], started: float, target: float, metric: str = "eval_loss"
                  ) -> float | None:
    """Seconds from `started` (time.time()) to the first reported `metric` <= target; Ray stamps whole seconds."""
    hits = [r["timestamp"] for r in results if r.get(metric) is not None and r[metric] <= target]
    return round(min(hits) - started, 1) if hits else None


def phases(results: list[dict[str, Any]], started: float, wall: float) -> dict[str, float | None]:
    """Where a sweep's wall time went: before the first trial started (Ray start, workers, base load), the
    trials, and after the last result (results table, winner export, test-split evaluation, Ray shutdown)."""
    if not results:
        return {"before_first_trial_s": None, "trials_span_s": None, "after_last_result_s": None}
    first = min(r["timestamp"] - r.get("time_total_s", 0) for r in results)
    last = max(r["timestamp"] for r in results)
    return {"before_first_trial_s": round(first - started, 1), "trials_span_s": round(last - first, 1),
            "after_last_result_s": round(started + wall - last, 1)}


def trials_span(results: list[dict[str, Any]]) -> float | None:
    """Seconds from the first trial's start to the last result (Ray's timestamps, whole seconds)."""
    if not results:
        return None
    starts = [r["timestamp"] - r.get("time_total_s", 0) for r in results]
    return round(max(r["timestamp"] for r in results) - min(starts), 1)
