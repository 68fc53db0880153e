"""The sweep's results table: one row per trial from Ray Tune's results, the best by a metric, the files.

Pure Python (no Ray import): a trial's result is read through the attributes of Ray's `Result` (`metrics`,
`metrics_dataframe`, `config`, `path`, `error`), and Ray's per-trial `result.json` files as JSON lines.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

LEADING_COLUMNS = ["trial_id", "role", "status", "stopped_early", "steps", "eval_loss"]
# Per-trial measurements copied from the trial's last report into its row.
LAST_REPORT_COLUMNS = ("train_loss", "tokens_per_s", "peak_mem_mb", "peak_mem_measure", "peak_reserved_mb",
                       "device_mem_mb", "trainable_params", "node_id", "workers",
                       "eval_time_frac", "checkpoint_time_frac", "checkpoint_bytes")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best(items: Iterable[Any], mode: str, value: Callable[[Any], Any]) -> Any:
    """The item whose finite `value(item)` is lowest (mode=min) or highest (mode=max); None when none has one."""
    scored = [item for item in items if finite(value(item))]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=value)


def sort_rows(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Best first; rows without a finite metric last."""
    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(metric)
        if not finite(value):
            return (1, 0.0)
        return (0, value if mode == "min" else -value)
    return sorted(rows, key=key)


def best_report(history: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The report at which a trial's `metric` was best; on ties the latest, as Ray Tune keeps the latest checkpoint
    among equal scores (so the winner's adapter is the checkpoint of this very report)."""
    return best(list(reversed(history)), mode, lambda report: report.get(metric))


def trial_id_of(result: Any) -> str:
    metrics = result.metrics or {}
    in_path = re.search(r"_([0-9a-f]{5}_\d{5})_", str(result.path).rsplit("/", 1)[-1])
    return metrics.get("trial_id") or (in_path.group(1) if in_path else str(result.path).rsplit("/", 1)[-1])


def trial_row(result: Any, metric: str, mode: str, max_steps: int, metric_columns: list[str],
              param_columns: dict[str, str], encode: Callable[[Any], Any]) -> dict[str, Any]:
    """One results row: status, early stop, the metrics at the trial's best report and its hyperparameters."""
    metrics = result.metrics or {}
    history = result.metrics_dataframe
    reports = history.to_dict("records") if history is not None else []
    steps = int(metrics.get("step", 0) or 0)
    row: dict[str, Any] = {"trial_id": trial_id_of(result), "role": "trial",
                           "status": "ERROR" if result.error else "TERMINATED",
                           "stopped_early": bool(not result.error and steps < max_steps), "steps": steps}
    at_best = best_report(reports, metric, mode) or {}
    for name in metric_columns:
        value = at_best.get(name)
        row[name] = float(value) if finite(value) else None
    row["best_step"] = int(at_best["step"]) if "step" in at_best else None
    for key, column in param_columns.items():
        row[column] = encode((result.config or {}).get(key))
    for name in LAST_REPORT_COLUMNS:  # the metric itself (train_loss) stays the best report's
        row.setdefault(name, metrics.get(name))
    row["resumed_from_step"] = metrics.get("resumed_from_step", 0)
    row["error"] = str(result.error).strip().splitlines()[-1][:300] if result.error else None
    return row


def columns(rows: list[dict[str, Any]]) -> list[str]:
    seen = list(LEADING_COLUMNS)
    for row in rows:
        seen.extend(k for k in row if k not in seen)
    return seen


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_results(store: Any, rows: list[dict[str, Any]]) -> None:
    """results.csv and results.json in the sweep's storage (each written whole)."""
    store.write_text("results.csv", to_csv(rows))
    store.write_text("results.json", json.dumps(rows, indent=2, default=str) + "\n")


def parse_result_lines(text: str) -> list[dict[str, Any]]:
    """Ray Tune's result.json: one JSON object per line; a line cut short by a killed trial is skipped."""
    results = []
    for line in text.splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict):
            results.append(result)
    return results


def trial_histories(store: Any) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> every result Ray Tune recorded for it, by step (from each trial folder's result.json)."""
    histories: dict[str, list[dict[str, Any]]] = {}
    for folder in store.folders():
        if not store.is_file(f"{folder}/result.json"):
            continue
        for result in parse_result_lines(store.read_text(f"{folder}/result.json")):
            if result.get("trial_id") and "step" in result:
                histories.setdefault(result["trial_id"], []).append({**result, "trial_dir": folder})
    return {trial: sorted(results, key=lambda r: r["step"]) for trial, results in histories.items()}
