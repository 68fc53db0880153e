"""What a sweep is compared with, computed while its trials run, on one trial's resources:

- the base model's scores on the test split (unquantized, the sweep's precision), and
- the default-LoRA baseline (r=8, alpha=16, qv targets, 16-bit base): trained with the sweep's own step budget,
  data and non-searched settings (so the only differences from "no sweep at all" are the searched
  hyperparameters), reported like a trial (its history and results row, role=baseline), then scored on the
  test split. It is never the winner and no scheduler stops it.

Both share one loaded base (BASE_CACHE), and both are stored in the sweep (base_scores.json, baseline/) and
reused when the sweep resumes. No Ray here: sweep.py runs `references` as a Ray task beside the trials.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from lora_tune.config import SweepConfig, TrialConfig, flatten

DEFAULT_LORA = {
    "peft.method": "lora", "peft.r": 8, "peft.alpha": 16, "peft.target_modules": "qv",
    "peft.use_dora": False, "peft.use_rslora": False, "quant.bits": 16,
}
BASE_SCORES = "base_scores.json"
BASELINE = "baseline"  # folder: result.json (row, history, test scores) and adapter/


def default_lora_config(cfg: SweepConfig) -> TrialConfig:
    """The sweep's trial defaults with the default-LoRA adapter on a 16-bit base."""
    return cfg.trial_config(DEFAULT_LORA)


def base_config(cfg: SweepConfig) -> TrialConfig:
    """The base model as the reference scores it: unquantized, in the sweep's precision."""
    return cfg.trial_config({"quant.bits": 16})


def score_base(trial_cfg: TrialConfig) -> dict[str, float]:
    """{base_<metric>: value} on the test split; the base stays cached for the baseline that follows."""
    from lora_tune import model as models
    from lora_tune import precision as precisions
    from lora_tune.data import test_items, with_chat_template
    from lora_tune.evaluate import score_model

    device = models.default_device()
    precision = precisions.resolve(trial_cfg.train.precision, device)
    tokenizer = with_chat_template(models.load_tokenizer(trial_cfg.model.name_or_path), trial_cfg.data)
    base = models.BASE_CACHE.acquire(trial_cfg.model.name_or_path, trial_cfg.quant, precision, device,
                                     trial_cfg.model.trust_remote_code)
    examples, items = test_items(tokenizer, trial_cfg.data, trial_cfg.seed)
    return {f"base_{k}": v for k, v in score_model(base, tokenizer, trial_cfg, examples, items, precision).items()}


def train_baseline(trial_cfg: TrialConfig, store: Any, data: Any = None) -> dict[str, Any]:
    """Train the default LoRA (on the cached base), score it on the test split, store its adapter; returns its
    reports and scores."""
    from lora_tune import model as models
    from lora_tune import precision as precisions
    from lora_tune.data import test_items, with_chat_template
    from lora_tune.evaluate import score_model
    from lora_tune.train import ADAPTER_DIR, run_trial

    reports: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lora_tune-baseline-") as tmp:
        final: list[str | None] = [None]

        def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
            reports.append({**metrics, "timestamp": time.time()})
            final[0] = checkpoint

        run_trial(trial_cfg, report, checkpoint_root=tmp, data=data)
        store.put_dir(Path(final[0]) / ADAPTER_DIR, f"{BASELINE}/adapter")
        trained = models.BASE_CACHE.adapted  # the trained adapter on the one cached base
        precision = precisions.resolve(trial_cfg.train.precision, models.default_device())
        tokenizer = with_chat_template(models.load_tokenizer(trial_cfg.model.name_or_path), trial_cfg.data)
        examples, items = test_items(tokenizer, trial_cfg.data, trial_cfg.seed)
        scores = score_model(trained, tokenizer, trial_cfg, examples, items, precision)
    return {"history": reports, "started": started, "finished": time.time(),
            "test": {f"default_lora_{k}": v for k, v in scores.items()}, "config": trial_cfg.to_dict()}


def references(cfg: SweepConfig, location: str, data: Any = None, num_threads: int = 1) -> dict[str, Any]:
    """The base model's test scores and (eval.baseline) the trained default LoRA's, each computed once per sweep."""
    import torch

    from lora_tune import memory
    from lora_tune import model as models
    from lora_tune.storage import Store

    torch.set_num_threads(num_threads)
    memory.claim_gpu(cfg.resources.gpus_per_trial, models.default_device())  # the whole (one-call) process's share
    store = Store.at(location)
    out: dict[str, Any] = {}
    if store.is_file(BASE_SCORES):
        out["base"] = store.read_json(BASE_SCORES)
    else:
        out["base"] = score_base(base_config(cfg))
        store.write_json(BASE_SCORES, out["base"])
    if cfg.eval.baseline:
        if store.is_file(f"{BASELINE}/result.json"):
            out["baseline"] = store.read_json(f"{BASELINE}/result.json")
        else:
            baseline_cfg = default_lora_config(cfg)
            shared = data if data is not None and baseline_cfg.data == cfg.data else None
            out["baseline"] = train_baseline(baseline_cfg, store, shared)
            store.write_json(f"{BASELINE}/result.json", out["baseline"])
    models.BASE_CACHE.clear()
    return out


def baseline_row(result: dict[str, Any], cfg: SweepConfig, columns: dict[str, str]) -> dict[str, Any]:
    """The baseline's results row: role=baseline, its best report by the sweep's metric, its hyperparameters."""
    from lora_tune.results import LAST_REPORT_COLUMNS, best_report, finite
    from lora_tune.space import encode_value

    history = result["history"]
    at_best = best_report(history, cfg.metric, cfg.mode) or {}
    last = history[-1] if history else {}
    flat = flatten(result["config"])
    row = {"trial_id": BASELINE, "role": BASELINE, "status": "TERMINATED", "stopped_early": False,
           "steps": last.get("step", 0)}
    for name in cfg.metric_names():
        value = at_best.get(name)
        row[name] = float(value) if finite(value) else None
    row["best_step"] = at_best.get("step")
    for key, column in columns.items():
        row[column] = encode_value(flat.get(key))
    for name in LAST_REPORT_COLUMNS:
        row.setdefault(name, last.get(name))
    return row
