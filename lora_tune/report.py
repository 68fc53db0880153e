"""The sweep's results table (results.csv / results.json, one row per trial) and its report.

    python -m lora_tune.report runs/<sweep>     # print the table sorted by the metric; write plots + report.md

The report needs no W&B: it reads results.json, best/summary.json, config.yaml and the per-trial
result.json files Ray Tune writes, and writes curves.png, metric_vs_hyperparameters.png,
memory_vs_metric.png and report.md into the sweep dir.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from lora_tune.atomic import write_atomic

LEADING_COLUMNS = ["trial_id", "status", "stopped_early", "steps", "eval_loss", "eval_exact_match"]


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


def write_results(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(sweep_dir / "results.csv", to_csv(rows))
    write_atomic(sweep_dir / "results.json", json.dumps(rows, indent=2, default=str) + "\n")


def sort_rows(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Best first; rows without a finite metric last."""
    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return (1, 0.0)
        return (0, value if mode == "min" else -value)
    return sorted(rows, key=key)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain fixed-width table of every column."""
    names = columns(rows)
    cells = [[_cell(row.get(n)) for n in names] for row in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell_row, widths)) for cell_row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


class SweepDirError(ValueError):
    """The path is not a (finished) sweep dir; the message is one line."""


def read_json(path: Path, relative: str) -> Any:
    """Parse `relative` inside the sweep dir `path` names, or raise SweepDirError naming it."""
    if not path.is_file():
        sweep_dir = str(path)[: -len(relative) - 1]
        raise SweepDirError(f"{sweep_dir} has no {relative}; accepted: a finished sweep dir such as runs/<sweep_name>")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SweepDirError(f"{path} is not valid JSON ({exc})") from None


def read_summary(sweep_dir: Path) -> dict[str, Any]:
    """best/summary.json of a finished sweep (winner, metric, config, adapter)."""
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir} is not a directory; accepted: a finished sweep dir such as runs/<name>")
    return read_json(sweep_dir / "best" / "summary.json", "best/summary.json")


def sweep_settings(sweep_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """metric, mode, searched hyperparameter columns and default bits, from summary.json / config.yaml."""
    import yaml

    config: dict[str, Any] = {}
    if (sweep_dir / "config.yaml").exists():
        config = yaml.safe_load((sweep_dir / "config.yaml").read_text()) or {}
    summary = summary or {}
    return {
        "metric": summary.get("metric") or config.get("metric", "eval_loss"),
        "mode": summary.get("mode") or config.get("mode", "min"),
        "hparams": list((config.get("search_space") or {}).keys()) or list(summary.get("hyperparameters", {})),
        "bits": (config.get("quant") or {}).get("bits"),
        "sweep_name": config.get("sweep_name", sweep_dir.name),
    }


def markdown_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row.get(n)) for n in names) + " |" for row in rows]
    return "\n".join(lines)


def test_section(summary: dict[str, Any] | None) -> list[str]:
    """Exact match on the test split: base, default LoRA (when eval.baseline ran) and the winner."""
    if not summary or not isinstance(summary.get("test"), dict):
        return ["No winner was evaluated on the test split (no best/summary.json)."]
    test = summary["test"]
    rows = [{"model": f"base model ({summary.get('bits')}-bit)", "exact match": test.get("base_exact_match")}]
    if "default_lora_exact_match" in test:
        rows.append({"model": "default LoRA (r=8, alpha=16, q_proj+v_proj, 16-bit, same steps)",
                     "exact match": test["default_lora_exact_match"]})
    elif "default_lora_skipped" in test:
        rows.append({"model": "default LoRA", "exact match": f"skipped: {test['default_lora_skipped']}"})
    rows.append({"model": f"winner ({summary['trial_id']})", "exact match": test.get("winner_exact_match")})
    return [f"Test split `{test.get('split')}`, {test.get('examples')} examples, greedy decoding.", "",
            markdown_table(rows, ["model", "exact match"])]


def write_report(sweep_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any] | None,
                 settings: dict[str, Any], plots: list[Path]) -> Path:
    """report.md: winner, test-split comparison, the sorted table and the plots."""
    metric = settings["metric"]
    lines = [f"# Sweep {settings['sweep_name']}", ""]
    if summary:
        lines += [f"Winner: trial `{summary['trial_id']}`, {metric} = {_cell(summary.get('value'))}, "
                  f"base `{summary.get('base_model')}` at {summary.get('bits')} bits; adapter `best/adapter/`.", ""]
    lines += ["## Evaluation", "", *test_section(summary), "",
              f"## Trials, best {metric} first", "",
              markdown_table(sort_rows(rows, metric, settings["mode"]),
                             [c for c in columns(rows) if c not in ("error", "node_id")]), "", "## Plots", ""]
    captions = {"curves.png": f"Validation {metric} per trial; X marks a trial stopped by ASHA.",
                "metric_vs_hyperparameters.png": f"Best {metric} of each trial against each hyperparameter.",
                "memory_vs_metric.png": f"Peak memory against {metric}, by base precision."}
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.name})", "", captions.get(plot.name, ""), ""]
    path = sweep_dir / "report.md"
    write_atomic(path, "\n".join(lines))
    return path


def build_report(sweep_dir: Path) -> tuple[str, Path]:
    """Sorted table text and report.md (with PNG plots) for a sweep dir; raises SweepDirError."""
    from lora_tune.plots import write_plots

    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir} is not a directory; accepted: a finished sweep dir such as runs/<name>")
    rows = read_json(sweep_dir / "results.json", "results.json")
    if not isinstance(rows, list):
        raise SweepDirError(f"{sweep_dir / 'results.json'} is not a list of trial rows")
    summary = read_summary(sweep_dir) if (sweep_dir / "best" / "summary.json").exists() else None
    settings = sweep_settings(sweep_dir, summary)
    plots = write_plots(sweep_dir, rows, settings["metric"], settings["hparams"],
                        summary.get("trial_id") if summary else None, settings["bits"])
    report = write_report(sweep_dir, rows, summary, settings, plots)
    return format_table(sort_rows(rows, settings["metric"], settings["mode"])), report


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m lora_tune.report <sweep_dir>", file=sys.stderr)
        raise SystemExit(2)
    try:
        table, report = build_report(Path(args[0]).expanduser())
    except SweepDirError as exc:
        print(f"lora_tune: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(table)
    print(f"lora_tune: report {report} (plots next to it)")


if __name__ == "__main__":
    main()
