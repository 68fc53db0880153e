"""PNG plots of a finished sweep, drawn with matplotlib's Agg backend (no display needed).

Used by `python -m lora_tune.report <sweep>`: validation curves per trial with ASHA stops marked (from the
`result.json` Ray Tune writes in each trial folder, read by results.trial_histories), the metric against each
searched hyperparameter, and peak memory against the metric by base precision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from lora_tune.results import finite  # noqa: E402

BITS_COLORS = {4: "tab:blue", 8: "tab:orange", 16: "tab:green"}


def plot_curves(histories: dict[str, list[dict]], rows: list[dict], metric: str, winner: str | None,
                path: Path) -> Path:
    return save(curves_figure(histories, rows, metric, winner), path)


def curves_figure(histories: dict[str, list[dict]], rows: list[dict], metric: str, winner: str | None) -> Any:
    """The metric against step for every trial; an X where ASHA stopped a trial, the winner drawn thick."""
    stopped = {r["trial_id"] for r in rows if r.get("stopped_early") in (True, "True")}
    fig, ax = plt.subplots(figsize=(8, 5))
    marked = False
    for trial, results in histories.items():
        points = [(r["step"], r[metric]) for r in results if finite(r.get(metric))]
        if not points:
            continue
        steps, values = zip(*points)
        is_winner = trial == winner
        (line,) = ax.plot(steps, values, marker="o", markersize=3, linewidth=3 if is_winner else 1.2,
                          label=f"{trial}{' (winner)' if is_winner else ''}", zorder=3 if is_winner else 2)
        if trial in stopped:
            ax.scatter([steps[-1]], [values[-1]], marker="X", s=120, color="red", edgecolor="black", zorder=4,
                       label=None if marked else "stopped by ASHA")
            marked = True
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def is_numeric_column(values: list[Any]) -> bool:
    return bool(values) and all(finite(v) for v in values)


def plot_hparams(rows: list[dict], hparams: list[str], metric: str, path: Path) -> Path:
    """One panel per searched hyperparameter: each trial's best metric against its value."""
    hparams = [h for h in hparams if any(r.get(h) is not None for r in rows)] or ["trial_id"]
    cols = min(3, len(hparams))
    nrows = math.ceil(len(hparams) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.6 * nrows), squeeze=False)
    scored = [r for r in rows if finite(r.get(metric))]
    for ax, name in zip(axes.flat, hparams):
        values = [r.get(name) for r in scored]
        colors = ["red" if r.get("stopped_early") in (True, "True") else "tab:blue" for r in scored]
        metrics = [r[metric] for r in scored]
        if is_numeric_column(values) and len(set(values)) > 4:
            ax.scatter(values, metrics, c=colors)
            if min(values) > 0 and max(values) / min(values) > 20:
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values}, key=_natural)
            ax.scatter([labels.index(str(v)) for v in values], metrics, c=colors)
            ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(hparams):]:
        ax.set_visible(False)
    fig.suptitle(f"best {metric} per trial against each hyperparameter (red: stopped by ASHA)")
    return save(fig, path)


def _natural(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def plot_memory(rows: list[dict], metric: str, default_bits: int | None, path: Path) -> Path:
    """Peak memory against the metric, one colour per base precision."""
    fig, ax = plt.subplots(figsize=(7, 5))
    groups: dict[Any, list[dict]] = {}
    for row in rows:
        if finite(row.get(metric)) and finite(row.get("peak_mem_mb")):
            groups.setdefault(row.get("bits", default_bits), []).append(row)
    for bits, members in sorted(groups.items(), key=lambda item: str(item[0])):
        ax.scatter([r["peak_mem_mb"] for r in members], [r[metric] for r in members], s=60,
                   color=BITS_COLORS.get(bits), label=f"{bits}-bit base", edgecolor="black")
    ax.set_xlabel("peak memory per trial (MB)")
    ax.set_ylabel(metric)
    ax.set_title(f"memory vs {metric} by base precision")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend()
    return save(fig, path)


def save(fig: Any, path: Path) -> Path:
    """Save a figure atomically (temp name + rename) and close it."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_plots(out: Path, histories: dict[str, list[dict]], rows: list[dict], metric: str, hparams: list[str],
                winner: str | None, default_bits: int | None) -> list[Path]:
    """All the report's plots, written into `out`; returns their paths. `histories`: trial_id -> its reports
    (results.trial_histories)."""
    return [
        plot_curves(histories, rows, metric, winner, out / "curves.png"),
        plot_hparams(rows, hparams, metric, out / "metric_vs_hyperparameters.png"),
        plot_memory(rows, metric, default_bits, out / "memory_vs_metric.png"),
    ]
