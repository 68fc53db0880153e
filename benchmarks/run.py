"""Measured comparisons of speed, memory and bytes written; writes benchmarks/results.json and benchmarks/results.md.

    python -m benchmarks.run                                  # every comparison on SmolLM2-135M (make bench)
    python -m benchmarks.run --only P1,P4 --model both        # some comparisons, SmolLM2 and the tiny model
    python -m benchmarks.run --quick --model tiny --out /tmp/b  # seconds-scale settings (what the test runs)

P1 ASHA vs FIFO, P2 first step with a reused vs reloaded base, P3 the quickstart's orchestration overhead, P4
against HF Trainer.hyperparameter_search(backend="ray"), P5 parameter memory per bits, PACK tokens/s with and
without packing, CKPT checkpoint bytes per trial, TPS tokens/s per trial (MFU on a GPU).
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

from benchmarks.common import compose, load, sweep_once
from benchmarks.notes import explain
from benchmarks.report import write_markdown
from benchmarks.settings import QUICK, SETTINGS, BenchSettings

COMPARISONS = ("P1", "P2", "P3", "P4", "P5", "PACK", "CKPT", "TPS")
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(COMPARISONS),
                        help=f"comma-separated comparisons to run; accepted: {', '.join(COMPARISONS)}")
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "tiny", "both"),
                        help="which base model(s); default: SmolLM2-135M, the real one")
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


def mean_seq_len(s: BenchSettings, out: Path) -> float:
    from lora_tune.sweep import shared_task_data

    data = shared_task_data(compose(s.overrides(), out, "seq-len"))
    return round(sum(len(e["input_ids"]) for e in data.train) / len(data.train), 2)


def run_model(s: BenchSettings, only: list[str], sections: dict[str, Any], saved: Callable[[], None]) -> None:
    """Every selected comparison for one model into `sections` (cheap ones first), in a temporary output folder;
    `saved()` after each, so a long run leaves partial results."""
    from benchmarks.quickstart import p3_overhead
    from benchmarks.sweeps import p1_asha_vs_fifo, p4_vs_hf
    from benchmarks.trials import checkpoint_bytes, p2_first_step, p5_memory, pack_throughput, throughput

    runs: dict[str, Any] = {}

    def p1() -> dict[str, Any]:
        section, found = p1_asha_vs_fifo(s, out)
        runs.update(found)
        return section

    def p3() -> dict[str, Any]:
        section, runs["quickstart"] = p3_overhead(s, out)
        return section

    def p4() -> dict[str, Any]:
        if "asha" not in runs:
            runs["asha"] = sweep_once(compose(s.overrides("asha"), out, "p1-asha"))
        return p4_vs_hf(s, out, runs["asha"])

    def tps() -> dict[str, Any]:
        if not runs:
            runs["asha"] = sweep_once(compose(s.overrides("asha"), out, "p1-asha"))
        name = next(n for n in ("fifo", "asha", "quickstart") if n in runs)  # FIFO: every trial runs every step
        rows = [r for r in runs[name]["rows"] if r.get("role", "trial") == "trial"]
        return throughput(s, rows, mean_seq_len(s, out), source=f"the {name} sweep's")

    steps = {"P5": lambda: p5_memory(s), "P2": lambda: p2_first_step(s, out),
             "PACK": lambda: pack_throughput(s, out), "CKPT": lambda: checkpoint_bytes(s, out),
             "P3": p3, "P1": p1, "P4": p4, "TPS": tps}
    with tempfile.TemporaryDirectory(prefix="lora_tune-bench-") as tmp:
        out = Path(tmp)
        for key, measure in steps.items():
            if key in only:
                sections[key] = guarded(f"{s.model} {key}", measure)
                saved()


def versions() -> dict[str, str]:
    import bitsandbytes
    import peft
    import ray
    import torch
    import transformers

    from lora_tune.model import default_device
    from lora_tune.precision import resolve

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "auto_precision": resolve("auto", default_device()).name,  # what train.precision=auto ran in
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__, "ray": ray.__version__, "bitsandbytes": bitsandbytes.__version__}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    if args.render:
        report = json.loads((out / "results.json").read_text())
        write(report, out)
        return report
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    table = QUICK if args.quick else SETTINGS
    names = ["smollm2", "tiny"] if args.model == "both" else [args.model]
    started, report = time.perf_counter(), {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "only": args.only,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **versions()},
        "load_avg_start": load(), "models": {},
    }

    def saved() -> None:
        report["load_avg_end"] = load()
        report["wall_s"] = round(time.perf_counter() - started, 1)
        write(report, out)

    for name in names:
        report["models"][name] = {"settings": table[name].to_dict(), "comparisons": {}}
        run_model(table[name], args.only, report["models"][name]["comparisons"], saved)
    return report


def write(report: dict[str, Any], out: Path) -> None:
    report["targets_missed"] = explain(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_markdown(report, out / "results.md")
    say(f"wrote {out / 'results.json'} and {out / 'results.md'} ({report['wall_s']} s so far)")


if __name__ == "__main__":
    main()
