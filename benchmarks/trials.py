"""Single-trial comparisons, no Ray: P2 (first step with a reused vs reloaded base), P5 (parameter memory per bits),
PACK (tokens/s with and without packing), CKPT (checkpoint bytes per trial, before/after) and TPS (tokens/s and
FLOPs per trial of a sweep). `run_trial` and `load_base` are called in this process with 1 torch thread (a trial's
CPU share).

LoRA training FLOPs per token (used for MFU on a GPU):
    flops/token ~= 4 * N_base + 6 * N_lora + 12 * n_layers * T * d_model
N_base: weights of the frozen base that take part in matmuls (every Linear, lm_head included; forward 2N plus
the input-gradient pass 2N, no weight gradients); N_lora: adapter weights (forward, input and weight gradients:
6N); the last term is attention scores and values (QK^T and AV, 4*T*d per layer forward, twice that backward)
at mean sequence length T.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import compose, load, median, ratio
from benchmarks.settings import BenchSettings

# Dense bf16 peak FLOP/s of GPUs the project runs on (for MFU); None elsewhere.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
MODEL_NAMES = {"tiny": "embedded:tiny", "smollm2": "embedded:smollm2-135m"}


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

    from lora_tune.model import architecture, meta_model

    config = architecture(name_or_path)
    model = meta_model(config)
    n_base = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"n_base": n_base, "n_layers": config.num_hidden_layers, "d_model": config.hidden_size,
            "n_params": sum(p.numel() for p in model.parameters())}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """1 torch thread (a trial's CPU share) and an empty base cache, restored afterwards."""
    import torch

    from lora_tune import model as models

    threads = torch.get_num_threads()
    models.BASE_CACHE.clear()
    try:
        yield
    finally:
        models.BASE_CACHE.clear()
        torch.set_num_threads(threads)


@contextlib.contextmanager
def cold_model_cache() -> Iterator[None]:
    """A fresh, empty LORA_TUNE_CACHE: the embedded GGUF is de-quantized again on the next load."""
    before = os.environ.get("LORA_TUNE_CACHE")
    with tempfile.TemporaryDirectory(prefix="lora_tune-cold-") as tmp:
        os.environ["LORA_TUNE_CACHE"] = tmp
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("LORA_TUNE_CACHE", None)
            else:
                os.environ["LORA_TUNE_CACHE"] = before


def run_quietly(trial_cfg: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
    """`run_trial` with 1 thread, its checkpoints in a temporary folder; the last report's metrics."""
    from lora_tune.train import run_trial

    with tempfile.TemporaryDirectory(prefix="lora_tune-bench-") as root:
        return run_trial(trial_cfg, lambda m, c: None, checkpoint_root=root, num_threads=1, data=data, **kwargs)


def first_step_pairs(trial_cfg: Any, data: Any, repeats: int, cold: bool) -> dict[str, Any]:
    """A warm-up trial caches the base, then `repeats` pairs: a trial on the cached base, a trial that loads it
    again (from the prepared safetensors, or with `cold` de-quantizing the GGUF again)."""
    def first_step(reuse: bool) -> dict[str, Any]:
        with cold_model_cache() if cold and not reuse else contextlib.nullcontext():
            metrics = run_quietly(trial_cfg, data, reuse_base=reuse)
        return {"time_to_first_step_s": metrics["time_to_first_step_s"], "base_reused": metrics["base_reused"]}

    warm = first_step(True)
    pairs = [(first_step(True), first_step(False)) for _ in range(repeats)]
    reused = median([p[0]["time_to_first_step_s"] for p in pairs])
    reloaded = median([p[1]["time_to_first_step_s"] for p in pairs])
    return {"warm_up": warm, "pairs": pairs, "reused_median_s": reused, "reloaded_median_s": reloaded,
            "ratio": ratio(reused, reloaded)}


def p2_first_step(s: BenchSettings, out: Path) -> dict[str, Any]:
    """Seconds from trial start to the end of its first optimizer step: base reused vs loaded again, for a base
    that loads from the prepared cache (warm) and one whose every load de-quantizes the GGUF (cold)."""
    from lora_tune.sweep import shared_task_data

    cfg = compose([f"model={s.model}", "max_steps=1", "train.eval_every=1", "data.eval_examples=4",
                   "eval.generate=never"], out, "p2")
    data = shared_task_data(cfg)
    raw: dict[str, Any] = {}
    with one_thread():
        for bits in s.p2_bits:
            raw[f"warm_{bits}bit"] = first_step_pairs(cfg.trial_config({"quant.bits": bits}), data,
                                                      s.p2_repeats, cold=False)
        if s.model == "smollm2":  # only the embedded SmolLM2 is a GGUF
            raw["cold_gguf_4bit"] = first_step_pairs(cfg.trial_config({"quant.bits": 4}), data, s.p2_repeats,
                                                     cold=True)
    judged = raw.get("cold_gguf_4bit")
    return {
        "what": "time from trial start to the end of the first optimizer step, base reused vs reloaded",
        "settings": {"bits": list(s.p2_bits), "repeats": s.p2_repeats, "threads": 1,
                     "adapter": "the trial defaults (r=8, alpha=16, qv)", "data": "tokenized once, shared",
                     "warm": "reload = from_pretrained of the safetensors checkpoint prepared once per machine",
                     "cold": "reload = the GGUF de-quantized again (a base whose load is expensive)"},
        "raw": raw,
        "ratio": {f"reused_over_reloaded_{name}": v["ratio"] for name, v in raw.items()},
        "target": "<= 0.20x on a base whose load is expensive (cold GGUF)",
        "met": None if not judged or judged["ratio"] is None else judged["ratio"] <= 0.20,
    }


def p5_memory(s: BenchSettings) -> dict[str, Any]:
    """`get_memory_footprint()` of the same base at 4, 8 and 16 bits, for fp32 and bf16 non-quantized weights."""
    from lora_tune.config import QuantConfig
    from lora_tune.model import load_base

    name = MODEL_NAMES[s.model]
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
                     "note": "16-bit means no quantization; 4/8-bit keep embeddings and norms in the compute dtype"},
        "raw": {"bytes": footprints, "mb": {d: {b: round(v / 2**20, 1) for b, v in f.items()}
                                            for d, f in footprints.items()}, "load_avg": load()},
        "ratio": ratios,
        "target": "4-bit <= 0.45x of 16-bit on SmolLM2-135M (judged against bf16, the literal 16-bit)",
        "met": (ratios["bf16_4bit_over_16bit"] <= 0.45) if judged else None,
    }


def pack_throughput(s: BenchSettings, out: Path) -> dict[str, Any]:
    """Training tokens/s (real tokens, padding excluded) with data.packing=false (length-grouped batches) and
    data.packing=true (several examples per row, attention kept inside each), the same examples and steps."""
    from lora_tune.sweep import shared_task_data

    arms = {}
    with one_thread():
        for packing in (False, True):
            cfg = compose([f"model={s.model}", f"max_steps={s.pack_steps}", f"train.eval_every={s.pack_steps}",
                           f"train.batch_size={s.pack_batch_size}", f"data.max_seq_len={s.pack_seq_len}",
                           f"data.packing={str(packing).lower()}", "data.eval_examples=4", "eval.generate=never"],
                          out, "pack")
            metrics = run_quietly(cfg.trial_config({}), shared_task_data(cfg))
            arms["packed" if packing else "padded"] = {k: metrics[k] for k in ("tokens_per_s", "step_time_s")}
    return {
        "what": "training tokens/s without and with packing (same examples, steps, batch, 1 thread)",
        "settings": {"steps": s.pack_steps, "batch_size": s.pack_batch_size, "max_seq_len": s.pack_seq_len,
                     "unpacked": "length-grouped batches, right padding", "tokens": "real tokens (no padding)",
                     "timed": "the optimizer steps of the last report window (no load, no evaluation)"},
        "raw": arms,
        "ratio": {"packed_over_padded_tokens_per_s": ratio(arms["packed"]["tokens_per_s"],
                                                           arms["padded"]["tokens_per_s"])},
        "target": None, "met": None,
    }


def checkpoint_bytes(s: BenchSettings, out: Path) -> dict[str, Any]:
    """Bytes a trial writes to storage: the full resumable state at every evaluation (round 1) vs adapter-only
    evaluation checkpoints plus the resumable state every train.checkpoint_every steps (now, the defaults)."""
    from lora_tune.sweep import shared_task_data

    cfg = compose([f"model={s.model}", f"max_steps={s.ckpt_steps}", f"train.eval_every={s.eval_every}",
                   "data.eval_examples=4", "eval.generate=never"], out, "ckpt")
    data = shared_task_data(cfg)
    never = {"train.checkpoint_every": s.ckpt_steps + 1}  # no separate resumable states
    arms = {}
    with one_thread():
        arms["before"] = run_quietly(cfg.trial_config(never), data, full_state_in_reports=True)["checkpoint_bytes"]
        arms["after"] = run_quietly(cfg.trial_config({}), data)["checkpoint_bytes"]
    every = cfg.train.checkpoint_every or 2 * cfg.train.eval_every
    return {
        "what": "bytes written to storage per trial: full state at every evaluation (before) vs adapter-only "
                "evaluation checkpoints + the resumable state every train.checkpoint_every steps (after)",
        "settings": {"steps": s.ckpt_steps, "eval_every": cfg.train.eval_every, "checkpoint_every": every,
                     "adapter": "the trial defaults (r=8, alpha=16, qv, 4-bit base)"},
        "raw": {"bytes": arms, "mb": {k: round(v / 2**20, 2) for k, v in arms.items()}},
        "ratio": {"after_over_before": ratio(arms["after"], arms["before"])},
        "target": None, "met": None,
    }


def throughput(s: BenchSettings, rows: list[dict[str, Any]], mean_seq_len: float, source: str) -> dict[str, Any]:
    """Tokens/s per trial (from the trial metrics of the sweep named `source`), FLOPs/token by the LoRA formula,
    MFU on a GPU only."""
    shape, peak = model_shape(MODEL_NAMES[s.model]), gpu_peak_flops()
    trials = []
    for row in rows:
        if not row.get("tokens_per_s"):
            continue
        flops = lora_flops_per_token(shape["n_base"], int(row.get("trainable_params") or 0), shape["n_layers"],
                                     shape["d_model"], mean_seq_len)
        trials.append({"trial_id": row["trial_id"], "bits": row.get("bits"), "r": row.get("r"),
                       "target_modules": row.get("target_modules"), "tokens_per_s": round(row["tokens_per_s"], 1),
                       "flops_per_token": flops, "achieved_gflops": round(row["tokens_per_s"] * flops / 1e9, 3),
                       "mfu": mfu(row["tokens_per_s"], flops, peak), "eval_time_frac": row.get("eval_time_frac"),
                       "checkpoint_time_frac": row.get("checkpoint_time_frac"),
                       "checkpoint_bytes": row.get("checkpoint_bytes")})
    by_bits = {str(b): median([t["tokens_per_s"] for t in trials if t["bits"] == b]) for b in (4, 8, 16)}
    return {
        "what": "training tokens/s per trial (prompt + answer tokens, 1 thread per trial, 2 trials at once)",
        "settings": {"source": f"{source} trial metrics (last report window)", "mean_seq_len": mean_seq_len,
                     "formula": "flops/token = 4*N_base + 6*N_lora + 12*n_layers*T*d_model", **shape},
        "raw": {"trials": trials, "median_tokens_per_s_by_bits": by_bits,
                "median_eval_time_frac": median([t["eval_time_frac"] for t in trials if t["eval_time_frac"]]),
                "median_checkpoint_time_frac": median([t["checkpoint_time_frac"] for t in trials
                                                       if t["checkpoint_time_frac"]])},
        "ratio": None, "target": None, "met": None,
        "mfu_note": "MFU is only computed on a GPU (no GPU here: a shared CPU has no meaningful peak FLOP/s)"
        if peak is None else f"peak {peak:.3g} FLOP/s",
    }
