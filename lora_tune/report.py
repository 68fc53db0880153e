"""The report of a sweep: its results table sorted by the metric, plots and report.md.

    python -m lora_tune.report runs/<sweep>                  # print the table; write plots + report.md
    python -m lora_tune.report s3://bucket/prefix/<sweep>    # the same for a sweep in object storage

The report needs no W&B: it reads results.json, best/summary.json, config.yaml and the per-trial result.json
files Ray Tune writes, and writes curves.png, metric_vs_hyperparameters.png, memory_vs_metric.png and report.md
next to them (in the bucket, for a sweep stored there).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from lora_tune.errors import fail
from lora_tune.results import columns, sort_rows, trial_histories
from lora_tune.storage import StorageError, Store

PLOTS = ("curves.png", "metric_vs_hyperparameters.png", "memory_vs_metric.png")


class SweepDirError(ValueError):
    """The location is not a (finished) sweep; the message is one line."""


def open_sweep(location: str) -> Store:
    """The sweep at a local path or a URI; raises SweepDirError when nothing is there."""
    try:
        store = Store.at(location)
        if any(store.is_file(name) for name in ("results.json", "config.yaml", "best/summary.json")):
            return store
    except (StorageError, OSError) as exc:
        raise SweepDirError(f"cannot read {location} ({str(exc).splitlines()[0][:200]})") from None
    raise SweepDirError(f"{location} is not a sweep; accepted: a finished sweep such as runs/<sweep_name> or "
                        "s3://bucket/prefix/<sweep_name>")


def read_json(store: Store, relative: str) -> Any:
    """Parse `relative` inside the sweep, or raise SweepDirError naming it."""
    if not store.is_file(relative):
        raise SweepDirError(f"{store.uri} has no {relative}; accepted: a finished sweep such as runs/<sweep_name>")
    try:
        return json.loads(store.read_text(relative))
    except (StorageError, json.JSONDecodeError) as exc:
        raise SweepDirError(f"{store.uri}/{relative} is not valid JSON ({exc})") from None


def read_summary(store: Store) -> dict[str, Any]:
    """best/summary.json of a finished sweep (winner, metric, config, adapter)."""
    return read_json(store, "best/summary.json")


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


def sweep_settings(store: Store, summary: dict[str, Any] | None) -> dict[str, Any]:
    """metric, mode, searched hyperparameter columns and default bits, from summary.json / config.yaml."""
    import yaml

    config: dict[str, Any] = {}
    if store.is_file("config.yaml"):
        config = yaml.safe_load(store.read_text("config.yaml")) or {}
    summary = summary or {}
    return {
        "metric": summary.get("metric") or config.get("metric", "eval_loss"),
        "mode": summary.get("mode") or config.get("mode", "min"),
        "hparams": list((config.get("search_space") or {}).keys()) or list(summary.get("hyperparameters", {})),
        "bits": (config.get("quant") or {}).get("bits"),
        "sweep_name": config.get("sweep_name", store.uri.rstrip("/").rsplit("/", 1)[-1]),
    }


def markdown_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row.get(n)) for n in names) + " |" for row in rows]
    return "\n".join(lines)


def test_metrics(test: dict[str, Any]) -> list[str]:
    """The metric names scored on the test split (summary.json's test.winner_<name> keys)."""
    return [key.removeprefix("winner_") for key in test if key.startswith("winner_")]


def test_section(summary: dict[str, Any] | None) -> list[str]:
    """Scores on the test split: base model, default LoRA (the baseline trial) and winner, a column per metric."""
    if not summary or not isinstance(summary.get("test"), dict):
        return ["No winner was scored on the test split (no best/summary.json)."]
    test = summary["test"]
    if "error" in test:
        return [f"The winner was not scored on the test split: {test['error']}"]
    names = test_metrics(test)
    models = [("base", f"base model ({summary.get('bits')}-bit)"),
              ("default_lora", "default LoRA baseline (r=8, alpha=16, qv, 16-bit, same steps)"),
              ("winner", f"winner ({summary['trial_id']})")]
    rows = [{"model": label, **{name: test.get(f"{role}_{name}") for name in names}}
            for role, label in models if any(f"{role}_{name}" in test for name in names)]
    if "default_lora_skipped" in test:
        rows.insert(1, {"model": "default LoRA baseline", names[0] if names else "": f"skipped: "
                        f"{test['default_lora_skipped']}"})
    return [f"Test split `{test.get('split')}`, {test.get('examples')} examples, greedy decoding.", "",
            markdown_table(rows, ["model", *names])]


def confirmation_section(summary: dict[str, Any] | None) -> list[str]:
    """The confirmed configs (eval.confirm_top_k): each seed's value, their mean and spread; the winner is the best
    mean."""
    confirmation = (summary or {}).get("confirmation")
    if not confirmation:
        return []
    metric = confirmation["metric"]
    rows = [{"trial": config["trial_id"], "seeds": config["confirm_seeds"], metric: config["confirm_values"],
             "mean": config["confirm_mean"], "std": config["confirm_std"]} for config in confirmation["configs"]]
    verdict = (f"it replaced the search's best trial `{confirmation['search_best']}`"
               if confirmation["changed_winner"] else "the search's best trial kept its place")
    return ["## Confirmation over seeds", "",
            f"The top {confirmation['top_k']} configs trained again with seeds {confirmation['seeds'][1:]} (the "
            f"search used {confirmation['seeds'][0]}); the winner has the best mean {metric}: {verdict}.", "",
            markdown_table(rows, ["trial", "seeds", metric, "mean", "std"]), ""]


def report_markdown(rows: list[dict[str, Any]], summary: dict[str, Any] | None, settings: dict[str, Any],
                    plots: list[str]) -> str:
    """report.md: winner, test-split comparison, the sorted table and the plots."""
    metric = settings["metric"]
    lines = [f"# Sweep {settings['sweep_name']}", ""]
    if summary:
        lines += [f"Winner: trial `{summary['trial_id']}`, {metric} = {_cell(summary.get('value'))} at step "
                  f"{summary.get('step')}, base `{summary.get('base_model')}` at {summary.get('bits')} bits; "
                  "adapter `best/adapter/`.", ""]
    lines += ["## Evaluation", "", *test_section(summary), "", *confirmation_section(summary),
              f"## Trials, best {metric} first (the baseline trial is marked role=baseline)", "",
              markdown_table(sort_rows(rows, metric, settings["mode"]),
                             [c for c in columns(rows) if c not in ("error", "node_id")]), "", "## Plots", ""]
    captions = {"curves.png": f"Validation {metric} per trial; X marks a trial stopped by ASHA.",
                "metric_vs_hyperparameters.png": f"Best {metric} of each trial against each hyperparameter.",
                "memory_vs_metric.png": f"Peak memory against {metric}, by base precision."}
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", "", captions.get(plot, ""), ""]
    return "\n".join(lines)


def build_report(location: str) -> tuple[str, str]:
    """Sorted table text and report.md (with PNG plots) for a sweep; raises SweepDirError. Returns (table,
    where report.md was written)."""
    from lora_tune.plots import write_plots

    store = open_sweep(location)
    rows = read_json(store, "results.json")
    if not isinstance(rows, list):
        raise SweepDirError(f"{store.uri}/results.json is not a list of trial rows")
    summary = read_summary(store) if store.is_file("best/summary.json") else None
    settings = sweep_settings(store, summary)
    with tempfile.TemporaryDirectory(prefix="lora_tune-report-") as tmp:
        plots = write_plots(Path(tmp), trial_histories(store), rows, settings["metric"], settings["hparams"],
                            summary.get("trial_id") if summary else None, settings["bits"])
        for plot in plots:
            store.write_bytes(plot.name, plot.read_bytes())
    store.write_text("report.md", report_markdown(rows, summary, settings, [p.name for p in plots]))
    return format_table(sort_rows(rows, settings["metric"], settings["mode"])), f"{store.uri}/report.md"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        fail("usage: python -m lora_tune.report <sweep: runs/<sweep_name> or s3://bucket/prefix/<sweep_name>>")
    try:
        table, report = build_report(args[0])
    except SweepDirError as exc:
        fail(str(exc))
    print(table)
    print(f"lora_tune: report {report} (plots next to it)")


if __name__ == "__main__":
    main()
