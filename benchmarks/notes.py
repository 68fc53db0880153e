"""The prose of results.md: what each comparison measures, and data-driven reasons for targets missed."""

from __future__ import annotations

from typing import Any

NOTES = {
    "P1": "`run_sweep` twice on the same 16 configs sampled from `search_space=default` (same seed, so the same "
          "configs; `same_configs` in the JSON checks it), `scheduler=fifo` then `scheduler=asha`; wall time of the "
          "whole `run_sweep` call (Ray start, trials, results, the winner's test-split exact match).",
    "P2": "`train.run_trial` in one process with 1 thread: a warm-up trial loads the base into `BASE_CACHE`, then "
          "pairs of trials with `reuse_base=True` (fresh adapter on the cached base) and `reuse_base=False` (fresh "
          "`from_pretrained`); `time_to_first_step_s` = trial start to the end of the first optimizer step "
          "(tokenizer load, base load or reuse, adapter, optimizer, first step). Median over the pairs.",
    "P3": "a FIFO sweep over N configs, then the same N configs as bare `run_trial` calls one after another in "
          "this process (1 thread each, data tokenized once); ratio = sweep wall / (sum of bare times / 2). "
          "'trials only' uses Ray's result timestamps (first trial start to last result), i.e. without Ray "
          "start-up and the post-sweep test-split evaluation.",
    "P4": "HF `Trainer.hyperparameter_search(backend=\"ray\")` (transformers' own `run_hp_search_ray`, i.e. "
          "`ray.tune.run`) with `model_init` = `from_pretrained` (bitsandbytes per the trial's bits) + a fresh "
          "LoRA adapter, `TrainingArguments(max_steps, eval_strategy=\"steps\", eval_steps, cosine, AdamW, "
          "max_grad_norm=1)`, `hp_space` = the same ray.tune domains (lr as `learning_rate`), the same tokenized "
          "data and collate, an eval batch holding the whole eval set (so its eval_loss is the same token mean as "
          "lora_tune's), the same local Ray (2 CPUs, 1 per trial), `save_strategy=\"no\"` (cheaper for HF). "
          "lora_tune's side is P1's ASHA sweep. Time to target = sweep start to the first report with eval_loss "
          "<= the worse of the two best losses (Ray stamps whole seconds).",
    "P5": "`load_base` at 4 (NF4, double quant), 8 (LLM.int8) and 16 bits (no quantization) with the non-quantized "
          "weights (embeddings, norms, and everything at 16) in fp32 (the CPU default) or bf16; "
          "`model.get_memory_footprint()`.",
    "TPS": "tokens/s per trial from the trial metrics (prompt + answer tokens of the last report window). "
           "MFU = tokens/s x FLOPs/token / peak, with LoRA FLOPs/token ~= 4*N_base + 6*N_lora + "
           "12*n_layers*T*d_model (N_base: matmul weights of the frozen base incl. lm_head; N_lora: adapter "
           "weights; T: mean sequence length) - `benchmarks.trials.lora_flops_per_token`. MFU is only computed "
           "on a GPU; this machine has none, so the JSON gives achieved GFLOP/s instead.",
}


def p1_reason(sec: dict[str, Any]) -> str:
    r, asha = sec["ratio"], sec["raw"]["asha"]
    parts = [f"ASHA trained {r['steps_asha_over_fifo']}x of FIFO's optimizer steps ({asha['steps_trained']} steps, "
             f"{asha['stopped_early']} of {sec['settings']['num_samples']} trials stopped) but took "
             f"{r['time_asha_over_fifo']}x of its wall time"]
    if r["time_asha_over_fifo"] and r["steps_asha_over_fifo"] and r["time_asha_over_fifo"] > 0.4:
        parts.append("asynchronous ASHA with 2 trials at once lets the first trials past each rung (a rung "
                     "has nothing to compare them with yet), so the step saving itself stays above 0.40x; and "
                     "every one of the 16 trials still pays its start (tokenizer, a base load whenever the "
                     "worker's previous trial used other bits, adapter, optimizer, first evaluation and "
                     "checkpoint), a cost ASHA does not reduce and that trials this short do not amortise "
                     f"(phases of the ASHA sweep in seconds: {asha['phases']})")
    if r["loss_asha_over_fifo"] and r["loss_asha_over_fifo"] > 1.02:
        parts.append("ASHA's first rung judged trials on very few steps, and stopped the config that would "
                     "have won after max_steps")
    return "; ".join(parts)


def explain(report: dict[str, Any]) -> list[str]:
    """One line per target missed, with the measured reason where the numbers show it."""
    lines = []
    for model, result in report["models"].items():
        for key, sec in result["comparisons"].items():
            if "error" in sec:
                lines.append(f"{model} {key}: could not run ({sec['error']}).")
            elif sec.get("met") is False:
                explainer = {"P1": p1_reason, "P2": p2_reason, "P3": p3_reason}.get(key)
                reason = explainer(sec) if explainer else REASONS.get(key, "see results.json")
                lines.append(f"{model} {key}: {reason}.")
    return lines


def p2_reason(sec: dict[str, Any]) -> str:
    cells = [f"{b}-bit {v['reloaded_median_s']} s -> {v['reused_median_s']} s" for b, v in sec["raw"].items()]
    return ("reuse removes the base load (" + ", ".join(cells) + "), but the time to the first step also holds "
            "the first optimizer step itself (1.5-3 s for SmolLM2 at 1 thread on this CPU) plus tokenizer, "
            "adapter and optimizer set-up, which reuse cannot remove; the bases here load from the local "
            "safetensors cache in 0.1-3 s (16-bit is little more than a memory map; on the 3M-parameter tiny "
            "model the load is milliseconds and the pairs are noise), so 0.20x needs a base whose load dwarfs "
            "one step (a multi-GB model, or a GGUF that is de-quantized on load: ~25 s)")


def p3_reason(sec: dict[str, Any]) -> str:
    raw = sec["raw"]
    phases = raw["sweep"]["phases"]
    return (f"of the sweep's {raw['sweep']['wall_s']} s, {phases['before_first_trial_s']} s came before the first "
            "trial started (Ray start, worker processes importing torch/transformers) and "
            f"{phases['after_last_result_s']} s after the last result (results table, winner export, the "
            "test-split exact match in a Ray task that loads the base again, Ray shutdown); the trials "
            f"themselves spanned {phases['trials_span_s']} s against the ideal {raw['ideal_s']} s: each worker "
            "loads its own base, every evaluation is persisted as a Ray checkpoint, and two trials at once on "
            "the 2 cores shared with other jobs run slower than one trial at a time. With trials of "
            f"{raw['median_bare_trial_s']} s these fixed costs do not amortise")


REASONS = {
    "P4": "see the time-to-target numbers: HF reached the target loss earlier than 2x lora_tune's time",
    "P5": "embeddings (tied lm_head) and norms stay in the compute dtype at 4 bits",
}
