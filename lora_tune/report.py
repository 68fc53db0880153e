"""The sweep's results table: one row per trial, written as results.csv and results.json.

    python -m lora_tune.report runs/<sweep>     # print the table, sorted by the sweep's metric
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

LEADING_COLUMNS = ["trial_id", "status", "stopped_early", "steps", "eval_loss", "eval_exact_match"]


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file + rename so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)


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


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m lora_tune.report <sweep_dir>")
    sweep_dir = Path(args[0])
    results = sweep_dir / "results.json"
    if not results.exists():
        raise SystemExit(f"lora_tune: error: {sweep_dir} has no results.json; accepted: a finished sweep dir")
    rows = json.loads(results.read_text())
    summary_path = sweep_dir / "best" / "summary.json"
    metric, mode = "eval_loss", "min"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        metric, mode = summary["metric"], summary["mode"]
    print(format_table(sort_rows(rows, metric, mode)))


if __name__ == "__main__":
    main()
