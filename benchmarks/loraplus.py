"""LORAPLUS: does PEFT's LoRA+ (lora_B at lr x ratio) train better than one learning rate for both matrices? (issue 34)

Single trials by `run_trial` on the parity config (SmolLM2-135M, dates, r=8, alpha=16, every linear layer, 16-bit,
30 steps, 200 eval rows), a grid of learning rates x `train.loraplus_lr_ratio` (null = off, 4, 16: the paper's) and
seeds; the final eval loss of each, and per (lr, ratio) the mean over seeds. This is what decides whether LoRA+
belongs in the default search space. Writes OUT/results_loraplus.json and OUT/results_loraplus.md; every figure
written by code.

    python -m benchmarks.loraplus                        # 3 lrs x 3 ratios x 1 seed (~30 min on 2 cores)
    python -m benchmarks.loraplus --seeds 0 1            # more seeds
    python -m benchmarks.loraplus --quick --out /tmp/l   # the tiny model (seconds; a smoke test)

A measurement, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import load, paired, paired_text, timed
from benchmarks.parity import FULL, QUICK, lora_tune_losses, trial_config

LRS = (5e-4, 1e-3, 2e-3)
RATIOS = (None, 4.0, 16.0)


def one_trial(overrides: list[str], lr: float, ratio: float | None, seed: int) -> dict[str, Any]:
    """run_trial's eval losses for one point of the grid."""
    from lora_tune.data import prepare_task_data, with_chat_template
    from lora_tune.model import load_tokenizer

    cfg = trial_config([*overrides, f"train.lr={lr}", f"train.loraplus_lr_ratio={ratio or 'null'}"], seed)
    tokenizer = with_chat_template(load_tokenizer(cfg.model.name_or_path), cfg.data)
    losses, seconds = timed(lambda: lora_tune_losses(cfg, prepare_task_data(tokenizer, cfg.data, cfg.seed)))
    return {"lr": lr, "ratio": ratio, "seed": seed, "losses": losses, "final": losses[max(losses)],
            "wall_s": round(seconds, 1)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (lr, ratio): mean and stdev of the final eval loss over seeds, best mean first."""
    points: dict[tuple[float, float | None], list[float]] = {}
    for run in runs:
        points.setdefault((run["lr"], run["ratio"]), []).append(run["final"])
    rows = [{"lr": lr, "ratio": ratio, "mean": statistics.mean(v), "stdev": statistics.stdev(v) if len(v) > 1 else None,
             "seeds": len(v)} for (lr, ratio), v in points.items()]
    return sorted(rows, key=lambda row: row["mean"])


def versus(runs: list[dict[str, Any]], on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any] | None:
    """The final eval loss of point `on` minus point `off` over the seeds both ran (a seed fixes the data and the
    initial adapter), as common.paired; None when they share no seed."""
    def finals(point: dict[str, Any]) -> dict[int, float]:
        return {r["seed"]: r["final"] for r in runs if (r["lr"], r["ratio"]) == (point["lr"], point["ratio"])}

    a, b = finals(on), finals(off)
    seeds = sorted(a.keys() & b.keys())
    return paired([a[seed] - b[seed] for seed in seeds]) if seeds else None


def _ratio(value: float | None) -> str:
    return "off" if value is None else f"{value:g}"


def _stdev(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def markdown(result: dict[str, Any]) -> str:
    lines = ["# LORAPLUS: LoRA+ vs one learning rate (run_trial, final eval loss)", "",
             f"Config: {' '.join(result['overrides'])}.", "",
             "| lr | loraplus_lr_ratio | mean final eval loss | stdev | seeds |", "|---|---|---|---|---|"]
    lines += [f"| {row['lr']:g} | {_ratio(row['ratio'])} | {row['mean']:.4f} | {_stdev(row['stdev'])} | "
              f"{row['seeds']} |" for row in result["summary"]]
    best_off = next((row for row in result["summary"] if row["ratio"] is None), None)
    best_on = next((row for row in result["summary"] if row["ratio"] is not None), None)
    if best_on is not None and best_off is not None:
        verdict = "beats" if best_on["mean"] < best_off["mean"] else "does not beat"
        lines += ["", f"- the best LoRA+ point (lr {best_on['lr']:g}, ratio {best_on['ratio']:g}: "
                      f"{best_on['mean']:.4f}) {verdict} the best single learning rate (lr {best_off['lr']:g}: "
                      f"{best_off['mean']:.4f})"]
        diff = versus(result.get("runs", []), best_on, best_off)
        if diff is not None:
            lines.append(f"- LoRA+ minus the single rate, seed by seed: {paired_text(diff)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model (seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    overrides = QUICK if args.quick else FULL
    overrides = [o for o in overrides if not o.startswith("train.lr=")]
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for lr in args.lrs:
            for ratio in RATIOS:  # the files are rewritten after each trial: an interrupted run keeps what it measured
                runs.append(one_trial(overrides, lr, ratio, seed))
                result = {"overrides": overrides, "runs": runs, "summary": summarise(runs), "load_avg": load()}
                (args.out / "results_loraplus.json").write_text(json.dumps(result, indent=1) + "\n")
                (args.out / "results_loraplus.md").write_text(markdown(result))
                print(f"benchmarks.loraplus: lr {lr:g} ratio {_ratio(ratio)} seed {seed}: final eval loss "
                      f"{runs[-1]['final']:.4f}", flush=True)
    print(markdown(result))


if __name__ == "__main__":
    main()
