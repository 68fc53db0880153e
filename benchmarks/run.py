"""Measured comparisons for issue 7 (speed); writes benchmarks/results.json and benchmarks/results.md.

    python -m benchmarks.run                                  # all comparisons, tiny + SmolLM2-135M (make bench)
    python -m benchmarks.run --only P1,P4 --model smollm2     # some comparisons, one model
    python -m benchmarks.run --quick --model tiny --out /tmp/b  # seconds-scale settings (what the test runs)

P1 ASHA vs FIFO, P2 first step with a reused vs reloaded base, P3 orchestration overhead, P4 against HF
Trainer.hyperparameter_search(backend="ray"), P5 parameter memory per bits, TPS tokens/s per trial (MFU on a GPU).
Each comparison is measured side by side in one run; ratios, targets and met true/false go to the JSON and the
markdown table. These are measurements, not tests: nothing here asserts on time. Settings: benchmarks/settings.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import compose, load, ratio
from benchmarks.notes import explain
from benchmarks.report import write_markdown
from benchmarks.settings import QUICK, SETTINGS, BenchSettings

COMPARISONS = ("P1", "P2", "P3", "P4", "P5", "TPS")
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(COMPARISONS),
                        help=f"comma-separated comparisons to run; accepted: {', '.join(COMPARISONS)}")
    parser.add_argument("--model", default="both", choices=("tiny", "smollm2", "both"), help="which base model(s)")
    parser.add_argument("--quick", action="store_true", help="seconds-scale settings (smoke test, not a measurement)")
    parser.add_argument("--out", default=str(HERE), help="folder for results.json and results.md")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite results.md (and the reasons) from OUT/results.json")
    args = parser.parse_args(argv)
    only = [c.strip().upper() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in COMPARISONS]
    if unknown or not only:
        parser.exit(2, f"benchmarks: error: --only: unknown {', '.join(unknown) or '(empty)'}; "
                       f"accepted: {', '.join(COMPARISONS)}\n")
    args.only = only
    return args


def say(message: str) -> None:
    print(f"benchmarks: {message}", file=sys.stderr, flush=True)


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one comparison; a failure is recorded (error line) instead of ending the whole run."""
    started = time.perf_counter()
    say(f"{name} ... (load {load()})")
    try:
        section = fn()
    except Exception as exc:  # noqa: BLE001 - a benchmark that cannot run is reported, not raised
        traceback.print_exc()
        lines = str(exc).strip().splitlines()
        section = {"error": f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500], "met": None}
    section["bench_wall_s"] = round(time.perf_counter() - started, 1)
    say(f"{name} done in {section['bench_wall_s']} s")
    return section


def p4_section(s: BenchSettings, out: Path, asha: dict[str, Any]) -> dict[str, Any]:
    """HF's Ray search vs lora_tune's ASHA sweep (P1's run): wall time to reach the loss both reach."""
    from benchmarks.hf_search import hf_search
    from benchmarks.sweeps import public, time_to_target
    from lora_tune.config import ConfigError

    extra = ["scheduler=fifo", f"num_samples={s.num_samples}", f"max_steps={s.max_steps}"]
    cfg = compose(s, out, "p4-hf-config", extra)
    hf = hf_search(cfg, out)
    ours_best, hf_best = asha["best_eval_loss"], hf["best_eval_loss"]
    if ours_best is None or hf_best is None:
        raise ConfigError(["P4: a side produced no eval loss"])
    target = max(ours_best, hf_best)
    t_ours, t_hf = time_to_target(asha, target), time_to_target(hf, target)
    speedup = ratio(t_hf, t_ours)
    return {
        "what": "lora_tune (ASHA, base reuse, tokenize once) vs HF Trainer.hyperparameter_search(backend='ray') "
                "with a PEFT model_init (FIFO, its default; base reloaded per trial)",
        "settings": {"num_samples": s.num_samples, "max_steps": s.max_steps, "eval_every": s.eval_every,
                     "search_space": "default (same ray.tune domains)", "concurrency": s.max_concurrent,
                     "hf_scheduler": "none (FIFO, hyperparameter_search's default)",
                     "lora_tune_run": "P1's ASHA sweep"},
        "raw": {"lora_tune": public(asha), "hf": {k: v for k, v in hf.items() if k not in ("results", "started")},
                "target_loss": target, "lora_tune_time_to_target_s": t_ours, "hf_time_to_target_s": t_hf},
        "ratio": {"hf_over_lora_tune_time_to_target": speedup,
                  "hf_over_lora_tune_wall": ratio(hf["wall_s"], asha["wall_s"]),
                  "lora_tune_over_hf_best_loss": ratio(ours_best, hf_best)},
        "target": ">= 2x faster to the same best eval loss (the worse of the two bests, reached by both)",
        "met": None if speedup is None else speedup >= 2,
    }


def mean_seq_len(s: BenchSettings, out: Path) -> float:
    from lora_tune.sweep import shared_task_data

    data = shared_task_data(compose(s, out, "seq-len"))
    return round(sum(len(e["input_ids"]) for e in data.train) / len(data.train), 2)


def run_model(s: BenchSettings, only: list[str]) -> dict[str, Any]:
    """Every selected comparison for one model, in a temporary output folder."""
    from benchmarks.sweeps import p1_asha_vs_fifo, p3_overhead, sweep_once
    from benchmarks.trials import p2_first_step, p5_memory, throughput

    sections: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lora_tune-bench-") as tmp:
        out = Path(tmp)
        if "P5" in only:
            sections["P5"] = guarded(f"{s.model} P5", lambda: p5_memory(s))
        if "P2" in only:
            sections["P2"] = guarded(f"{s.model} P2", lambda: p2_first_step(s, out))
        if "P3" in only:
            sections["P3"] = guarded(f"{s.model} P3", lambda: p3_overhead(s, out))
        runs: dict[str, Any] = {}
        if "P1" in only:
            def p1() -> dict[str, Any]:
                section, found = p1_asha_vs_fifo(s, out)
                runs.update(found)
                return section
            sections["P1"] = guarded(f"{s.model} P1", p1)
        if ("P4" in only or "TPS" in only) and "asha" not in runs:
            extra = ["scheduler=asha", f"num_samples={s.num_samples}", f"max_steps={s.max_steps}"]
            runs["asha"] = sweep_once(compose(s, out, "p1-asha", extra))
        if "P4" in only:
            sections["P4"] = guarded(f"{s.model} P4", lambda: p4_section(s, out, runs["asha"]))
        if "TPS" in only:
            rows = (runs.get("fifo") or runs["asha"])["rows"]
            sections["TPS"] = guarded(f"{s.model} TPS", lambda: throughput(s, rows, mean_seq_len(s, out)))
    return {"settings": s.to_dict(), "comparisons": sections}


def versions() -> dict[str, str]:
    import bitsandbytes
    import peft
    import ray
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__, "ray": ray.__version__, "bitsandbytes": bitsandbytes.__version__}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        report = json.loads((Path(args.out) / "results.json").read_text())
        write(report, Path(args.out))
        return report
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    table = QUICK if args.quick else SETTINGS
    names = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    started, report = time.perf_counter(), {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "only": args.only,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **versions()},
        "load_avg_start": load(), "models": {},
    }
    out = Path(args.out)
    for name in names:  # the files are rewritten after each model, so a long run leaves partial results
        report["models"][name] = run_model(table[name], args.only)
        report["load_avg_end"] = load()
        report["wall_s"] = round(time.perf_counter() - started, 1)
        write(report, out)
    return report


def write(report: dict[str, Any], out: Path) -> None:
    report["targets_missed"] = explain(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_markdown(report, out / "results.md")
    say(f"wrote {out / 'results.json'} and {out / 'results.md'} ({report['wall_s']} s so far)")


if __name__ == "__main__":
    main()
