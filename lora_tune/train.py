"""One fine-tuning trial, no Ray: `run_trial(cfg, report)`.

    python -m lora_tune.train experiment=tiny peft.r=16      # one trial with the composed config, no Ray

Loads the (quantized) base, attaches a fresh adapter, trains for `max_steps`, and every `train.eval_every`
steps evaluates on held-out data and calls `report(metrics, checkpoint_dir)`. Checkpoints (adapter,
optimizer, LR schedule, RNG state, step) are written atomically; `resume_from` continues from one at the
same step and data position.
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_tune import data as task_data
from lora_tune import evaluate
from lora_tune import model as models
from lora_tune.atomic import atomic_directory
from lora_tune.config import TrialConfig

Report = Callable[[dict[str, Any], str | None], None]
STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrialState:
    """What lives between steps: the model being trained and its optimisation state."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: task_data.TaskData
    step: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrialConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Paged AdamW (bitsandbytes) for quantized bases on GPU, torch AdamW otherwise."""
    name = cfg.train.optimizer
    if name == "auto":
        name = "paged_adamw" if torch.cuda.is_available() and cfg.quant.bits in (4, 8) else "adamw"
    if name == "paged_adamw":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def build_state(cfg: TrialConfig, data: task_data.TaskData | None = None, base: Any = None,
                reuse_base: bool = True) -> TrialState:
    """Tokenizer, data, base + fresh adapter, optimizer and LR schedule for `cfg`.

    The base comes from `base`, else this process's BASE_CACHE (`reuse_base`), else a fresh load.
    """
    from transformers import get_scheduler

    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    data = data or task_data.prepare_task_data(tokenizer, cfg.data)
    cache = models.BASE_CACHE if base is None and reuse_base else None
    if cache is not None:
        base = cache.acquire(cfg.model.name_or_path, cfg.quant, cfg.model.trust_remote_code)
    elif base is None:
        base = models.load_base(cfg.model.name_or_path, cfg.quant, cfg.model.trust_remote_code)
    seed_everything(cfg.seed)  # the adapter's initialisation depends on it
    model = models.attach_adapter(base, cfg.peft, cfg.quant, cfg.max_steps, cfg.model.gradient_checkpointing)
    if cache is not None:
        cache.adapted_by(model)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer,
                              num_warmup_steps=int(cfg.train.warmup_ratio * cfg.max_steps),
                              num_training_steps=cfg.max_steps)
    return TrialState(model, tokenizer, optimizer, scheduler, data)


def train_step(state: TrialState, cfg: TrialConfig, step: int) -> tuple[float, int]:
    """One optimizer step over `grad_accum` micro-batches; returns (mean loss, answer tokens)."""
    model, on = state.model, next(state.model.parameters()).device
    total_loss, tokens = 0.0, 0
    for micro in range(cfg.train.grad_accum):
        indices = task_data.batch_indices((step - 1) * cfg.train.grad_accum + micro + 1, cfg.train.batch_size,
                                          len(state.data.train), cfg.seed)
        batch = task_data.collate([state.data.train[i] for i in indices], state.tokenizer.pad_token_id)
        batch = {k: v.to(on) for k, v in batch.items()}
        loss = model(**batch).loss / cfg.train.grad_accum
        loss.backward()
        total_loss += loss.item()
        tokens += int(batch["attention_mask"].sum())
    if not math.isfinite(total_loss):
        raise TrialDiverged(f"train loss is {total_loss} at step {step} (train.lr={cfg.train.lr})")
    if cfg.train.max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.max_grad_norm)
    state.optimizer.step()
    state.scheduler.step()
    if cfg.peft.method == "adalora":
        model.base_model.update_and_allocate(step)
    state.optimizer.zero_grad(set_to_none=True)
    return total_loss, tokens


def evaluate_state(state: TrialState, cfg: TrialConfig) -> dict[str, float]:
    metrics = {"eval_loss": evaluate.eval_loss(state.model, state.data.eval, state.tokenizer.pad_token_id)}
    if not math.isfinite(metrics["eval_loss"]):
        raise TrialDiverged(f"eval loss is {metrics['eval_loss']} at step {state.step}")
    if state.data.exact_match_rows:
        metrics["eval_exact_match"] = evaluate.exact_match(
            state.model, state.tokenizer, state.data.exact_match_rows, cfg.data.system_prompt,
            cfg.data.max_new_tokens)
    return metrics


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def save_checkpoint(state: TrialState, root: Path, metrics: dict[str, Any]) -> Path:
    """Write adapter + optimizer/scheduler/RNG/step under root/step-N, atomically (temp dir + rename)."""
    final = root / f"step-{state.step:06d}"
    with atomic_directory(final) as tmp:
        state.model.save_pretrained(tmp / ADAPTER_DIR)
        torch.save({
            "step": state.step,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }, tmp / STATE_FILE)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return final


def restore_checkpoint(state: TrialState, checkpoint: Path) -> None:
    """Load adapter weights, optimizer, LR schedule and RNG state; training continues after its step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / ADAPTER_DIR / "adapter_model.safetensors"))
    set_peft_model_state_dict(state.model, weights)
    saved = torch.load(checkpoint / STATE_FILE, weights_only=False)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    random.setstate(saved["rng"]["python"])
    np.random.set_state(saved["rng"]["numpy"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    state.step = saved["step"]


def run_trial(cfg: TrialConfig, report: Report, resume_from: str | None = None,
              checkpoint_root: str | None = None, num_threads: int | None = None,
              data: task_data.TaskData | None = None, base: Any = None, reuse_base: bool = True) -> dict[str, Any]:
    """Train one adapter for `cfg.max_steps`, reporting metrics (and a checkpoint) at every evaluation.

    Returns the last reported metrics. `report(metrics, checkpoint_dir)` receives a directory that stays
    valid until the next report. `data` and `base` let a caller share tokenized data or a loaded base;
    otherwise the base is reused from the previous trial in this process when it matches (`reuse_base`).
    """
    torch.set_num_threads(cfg.train.num_threads or num_threads or torch.get_num_threads())
    started = time.perf_counter()
    hits = models.BASE_CACHE.hits
    state = build_state(cfg, data, base, reuse_base)
    base_reused = models.BASE_CACHE.hits > hits
    resumed_from_step = 0
    if resume_from:
        restore_checkpoint(state, Path(resume_from))
        resumed_from_step = state.step
    trainable_params, _ = models.count_parameters(state.model)
    root = Path(checkpoint_root or tempfile.mkdtemp(prefix="lora_tune-ckpt-"))
    checkpoint_every = cfg.train.checkpoint_every or cfg.train.eval_every
    window = {"loss": 0.0, "tokens": 0, "time": 0.0, "steps": 0}
    metrics: dict[str, Any] = {}
    first_step_s = None
    state.model.train()
    while state.step < cfg.max_steps:
        state.step += 1
        tick = time.perf_counter()
        loss, tokens = train_step(state, cfg, state.step)
        elapsed = time.perf_counter() - tick
        first_step_s = first_step_s if first_step_s is not None else time.perf_counter() - started
        window = {"loss": window["loss"] + loss, "tokens": window["tokens"] + tokens,
                  "time": window["time"] + elapsed, "steps": window["steps"] + 1}
        if state.step % cfg.train.eval_every and state.step != cfg.max_steps:
            continue
        metrics = {
            "step": state.step,
            **evaluate_state(state, cfg),
            "train_loss": window["loss"] / window["steps"],
            "lr": state.scheduler.get_last_lr()[0],
            "tokens_per_s": window["tokens"] / window["time"],
            "step_time_s": window["time"] / window["steps"],
            "peak_mem_mb": peak_memory_mb(),
            "trainable_params": trainable_params,
            "param_bytes": state.model.get_memory_footprint(),
            "time_to_first_step_s": first_step_s,
            "base_reused": base_reused,
            "resumed_from_step": resumed_from_step,
        }
        window = {"loss": 0.0, "tokens": 0, "time": 0.0, "steps": 0}
        checkpoint = None
        if state.step % checkpoint_every == 0 or state.step == cfg.max_steps:
            checkpoint = save_checkpoint(state, root, metrics)
        report(metrics, str(checkpoint) if checkpoint else None)
        prune_checkpoints(root, keep=checkpoint)
    return metrics


def prune_checkpoints(root: Path, keep: Path | None) -> None:
    """Local checkpoints are staging copies: the reporter has persisted them, keep only the newest."""
    if keep is None:
        return
    for old in root.glob("step-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Run one trial from the composed Hydra config, printing each report."""
    from lora_tune.sweep import compose_config, fail

    cfg = compose_config(list(sys.argv[1:] if argv is None else argv), fail)
    out = Path(cfg.output_dir) / cfg.sweep_name / "single-trial"

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        print(json.dumps({**metrics, "checkpoint": checkpoint}))

    run_trial(cfg.trial_config(), report, checkpoint_root=str(out))


if __name__ == "__main__":
    main()
