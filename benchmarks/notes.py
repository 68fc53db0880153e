"""The prose of results.md: what each comparison measures, where each sweep's time went, and data-driven reasons
for targets missed."""

from __future__ import annotations

from typing import Any

NOTES = {
    "P1": "`run_sweep` twice on the same 16 configs sampled from `search_space=default` (same seed, so the same "
          "configs; `same_configs` in the JSON checks it), `scheduler=fifo` then `scheduler=asha`, 30 steps, an "
          "evaluation every 10, ASHA grace 10 and reduction factor 3 (the quickstart's); wall time of the whole "
          "`run_sweep` call (start-up, trials, the winner's test scoring on 50 rows). No generation during "
          "trials and no default-LoRA baseline, so the work matches P4's HF side.",
    "P2": "`train.run_trial` in one process with 1 thread: a warm-up trial loads the base into `BASE_CACHE`, then "
          "pairs of trials with `reuse_base=True` (fresh adapter on the cached base) and `reuse_base=False` (a "
          "fresh `from_pretrained`); `time_to_first_step_s` = trial start to the end of the first optimizer step "
          "(tokenizer, base load or reuse, adapter, optimizer, first step). Median over the pairs. *warm*: the "
          "reload reads the safetensors checkpoint lora_tune prepared once on this machine (cheap: a memory "
          "map). *cold GGUF*: the reload starts from an empty model cache, so SmolLM2's GGUF is de-quantized "
          "again, a base whose every load is expensive (like a multi-GB download); the target is judged there.",
    "P3": "the quickstart exactly as `make sweep` runs it (8 trials x 30 steps, ASHA, W&B offline, the default "
          "LoRA baseline and base scores as a Ray task beside the trials, the winner's test scoring on 200 "
          "rows), then the same work without Ray: the data tokenized once, a pool of 2 processes (1 thread "
          "each, keeping their base between jobs) running the reference job and every trial's config for the "
          "steps ASHA let it run, then the winner's test scoring on both cores. Ratio = sweep wall / that.",
    "P4": "HF `Trainer.hyperparameter_search(backend=\"ray\")` (transformers' `run_hp_search_ray`, i.e. "
          "`ray.tune.run`) with `model_init` = `from_pretrained` (bitsandbytes per the trial's bits) + a fresh "
          "LoRA adapter, `TrainingArguments(max_steps=30, eval_strategy=\"steps\", eval_steps=10, cosine, AdamW, "
          "max_grad_norm=1)`, `hp_space` = lora_tune's own param_space (lr as `learning_rate`), the same "
          "tokenized data and collate, one eval batch holding the whole eval set (so its eval_loss is the same "
          "token mean as lora_tune's), the same local Ray (2 CPUs, 1 per trial), `save_strategy=\"no\"` (cheaper "
          "for HF). lora_tune's side is P1's ASHA sweep. Time to target = sweep start to the first report with "
          "eval_loss <= the worse of the two best losses (Ray stamps whole seconds).",
    "P5": "`load_base` at 4 (NF4, double quant), 8 (LLM.int8) and 16 bits (no quantization) with the non-quantized "
          "weights (embeddings, norms, and everything at 16) in fp32 or bf16; `model.get_memory_footprint()`.",
    "PACK": "`run_trial` twice on the same examples (16 per step, 1 thread): `data.packing=false` (length-grouped "
            "batches, right padding) and `data.packing=true` (first-fit rows of 256 tokens, position ids "
            "restarting per example: attention stays inside each); tokens/s counts real tokens only, over the "
            "optimizer steps of the last report window.",
    "CKPT": "`run_trial` twice, 30 steps, an evaluation every 10: *before* = the full resumable state (adapter, "
            "optimizer, LR schedule, RNG) in every evaluation checkpoint, as round 1 wrote it; *after* = the "
            "defaults: adapter-only evaluation checkpoints plus the resumable state every "
            "`train.checkpoint_every` (2 x eval_every) steps. Bytes = the trial's `checkpoint_bytes` metric.",
    "TPS": "tokens/s per trial from the trial metrics (prompt + answer tokens of the last report window), with "
           "the share of trial time spent evaluating and checkpointing. MFU = tokens/s x FLOPs/token / peak, "
           "with LoRA FLOPs/token ~= 4*N_base + 6*N_lora + 12*n_layers*T*d_model (N_base: matmul weights of "
           "the frozen base incl. lm_head; N_lora: adapter weights; T: mean sequence length) - "
           "`benchmarks.trials.lora_flops_per_token`. MFU is only computed on a GPU; this machine has none, so "
           "the JSON gives achieved GFLOP/s instead.",
}

PHASE_NAMES = {"ray_start_s": "start-up (checks, data, Ray)", "trials_s": "trials", "after_trials_s": "tail"}


def phase_text(phases: dict[str, float] | None, wall: float | None = None) -> str:
    """'start-up 20 s, trials 300 s, tail 40 s' from a sweep's summary timings."""
    if not phases:
        return "no phase timings (the sweep had no winner)"
    parts = [f"{PHASE_NAMES.get(k, k)} {v:.0f} s" for k, v in phases.items()]
    return ", ".join(parts) + (f" of {wall:.0f} s" if wall else "")


def sweep_phases(report: dict[str, Any]) -> list[str]:
    """One line per sweep the run measured: where its wall time went."""
    lines = []
    for model, result in report["models"].items():
        comparisons = result["comparisons"]
        runs = [("P1 FIFO", comparisons.get("P1", {}).get("raw", {}).get("fifo")),
                ("P1 ASHA", comparisons.get("P1", {}).get("raw", {}).get("asha")),
                ("P3 quickstart", comparisons.get("P3", {}).get("raw", {}).get("sweep"))]
        for name, run in runs:
            if run:
                lines.append(f"{model} {name}: {phase_text(run.get('phases'), run.get('wall_s'))}")
    clone = report.get("make_sweep")
    if clone:
        lines.append(f"`make sweep` on a fresh clone ({clone['when']}): {clone['wall_s']:.0f} s against the "
                     f"{MAKE_SWEEP_TARGET_S} s target, set-up {clone['setup_s']:.0f} s ({clone['setup']}), then "
                     f"{phase_text(clone['phases'])}{work_text(clone)}")
    return lines


def p1_reason(sec: dict[str, Any]) -> str:
    r, asha, fifo = sec["ratio"], sec["raw"]["asha"], sec["raw"]["fifo"]
    parts = [f"ASHA trained {r['steps_asha_over_fifo']}x of FIFO's optimizer steps ({asha['steps_trained']} of "
             f"{fifo['steps_trained']}; {asha['stopped_early']} of {sec['settings']['num_samples']} trials stopped) "
             f"and took {r['time_asha_over_fifo']}x of its wall time (trials phase "
             f"{r.get('trials_phase_asha_over_fifo')}x)"]
    if r["time_asha_over_fifo"] and r["time_asha_over_fifo"] > 0.4:
        parts.append("with 3 rungs-worth of budget (grace 10, max 30, reduction factor 3) the best ASHA can do "
                     "is stop 2/3 of the trials at step 10: (16x10 + 6x20) / (16x30) = 0.58x of the steps; "
                     "asynchronous ASHA promotes the first trials past a rung before it has anything to compare "
                     "them with, and every trial still pays its fixed costs (start, evaluation at step 10, "
                     "checkpoint), which the stopped trials spend on 10 steps. The time floor at this budget is "
                     "therefore above 0.40x; start-up and the tail are the same for both and add to each "
                     f"(ASHA: {phase_text(asha['phases'])}; FIFO: {phase_text(fifo['phases'])})")
    if r["loss_asha_over_fifo"] and r["loss_asha_over_fifo"] > 1.02:
        parts.append("ASHA's first rung judged trials at step 10 and stopped the config that would have won "
                     "after 30 steps")
    return "; ".join(parts)


def p2_reason(sec: dict[str, Any]) -> str:
    cells = [f"{name} {v['reloaded_median_s']} s -> {v['reused_median_s']} s" for name, v in sec["raw"].items()]
    return ("reuse removes the base load (" + ", ".join(cells) + "), but the time to the first step also holds "
            "the first optimizer step itself and the tokenizer, adapter and optimizer set-up, which reuse cannot "
            "remove; the ratio reaches 0.20x only when the load is at least ~5x everything else")


def p3_reason(sec: dict[str, Any]) -> str:
    raw = sec["raw"]
    sweep, ideal = raw["sweep"], raw["ideal"]
    return (f"the sweep took {sweep['wall_s']:.0f} s ({phase_text(sweep['phases'])}) against an ideal of "
            f"{ideal['ideal_s']:.0f} s (data {ideal['data_s']:.0f} s, 2-process pool {ideal['pool_s']:.0f} s, "
            f"winner scoring {ideal['winner_scoring_s']:.0f} s){work_text(sweep)}{inside_actors_text(sweep, ideal)}: "
            "Ray's start-up (node, workers importing torch and transformers) has no counterpart in the ideal, each "
            "trial is persisted (Ray checkpoints, result rows, W&B offline files) and the post-sweep work writes "
            "results and the winner's artifact")


def inside_actors_text(sweep: dict[str, Any], ideal: dict[str, Any]) -> str:
    """Whether the trials phase lost its time to idle cores or to the jobs themselves running slower in Ray."""
    work = sweep.get("work_core_s")
    if not work:
        return ""
    floor = work_floor_s(work)
    if floor <= ideal["pool_s"]:
        return f"; the bare pool needed {ideal['pool_s']:.0f} s for the same jobs, so the sweep's cores idled"
    return (f"; the bare pool ran the same jobs in {ideal['pool_s']:.0f} s, under that floor: the jobs' own time "
            f"was {floor / ideal['pool_s']:.2f}x longer inside the sweep's Ray actors than in bare processes (the "
            "overhead is in the trials' own time, not in idle cores)")


def p4_reason(sec: dict[str, Any]) -> str:
    raw = sec["raw"]
    ours, hf = raw["lora_tune"], raw["hf"]
    concurrency = sec["settings"]["concurrency"]
    ours_trials_s = ours.get("phases", {}).get("trials_s", ours["wall_s"])
    per_step = (ours_trials_s * concurrency / ours["steps_trained"], hf["wall_s"] * concurrency / hf["steps_trained"])
    return (f"the whole sweep was {sec['ratio']['hf_over_lora_tune_wall']}x faster ({ours['wall_s']:.0f} s vs HF's "
            f"{hf['wall_s']:.0f} s: ASHA trained {ours['steps_trained']} of HF's {hf['steps_trained']} steps, at "
            f"{per_step[0]:.1f} vs {per_step[1]:.1f} core-seconds a step with the base reused and the data tokenized "
            "once), but time to a loss both reach is decided by which side's early trials cross it: the same config "
            "trained by HF's Trainer (its own data order) ends at a different loss, HF's best was "
            f"{hf['best_eval_loss']:.4f} against lora_tune's {ours['best_eval_loss']:.4f}, so HF crossed "
            f"{raw['target_loss']:.4f} after {raw['hf_time_to_target_s']} s while lora_tune reached it at its best, "
            f"after {raw['lora_tune_time_to_target_s']} s. On 30-step trials on 2 cores the optimizer steps are most "
            "of the work on both sides, so scheduling and base reuse cannot make the sweep 5x faster")


def observations(report: dict[str, Any]) -> list[str]:
    """What the comparisons without a target show, with their numbers."""
    lines = []
    for model, result in report["models"].items():
        comparisons = result["comparisons"]
        pack, ckpt = comparisons.get("PACK", {}), comparisons.get("CKPT", {})
        if pack.get("ratio"):
            packed, padded = pack["raw"]["packed"]["tokens_per_s"], pack["raw"]["padded"]["tokens_per_s"]
            lines.append(
                f"{model} PACK: packed {packed:.0f} vs padded {padded:.0f} tokens/s "
                f"({pack['ratio']['packed_over_padded_tokens_per_s']}x). On a CPU with SDPA attention a packed row "
                "attends over its whole length under a block-diagonal mask (work grows with the row's square), "
                "while length-grouped batches of short examples already carry little padding; packing "
                "pays where padding is large (mixed lengths, no grouping) or with varlen flash attention on a GPU")
        if ckpt.get("ratio"):
            mb = ckpt["raw"]["mb"]
            evals = ckpt["settings"]["steps"] // ckpt["settings"]["eval_every"]
            lines.append(
                f"{model} CKPT: {mb['before']} MB -> {mb['after']} MB per trial "
                f"({ckpt['ratio']['after_over_before']}x) with {evals} evaluations. Before, every evaluation wrote "
                "adapter + optimizer state; after, evaluations write the adapter only and the resumable state "
                "comes every checkpoint_every steps, so the saving grows with the number of evaluations per "
                "resumable state (the optimizer state is 2x the adapter)")
    precision = precision_text(report.get("precision"), report["machine"].get("auto_precision"))
    return lines + ([precision] if precision else [])


MAKE_SWEEP_TARGET_S = 420  # issue 18: `make sweep` on a fresh clone under 7 minutes on 2 cores


def make_sweep_reason(sec: dict[str, Any], fresh_clone: dict[str, Any] | None = None) -> str | None:
    """The `make sweep` target, judged on P3's quickstart run (the same sweep; a fresh clone adds the set-up) and,
    when results.json has one, on `make sweep` timed on a fresh clone (`make_sweep`)."""
    sweep, ideal = sec["raw"]["sweep"], sec["raw"]["ideal"]
    if sweep["wall_s"] <= MAKE_SWEEP_TARGET_S and not (fresh_clone and fresh_clone["wall_s"] > MAKE_SWEEP_TARGET_S):
        return None
    measured = (f"; timed on a fresh clone ({fresh_clone['when']}), `make sweep` took {fresh_clone['wall_s']:.0f} s: "
                f"set-up {fresh_clone['setup_s']:.0f} s ({fresh_clone['setup']}), then "
                f"{phase_text(fresh_clone['phases'])}" if fresh_clone else "")
    measured += work_text(fresh_clone)
    earlier = (fresh_clone or {}).get("earlier")
    if earlier:
        measured += (f" (an earlier run: {earlier['wall_s']:.0f} s, set-up {earlier['setup_s']:.0f} s, "
                     f"{phase_text(earlier['phases'])}; {earlier['note']})")
    return (f"`make sweep` under 7 minutes: the quickstart sweep alone took {sweep['wall_s']:.0f} s "
            f"({phase_text(sweep['phases'])}), {sweep['wall_s'] - MAKE_SWEEP_TARGET_S:.0f} s over before any "
            f"set-up, at {sec['ratio']['sweep_over_ideal']}x of the same work done bare ({ideal['ideal_s']:.0f} s)"
            f"{measured}. What is left is the work itself on 2 cores: the trials' optimizer steps and evaluations, "
            "the default-LoRA baseline's 30 steps, and three test-split scorings of 200 generated answers (base and "
            f"baseline beside the trials, the winner's after them: {ideal['winner_scoring_s']:.0f} s on 2 threads)"
            ". Fewer test rows (data.test_examples) or "
            "eval.baseline=false shorten it; the defaults keep them")


def precision_text(precision: dict[str, Any] | None, auto: str | None) -> str | None:
    """bf16 autocast against fp32 on this CPU, when measured: the evidence behind `train.precision=auto`'s choice."""
    if not precision:
        return None
    trials, bf16, fp32 = precision["trials_30_steps"], precision["bf16"], precision["fp32"]
    measured_in = f", so the numbers above were measured in {auto}" if auto else ""
    return (f"precision: `train.precision=auto` resolves to {precision['auto_on_this_cpu']} on this CPU "
            f"({precision['why']}){measured_in}. Side by side with fp32 on one fresh clone, the quickstart sweep "
            f"took {bf16['sweep_s']:.0f} s in bf16 ({phase_text(bf16['phases'])}) vs {fp32['sweep_s']:.0f} s in fp32 "
            f"({phase_text(fp32['phases'])}), the winner's eval loss {bf16['winner_eval_loss']} vs "
            f"{fp32['winner_eval_loss']} and test exact match {bf16['winner_test_exact_match']} vs "
            f"{fp32['winner_test_exact_match']}; single 30-step trials side by side ended at eval loss "
            f"{trials['16bit']['bf16'][-1]} vs {trials['16bit']['fp32'][-1]} (16-bit) and "
            f"{trials['4bit']['bf16'][-1]} vs {trials['4bit']['fp32'][-1]} (4-bit) in "
            f"{trials['16bit']['wall_bf16_s'] / trials['16bit']['wall_fp32_s']:.2f}x and "
            f"{trials['4bit']['wall_bf16_s'] / trials['4bit']['wall_fp32_s']:.2f}x the time{seeds_text(trials)} (an "
            "8-step check had bf16 behind early: 0.436 vs 0.358). A CPU without native bf16 stays in fp32, where "
            "emulated bf16 would be slower")


def seeds_text(trials: dict[str, Any]) -> str:
    """The 16-bit trial repeated over more seeds: bf16's final eval loss against fp32's, per seed and on average."""
    runs = [trials["16bit"], *trials.get("16bit_more_seeds", {}).values()]
    if len(runs) < 2:
        return ""
    changes = [run["bf16"][-1] / run["fp32"][-1] - 1 for run in runs]
    mean = {p: sum(run[p][-1] for run in runs) / len(runs) for p in ("bf16", "fp32")}
    wall = sum(run["wall_bf16_s"] for run in runs) / sum(run["wall_fp32_s"] for run in runs)
    return (f"; over {len(runs)} seeds at 16 bits the final eval loss averaged {mean['bf16']:.4f} (bf16) vs "
            f"{mean['fp32']:.4f} (fp32), per seed {min(changes):+.1%} to {max(changes):+.1%}, in {wall:.2f}x the time")


def work_floor_s(work: dict[str, float]) -> float:
    """The least wall time 2 cores need for a trials phase holding `work` core-seconds."""
    return sum(work.values()) / 2


def work_text(fresh_clone: dict[str, Any] | None) -> str:
    """How many core-seconds the fresh-clone sweep's trials phase held, and its floor on the machine's 2 cores."""
    work = (fresh_clone or {}).get("work_core_s")
    if not work:
        return ""
    references = work["base_scoring"] + work["baseline_training"] + work["baseline_scoring"]
    return (f"; its trials phase held {work['trials'] + references:.0f} core-seconds of work: the trials "
            f"{work['trials']:.0f}, and beside them on one core the base model's test scoring "
            f"{work['base_scoring']:.0f}, the default LoRA's 30 steps {work['baseline_training']:.0f} and its "
            f"test scoring {work['baseline_scoring']:.0f}, so on 2 cores it cannot take less than "
            f"{work_floor_s(work):.0f} s (it took {fresh_clone['phases']['trials_s']:.0f} s)")


BENCH_BUDGET_S = 45 * 60  # issue 18: `make bench` under 45 minutes on 2 cores


def section_costs(comparisons: dict[str, Any]) -> dict[str, float]:
    """Each section's share of one full `make bench` of this model: its wall time, P4 counted as its HF side (a
    full run reuses P1's ASHA sweep for lora_tune's side)."""
    costs = {key: sec.get("bench_wall_s", 0.0) for key, sec in comparisons.items()}
    if comparisons.get("P4", {}).get("raw"):
        costs["P4"] = comparisons["P4"]["raw"]["hf"]["wall_s"]
    return costs


def steps_trained(comparisons: dict[str, Any]) -> int:
    """Optimizer steps the sweeps of P1 (FIFO and ASHA), P3 (the sweep and its bare replay) and P4 (HF) train."""
    raw = {key: comparisons.get(key, {}).get("raw") or {} for key in ("P1", "P3", "P4")}
    counted = [raw["P1"].get("fifo"), raw["P1"].get("asha"), raw["P3"].get("sweep"), raw["P4"].get("hf")]
    return sum(int(run["steps_trained"]) for run in counted if run) + int(raw["P3"].get("ideal", {}).get("steps", 0))


def bench_budget_reason(comparisons: dict[str, Any]) -> str | None:
    costs = section_costs(comparisons)
    total = sum(costs.values())
    if total <= BENCH_BUDGET_S:
        return None
    top = sorted(((wall, key) for key, wall in costs.items()), reverse=True)[:3]
    return (f"`make bench` under 45 minutes: its sections add up to {total:.0f} s ({total / 60:.0f} min) for one "
            f"full run ({', '.join(f'{key} {wall:.0f} s' for wall, key in top)}; P4 counted as its HF side, since "
            f"a full run reuses P1's ASHA sweep). The sweeps at the issue's budgets train {steps_trained(comparisons)} "
            "optimizer steps of SmolLM2 with an evaluation every 10 steps (P1's FIFO and ASHA over 16 configs x 30 "
            "steps, P3's quickstart and its bare replay, P4's HF 16 x 30), two at a time on 2 cores at ~2 s a step: "
            "that work alone is most of the 45 minutes; `--only` runs a subset")


def explain(report: dict[str, Any]) -> list[str]:
    """One line per target missed, with the measured reason where the numbers show it."""
    explainers = {"P1": p1_reason, "P2": p2_reason, "P3": p3_reason, "P4": p4_reason}
    lines = []
    for model, result in report["models"].items():
        p3 = result["comparisons"].get("P3", {})
        reason = make_sweep_reason(p3, report.get("make_sweep")) if p3.get("raw") and model == "smollm2" else None
        if reason:
            lines.append(f"{model} {reason}.")
        budget = bench_budget_reason(result["comparisons"]) if not report.get("quick") else None
        if budget:
            lines.append(f"{model} {budget}.")
        for key, sec in result["comparisons"].items():
            if "error" in sec:
                lines.append(f"{model} {key}: could not run ({sec['error']}).")
            elif sec.get("met") is False:
                explainer = explainers.get(key)
                reason = explainer(sec) if explainer else REASONS.get(key, "see results.json")
                lines.append(f"{model} {key}: {reason}.")
    return lines


REASONS = {
    "P5": "embeddings (tied lm_head) and norms stay in the compute dtype at 4 bits",
}
