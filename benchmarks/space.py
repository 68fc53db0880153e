"""SPACE: the default search space before and after issue 34, by the winner's held-out test score (issue 34).

For each shipped task (dates, shopping) the quickstart sweep runs twice with the same settings and search seed: once
with the space as it was before issue 34 (`BEFORE`: learning rate 3e-4..3e-3, adapters on q+v, attention or every
linear layer) and once with the default space as shipped (conf/search_space/default.yaml: 1e-3..5e-3, attention or
every linear layer). Each arm's
winner is confirmed over seeds and scored on the test split as `make sweep` does; the table gives its test exact
match with its standard error, the base model's and the default LoRA's beside it, the winner's config and the
sweep's wall time. Writes OUT/results_space.json and OUT/results_space.md; every figure written by code.

    python -m benchmarks.space                        # SmolLM2-135M, dates and shopping (~70 min on 2 cores)
    python -m benchmarks.space --tasks dates          # one task
    python -m benchmarks.space --quick --out /tmp/s   # the tiny model, one task, seconds-scale (a smoke test)

A measurement, not a test: nothing here asserts. One sweep per arm and task: the standard errors say how much of
a difference is the test rows' noise; the search's own randomness (which 8 configs it samples) is not averaged.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import compose, load, sweep_once

# The default space before issue 34, as overrides of today's (conf/search_space/default.yaml).
BEFORE = ["search_space.lr.low=3.0e-4", "search_space.lr.high=3.0e-3",
          "search_space.target_modules.values=[qv,attention,all-linear]"]
ARMS = {"before": BEFORE, "after": []}
TASKS = ("dates", "shopping")
QUICK = ["experiment=tiny", "num_samples=2", "eval.confirm_top_k=1", "eval.confirm_seeds=1"]
HYPERPARAMETERS = ("r", "alpha", "target_modules", "bits", "lr")


def one_sweep(task: str, arm: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """The quickstart on `task` with the `arm`'s space: its winner, test scores and wall time."""
    cfg = compose([f"data={task}", *overrides, *ARMS[arm]], out, f"{task}-{arm}")
    run = sweep_once(cfg)
    summary = run["summary"] or {}
    test = summary.get("test", {})
    name = test.get("headline", "exact_match")
    confirmed = [c for c in (summary.get("confirmation") or {}).get("configs", [])
                 if c["trial_id"] == summary.get("trial_id")]
    return {"task": task, "arm": arm, "space": {k: v for k, v in cfg.search_space.items()},
            "metric": name, "winner": summary.get("trial_id"),
            "hyperparameters": {k: v for k, v in summary.get("hyperparameters", {}).items()},
            "eval_loss": summary.get("value"), "confirm_mean": confirmed[0]["confirm_mean"] if confirmed else None,
            "test": test.get(f"winner_{name}"), "test_se": test.get(f"winner_{name}_se"),
            "base": test.get(f"base_{name}"), "default_lora": test.get(f"default_lora_{name}"),
            "wall_s": run["wall_s"], "load_avg": run["load_avg"]}


def compare(runs: list[dict[str, Any]], overrides: list[str]) -> dict[str, Any]:
    """The runs with each task's gain (after - before) and whether the target is met."""
    gains = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        before, after = (next(r for r in runs if r["task"] == task and r["arm"] == arm) for arm in ARMS)
        if isinstance(before["test"], float) and isinstance(after["test"], float):
            gains[task] = {"difference": after["test"] - before["test"],
                           "se": _combined_se(before["test_se"], after["test_se"])}
    return {"runs": runs, "gain": gains, "overrides": overrides, "before": BEFORE,
            "target": "the quickstart's winner beats the one before issue 34 on test exact match",
            "met": all(g["difference"] > 0 for g in gains.values()) if gains else None, "load_avg": load()}


def _combined_se(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a * a + b * b) ** 0.5


def _figure(value: Any, se: Any = None) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value:.3f}" + (f" ± {se:.3f}" if isinstance(se, (int, float)) else "")


def _config(params: dict[str, Any]) -> str:
    shown = [(k, params[k]) for k in HYPERPARAMETERS if k in params]
    return ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)


def markdown(result: dict[str, Any]) -> str:
    lines = ["# SPACE: the default search space before and after issue 34 (the quickstart's winner on the test split)",
             "", f"Before: today's space with {' '.join(result['before'])}. Extra overrides: "
             f"{' '.join(result['overrides']) or 'none'}.", "",
             "| task | space | winner | eval loss (confirmed mean) | test metric | winner | base | default LoRA | "
             "wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        confirmed = f" ({r['confirm_mean']:.4f})" if isinstance(r["confirm_mean"], float) else ""
        loss = f"{r['eval_loss']:.4f}{confirmed}" if isinstance(r["eval_loss"], float) else "—"
        lines.append(f"| {r['task']} | {r['arm']} | {_config(r['hyperparameters'])} | {loss} | {r['metric']} | "
                     f"{_figure(r['test'], r['test_se'])} | {_figure(r['base'])} | {_figure(r['default_lora'])} | "
                     f"{r['wall_s']:.0f} |")
    lines.append("")
    for task, gain in result["gain"].items():
        lines.append(f"- {task}: after − before = {_figure(gain['difference'], gain['se'])} (± the combined standard "
                     "error of the two test scores)")
    if result["met"] is not None:
        lines.append(f"- target {result['target']}: {'met' if result['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, the dates task (seconds-scale)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("overrides", nargs="*", help="more config overrides for every sweep, e.g. num_samples=16")
    args = parser.parse_args()
    tasks = args.tasks or (["dates"] if args.quick else list(TASKS))
    overrides, runs = [*(QUICK if args.quick else []), *args.overrides], []
    args.out.mkdir(parents=True, exist_ok=True)
    for task in tasks:  # the files are rewritten after each task: an interrupted run keeps what it measured
        with tempfile.TemporaryDirectory(prefix="lora_tune-space-") as tmp:
            runs += [one_sweep(task, arm, overrides, Path(tmp)) for arm in ARMS]
        result = compare(runs, overrides)
        (args.out / "results_space.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (args.out / "results_space.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
