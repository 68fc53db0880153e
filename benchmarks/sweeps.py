"""P1 (ASHA vs FIFO on the same sampled configs) and P4 (lora_tune vs HF `hyperparameter_search`).

Both call `lora_tune.sweep.run_sweep` on configs composed exactly as the command line would, with local Ray,
W&B disabled, 2 concurrent trials of 1 CPU each, outputs under a temporary folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import compose, public, ratio, sweep_once, time_to_reach
from benchmarks.settings import BenchSettings
from lora_tune.config import SweepConfig


def config_key(row: dict[str, Any], cfg: SweepConfig) -> tuple:
    """The sampled hyperparameters of a results row (to check both sweeps ran the same configs)."""
    return tuple(str(row.get(name)) for name in sorted(cfg.search_space))


def p1_asha_vs_fifo(s: BenchSettings, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """FIFO then ASHA over the same `num_samples` configs (same seed); returns (section, raw runs)."""
    runs, cfg = {}, None
    for scheduler in ("fifo", "asha"):
        cfg = compose(s.overrides(scheduler), out, f"p1-{scheduler}")
        runs[scheduler] = sweep_once(cfg)
    fifo, asha = runs["fifo"], runs["asha"]
    same = sorted(config_key(r, cfg) for r in fifo["rows"]) == sorted(config_key(r, cfg) for r in asha["rows"])
    loss_ratio = ratio(asha["best_eval_loss"], fifo["best_eval_loss"])
    time_ratio = ratio(asha["wall_s"], fifo["wall_s"])
    trials_ratio = ratio((asha["phases"] or {}).get("trials_s"), (fifo["phases"] or {}).get("trials_s"))
    met = None if loss_ratio is None or time_ratio is None else loss_ratio <= 1.02 and time_ratio <= 0.40
    section = {
        "what": "ASHA vs FIFO on the same sampled configs: best eval loss and sweep wall time",
        "settings": {"num_samples": s.num_samples, "max_steps": s.max_steps, "eval_every": s.eval_every,
                     "grace_period": s.grace_period, "reduction_factor": s.reduction_factor,
                     "search_space": "default", "concurrency": s.max_concurrent},
        "raw": {"fifo": public(fifo), "asha": public(asha), "same_configs": same},
        "ratio": {"time_asha_over_fifo": time_ratio, "loss_asha_over_fifo": loss_ratio,
                  "trials_phase_asha_over_fifo": trials_ratio,
                  "steps_asha_over_fifo": ratio(asha["steps_trained"], fifo["steps_trained"])},
        "target": "best loss within 2 % (loss ratio <= 1.02) and time <= 0.40x",
        "met": met,
    }
    return section, runs


def p4_vs_hf(s: BenchSettings, out: Path, asha: dict[str, Any]) -> dict[str, Any]:
    """HF's Ray search vs lora_tune's ASHA sweep (P1's run): wall time to reach the loss both reach."""
    from benchmarks.hf_search import hf_search
    from lora_tune.errors import ConfigError

    hf = hf_search(compose(s.overrides("fifo"), out, "p4-hf-config"), out)
    ours_best, hf_best = asha["best_eval_loss"], hf["best_eval_loss"]
    if ours_best is None or hf_best is None:
        raise ConfigError(["P4: a side produced no eval loss"])
    target = max(ours_best, hf_best)
    t_ours = time_to_reach(asha["results"], asha["started"], target)
    t_hf = time_to_reach(hf["results"], hf["started"], target)
    speedup = ratio(t_hf, t_ours)
    return {
        "what": "lora_tune (ASHA, base reuse, data tokenized once) vs HF Trainer.hyperparameter_search(backend="
                "'ray') with a PEFT model_init (no scheduler, its default; base reloaded per trial)",
        "settings": {"num_samples": s.num_samples, "max_steps": s.max_steps, "eval_every": s.eval_every,
                     "search_space": "default (the same ray.tune domains)", "concurrency": s.max_concurrent,
                     "hf_scheduler": "none (FIFO, hyperparameter_search's default)",
                     "lora_tune_run": "P1's ASHA sweep"},
        "raw": {"lora_tune": public(asha), "hf": {k: v for k, v in hf.items() if k not in ("results", "started")},
                "target_loss": target, "lora_tune_time_to_target_s": t_ours, "hf_time_to_target_s": t_hf},
        "ratio": {"hf_over_lora_tune_time_to_target": speedup,
                  "hf_over_lora_tune_wall": ratio(hf["wall_s"], asha["wall_s"]),
                  "lora_tune_over_hf_best_loss": ratio(ours_best, hf_best)},
        "target": ">= 5x faster to the same best eval loss (the worse of the two bests, reached by both)",
        "met": None if speedup is None else speedup >= 5,
    }
