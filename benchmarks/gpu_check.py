"""`make gpu-check`'s measurements on a GPU machine: a short SmolLM2-135M sweep at 4, 8 and 16 bits with
resources=fractional_gpu (trials share the GPU, each capped to its share), then per trial its step time,
tokens/s, MFU, peak memory against the dry run's estimate, and per bits the dtypes the base's matmuls see.
Writes OUT/results_gpu.json and OUT/results_gpu.md (default benchmarks/); every figure is written by code.

    python -m benchmarks.gpu_check [--steps 40] [--samples 2] [--out benchmarks]
    python -m benchmarks.gpu_check --cpu ...   # the rehearsal without a GPU: resources=cpu, no MFU

Measurements, not tests: nothing here asserts. The sweeps run as the command line runs them (run_sweep).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.common import compose, sweep_once
from benchmarks.trials import MODEL_NAMES, gpu_peak_flops, lora_flops_per_token, mfu, model_shape
from lora_tune.sweep import shared_task_data

MODEL = MODEL_NAMES["smollm2"]
BITS = (4, 8, 16)
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "ray", "hydra-core", "wandb")


def machine() -> dict[str, Any]:
    """The device, its driver and CUDA, and the versions of what the trials run on."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, device_mem_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, driver=nvidia_smi("driver_version"))
    info["versions"] = {name: installed(name) for name in PACKAGES}
    return info


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def matmul_dtypes(bits: int) -> dict[str, str]:
    """What the base's first attention projection stores and computes in, as a trial loads it: weight storage,
    the dtype of its input and output in one forward under the trial's autocast."""
    import torch

    from lora_tune import precision as precisions
    from lora_tune.config import QuantConfig
    from lora_tune.model import default_device, load_base

    device = default_device()
    precision = precisions.resolve("auto", device)
    model = load_base(MODEL, QuantConfig(bits=bits), precision, device)
    layer = model.model.layers[0].self_attn.q_proj
    seen: dict[str, str] = {"weight": str(layer.weight.dtype), "layer": type(layer).__name__,
                            "precision": precision.name}
    if hasattr(layer, "compute_dtype"):
        seen["compute_dtype"] = str(layer.compute_dtype)
    hook = layer.register_forward_hook(lambda _m, args, out: seen.update(input=str(args[0].dtype),
                                                                       output=str(out.dtype)))
    with torch.no_grad(), precision.autocast():
        model(input_ids=torch.tensor([[1, 2, 3, 4]], device=device))
    hook.remove()
    del model
    return seen


def planned_totals(cfg: Any) -> dict[tuple[int, int], float]:
    """(bits, r) -> the dry run's estimated peak GB per trial (the largest over target-module sets)."""
    from lora_tune.plan import make_plan

    totals: dict[tuple[int, int], float] = {}
    for c in make_plan(cfg).classes:
        totals[(c.bits, c.r)] = max(totals.get((c.bits, c.r), 0.0), round(c.total_bytes / 2**30, 3))
    return totals


def trial_rows(run: dict[str, Any], cfg: Any, plan: dict[tuple[int, int], float], shape: dict[str, int],
               mean_seq_len: float, peak: float | None) -> list[dict[str, Any]]:
    """One row per trial: its last report's speed and memory beside the plan's estimate."""
    last = {}
    for result in run["results"]:
        last[result["trial_id"]] = result  # results are in report order
    rows = []
    for row in (r for r in run["rows"] if r.get("role", "trial") == "trial"):
        report = last.get(row["trial_id"], {})
        flops = lora_flops_per_token(shape["n_base"], int(row.get("trainable_params") or 0), shape["n_layers"],
                                     shape["d_model"], mean_seq_len)
        tokens = row.get("tokens_per_s")
        bits, r = cfg.quant.bits, row.get("r", cfg.peft.r)  # r is a column when it is searched
        rows.append({"trial_id": row["trial_id"], "bits": bits, "r": r, "steps": row.get("steps"),
                     "status": row.get("status"), "step_time_s": report.get("step_time_s"),
                     "tokens_per_s": tokens, "mfu": mfu(tokens, flops, peak) if tokens else None,
                     "peak_mem_mb": row.get("peak_mem_mb"), "peak_mem_measure": row.get("peak_mem_measure"),
                     "peak_reserved_mb": row.get("peak_reserved_mb"), "device_mem_mb": row.get("device_mem_mb"),
                     "plan_total_mb": round(plan[(bits, r)] * 1024, 1) if (bits, r) in plan else None,
                     "eval_loss": row.get("eval_loss")})
    return rows


def run_bits(bits: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    resources = "resources=cpu" if args.cpu else "resources=fractional_gpu"
    cfg = compose([f"quant.bits={bits}", resources, f"num_samples={args.samples}", f"max_steps={args.steps}",
                   "scheduler=fifo", "wandb.mode=disabled", f"train.eval_every={args.steps // 2}"],
                  out, f"gpu-{bits}bit")
    run = sweep_once(cfg)
    shape, peak = model_shape(MODEL), gpu_peak_flops()
    data = shared_task_data(cfg)
    mean_seq_len = sum(len(e["input_ids"]) for e in data.train) / len(data.train)  # prompt + answer tokens
    return {"bits": bits, "wall_s": run["wall_s"], "winner": run["winner"], "phases": run["phases"],
            "test": (run["summary"] or {}).get("test"),
            "matmul": matmul_dtypes(bits),
            "trials": trial_rows(run, cfg, planned_totals(cfg), shape, mean_seq_len, peak)}


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [f"# GPU check: {info.get('device', 'no GPU (rehearsal)')}", "",
             f"driver {info.get('driver')}, CUDA {info.get('cuda')}, Python {info['python']}; "
             + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), "",
             "| bits | trial | steps | step s | tokens/s | MFU | peak MB (what) | peak reserved MB | plan MB | "
             "eval_loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for sweep in results["sweeps"]:
        for t in sweep["trials"]:
            lines.append("| " + " | ".join(cell(v) for v in (
                sweep["bits"], t["trial_id"], t["steps"], t["step_time_s"], t["tokens_per_s"], t["mfu"],
                f"{cell(t['peak_mem_mb'])} ({t['peak_mem_measure']})", t["peak_reserved_mb"], t["plan_total_mb"],
                t["eval_loss"])) + " |")
    lines += ["", "| bits | layer | weight | input | output | sweep wall s |", "|---|---|---|---|---|---|"]
    for sweep in results["sweeps"]:
        m = sweep["matmul"]
        lines.append(f"| {sweep['bits']} | {m['layer']} | {m['weight']} | {m.get('input')} | {m.get('output')} | "
                     f"{cell(sweep['wall_s'])} |")
    return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS), choices=BITS)
    parser.add_argument("--cpu", action="store_true", help="rehearsal without a GPU (resources=cpu)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, "sweeps": []}
    with tempfile.TemporaryDirectory() as tmp:
        for bits in args.bits:
            results["sweeps"].append(run_bits(bits, args, Path(tmp)))
            write(results, args.out)  # what is done so far survives a later failure or a timeout
    print(f"gpu-check: wrote {args.out / 'results_gpu.json'} and results_gpu.md")


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results_gpu.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results_gpu.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
