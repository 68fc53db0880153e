"""P2 (time to first optimizer step, reused vs reloaded base), P5 (parameter memory per bits) and throughput.

No Ray here: `run_trial` and `load_base` are called in this process, with 1 torch thread (a trial's CPU share).

LoRA training FLOPs per token (used for MFU on a GPU):
    flops/token ~= 4 * N_base + 6 * N_lora + 12 * n_layers * T * d_model
N_base: weights of the frozen base that take part in matmuls (every Linear, lm_head included; forward 2N plus
the input-gradient pass 2N, no weight gradients); N_lora: adapter weights (forward, input and weight gradients:
6N); the last term is attention scores and values (QK^T and AV, 4*T*d per layer forward, twice that backward)
at mean sequence length T.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any

from benchmarks.common import compose, load, median, ratio
from benchmarks.settings import BenchSettings

# Dense bf16 peak FLOP/s of GPUs the project runs on (for MFU); None elsewhere.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def lora_flops_per_token(n_base: int, n_lora: int, n_layers: int, d_model: int, seq_len: float) -> float:
    """Training FLOPs per token of a LoRA step on a frozen base (formula in the module docstring)."""
    return 4 * n_base + 6 * n_lora + 12 * n_layers * seq_len * d_model


def gpu_peak_flops() -> float | None:
    """This machine's GPU bf16 peak, or None on CPU (MFU is only computed on a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in GPU_PEAK_FLOPS.items() if key in name), None)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    return None if peak is None else tokens_per_s * flops_per_token / peak


def model_shape(name_or_path: str) -> dict[str, int]:
    """N_base (matmul weights, lm_head included), layers and hidden size, read on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_tune.embedded import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_base = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"n_base": n_base, "n_layers": config.num_hidden_layers, "d_model": config.hidden_size,
            "n_params": sum(p.numel() for p in model.parameters())}


def p2_first_step(s: BenchSettings, out: Path) -> dict[str, Any]:
    """Seconds from trial start to the end of its first optimizer step: base reused vs loaded again."""
    import torch

    from lora_tune import model as models
    from lora_tune.sweep import shared_task_data
    from lora_tune.train import run_trial

    threads, by_bits = torch.get_num_threads(), {}
    cfg = compose(s, out, "p2", ["max_steps=1", "train.eval_every=1"])
    data = shared_task_data(cfg)
    try:
        for bits in s.p2_bits:
            trial_cfg = cfg.trial_config({"quant.bits": bits})

            def first_step(reuse: bool, trial_cfg: Any = trial_cfg) -> dict[str, Any]:
                metrics = run_trial(trial_cfg, lambda m, c: None, num_threads=1, data=data, reuse_base=reuse)
                return {"time_to_first_step_s": metrics["time_to_first_step_s"], "base_reused": metrics["base_reused"]}

            models.BASE_CACHE.clear()
            warm = first_step(True)  # loads the base into this process's cache
            pairs = [(first_step(True), first_step(False)) for _ in range(s.p2_repeats)]
            reused = median([p[0]["time_to_first_step_s"] for p in pairs])
            reloaded = median([p[1]["time_to_first_step_s"] for p in pairs])
            by_bits[str(bits)] = {"warm_up": warm, "pairs": pairs, "reused_median_s": reused,
                                  "reloaded_median_s": reloaded, "ratio": ratio(reused, reloaded)}
    finally:
        models.BASE_CACHE.clear()
        torch.set_num_threads(threads)
    ratios = [v["ratio"] for v in by_bits.values() if v["ratio"] is not None]
    return {
        "what": "time from trial start to the end of the first optimizer step, base reused vs reloaded",
        "settings": {"bits": list(s.p2_bits), "repeats": s.p2_repeats, "threads": 1,
                     "adapter": "peft defaults (r=8, q_proj+v_proj)", "data": "tokenized once, shared (as in a sweep)"},
        "raw": by_bits,
        "ratio": {f"reused_over_reloaded_{b}bit": v["ratio"] for b, v in by_bits.items()},
        "target": "<= 0.20x",
        "met": max(ratios) <= 0.20 if ratios else None,
    }


def p5_memory(s: BenchSettings) -> dict[str, Any]:
    """`get_memory_footprint()` of the same base at 4, 8 and 16 bits, for fp32 and bf16 non-quantized weights."""
    from lora_tune.config import QuantConfig
    from lora_tune.model import load_base

    name = {"tiny": "embedded:tiny", "smollm2": "embedded:smollm2-135m"}[s.model]
    footprints: dict[str, dict[str, int]] = {}
    for dtype in ("fp32", "bf16"):
        footprints[dtype] = {}
        for bits in (4, 8, 16):
            model = load_base(name, dataclasses.replace(QuantConfig(), bits=bits, compute_dtype=dtype))
            footprints[dtype][str(bits)] = int(model.get_memory_footprint())
            del model
            gc.collect()
    ratios = {f"{dtype}_4bit_over_16bit": ratio(f["4"], f["16"]) for dtype, f in footprints.items()}
    ratios.update({f"{dtype}_8bit_over_16bit": ratio(f["8"], f["16"]) for dtype, f in footprints.items()})
    judged = s.model == "smollm2"
    return {
        "what": "parameter memory (model.get_memory_footprint()) of the same base at 4, 8 and 16 bits",
        "settings": {"model": name, "compute_dtypes": ["fp32", "bf16"],
                     "note": "16-bit means no quantization: fp32 on CPU by default (quant.compute_dtype=auto), "
                             "bf16 when asked; 4/8-bit keep embeddings and norms in the compute dtype"},
        "raw": {"bytes": footprints, "mb": {d: {b: round(v / 2**20, 1) for b, v in f.items()}
                                            for d, f in footprints.items()}, "load_avg": load()},
        "ratio": ratios,
        "target": "4-bit <= 0.45x of 16-bit on SmolLM2-135M (judged against bf16, the literal 16-bit)",
        "met": (ratios["bf16_4bit_over_16bit"] <= 0.45) if judged else None,
    }


def throughput(s: BenchSettings, rows: list[dict[str, Any]], mean_seq_len: float) -> dict[str, Any]:
    """Tokens/s per trial (from the trial metrics), FLOPs/token by the LoRA formula, MFU on a GPU only."""
    name = {"tiny": "embedded:tiny", "smollm2": "embedded:smollm2-135m"}[s.model]
    shape, peak = model_shape(name), gpu_peak_flops()
    trials = []
    for row in rows:
        if not row.get("tokens_per_s"):
            continue
        flops = lora_flops_per_token(shape["n_base"], int(row.get("trainable_params") or 0), shape["n_layers"],
                                     shape["d_model"], mean_seq_len)
        trials.append({"trial_id": row["trial_id"], "bits": row.get("bits"), "r": row.get("r"),
                       "target_modules": row.get("target_modules"), "tokens_per_s": round(row["tokens_per_s"], 1),
                       "flops_per_token": flops, "achieved_gflops": round(row["tokens_per_s"] * flops / 1e9, 3),
                       "mfu": mfu(row["tokens_per_s"], flops, peak)})
    by_bits = {str(b): median([t["tokens_per_s"] for t in trials if t["bits"] == b]) for b in (4, 8, 16)}
    return {
        "what": "training tokens/s per trial (answer+prompt tokens, 1 thread per trial, 2 trials at once)",
        "settings": {"source": "P1 FIFO sweep trial metrics (last report window)", "mean_seq_len": mean_seq_len,
                     "formula": "flops/token = 4*N_base + 6*N_lora + 12*n_layers*T*d_model", **shape},
        "raw": {"trials": trials, "median_tokens_per_s_by_bits": by_bits},
        "ratio": None, "target": None, "met": None,
        "mfu_note": "MFU is only computed on a GPU (no GPU here: a shared CPU has no meaningful peak FLOP/s)"
        if peak is None else f"peak {peak:.3g} FLOP/s",
    }
