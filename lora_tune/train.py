"""One fine-tuning trial, no Ray: `run_trial(cfg, report)`.

    python -m lora_tune.train experiment=tiny peft.r=16      # one trial with the composed config, no Ray

Loads the (quantized) base, attaches a fresh adapter, trains for `max_steps` in the trial's precision, and every
`train.eval_every` steps evaluates on held-out data and calls `report(metrics, checkpoint_dir)` with an
adapter checkpoint (the full resumable state too when `full_state_in_reports`, as PBT needs). Every
`train.checkpoint_every` steps (default: every second evaluation) the resumable state (adapter, optimizer, LR
schedule, loss scaler, RNG, step) is handed to `save_state`; `resume_from` continues from one at the same step
and data position. With several
workers (Ray Train), each takes its share of every step's global batch and the loss is normalised over the
global batch's answer tokens, so N workers optimise exactly as one worker with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_tune import data as task_data
from lora_tune import distributed, evaluate, memory
from lora_tune import model as models
from lora_tune import precision as precisions
from lora_tune.atomic import atomic_directory
from lora_tune.config import TrialConfig
from lora_tune.distributed import Workers
from lora_tune.loss import SupervisedLoss

Report = Callable[[dict[str, Any], str | None], None]
SaveState = Callable[[Path, int], int]  # (local folder with the resumable state, step) -> bytes written
STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrialState:
    """What lives between steps: the model being trained and its optimisation state."""

    model: Any  # the PEFT model
    trainable: torch.nn.Module  # the loss module around it, made data parallel when there are several workers
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    data: task_data.TaskData
    precision: precisions.Precision
    workers: Workers
    step: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"train": 0.0, "eval": 0.0, "checkpoint": 0.0})
    bytes_written: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrialConfig, model: Any, params: list[torch.nn.Parameter],
                   device: torch.device) -> torch.optim.Optimizer:
    """train.optimizer: adamw (torch; auto), adamw_8bit (bitsandbytes: 8-bit moments, a quarter of the memory) or
    paged_adamw (bitsandbytes: moments in CUDA unified memory, paged out under memory pressure). With
    train.loraplus_lr_ratio, PEFT's LoRA+ groups: lora_B (and 1-d adapter weights) at lr x ratio.

    auto is not paged: bitsandbytes pages only tensors of 1e5 elements or more (optim/optimizer.py:383), which LoRA
    matrices reach only at large ranks of large models (r=16 on a 4096-wide layer is 65,536), and its page manager
    is a process-wide singleton that never frees (functional.py GlobalPageManager), so a reused trial process would
    leak each trial's buffers (the tuner starts a new process per trial with paged_adamw)."""
    kind = optimizer_class(cfg.train.optimizer)
    if cfg.train.loraplus_lr_ratio is None:
        return kind(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(model, kind, lr=cfg.train.lr, loraplus_lr_ratio=cfg.train.loraplus_lr_ratio,
                                          loraplus_weight_decay=cfg.train.weight_decay)
    for group, role in zip(optimizer.param_groups, LORAPLUS_GROUPS):
        group["loraplus_group"] = role  # saved with the optimizer state: apply_hyperparameters reads it
    return optimizer


# The param groups of PEFT's create_loraplus_optimizer, in its order (peft/optimizers/loraplus.py).
LORAPLUS_GROUPS = ("A", "embedding", "B", "B_no_decay")
LORAPLUS_EMBEDDING_LR = 1e-6  # PEFT's default for embedding adapters (lora_tune targets Linear layers only)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    if name in ("paged_adamw", "adamw_8bit"):
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW if name == "paged_adamw" else bnb.optim.AdamW8bit
    return torch.optim.AdamW


def group_hyperparameters(cfg: TrialConfig, group: dict[str, Any]) -> tuple[float, float]:
    """(peak lr, weight decay) of an optimizer param group under `cfg` (LoRA+ groups by their role)."""
    role = group.get("loraplus_group", "A")
    if role == "embedding":
        return LORAPLUS_EMBEDDING_LR, cfg.train.weight_decay
    ratio = cfg.train.loraplus_lr_ratio or 1.0
    if role == "B_no_decay":
        return cfg.train.lr * ratio, 0.0
    return cfg.train.lr * (ratio if role == "B" else 1.0), cfg.train.weight_decay


def build_state(cfg: TrialConfig, workers: Workers, data: task_data.TaskData | None = None, base: Any = None,
                reuse_base: bool = True, resume_from: Path | None = None) -> TrialState:
    """Tokenizer, data, base + fresh adapter (with the weights of `resume_from`'s adapter), optimizer, LR schedule
    and loss scaler for `cfg`. The adapter's weights are loaded before the model is made data parallel (FSDP
    shards whole tensors; DDP starts from rank 0's).

    The base comes from `base`, else this process's BASE_CACHE (`reuse_base`), else a fresh load."""
    from transformers import get_scheduler

    precision = precisions.resolve(cfg.train.precision, workers.device)
    tokenizer = task_data.with_chat_template(models.load_tokenizer(cfg.model.name_or_path), cfg.data)
    data = data or task_data.prepare_task_data(tokenizer, cfg.data, cfg.seed)
    if workers.strategy == "fsdp" and workers.distributed:
        model, trainable = sharded_model(cfg, workers, precision, resume_from)
    else:
        model = adapted_base(cfg, workers, precision, base, reuse_base, resume_from)
        trainable = workers.wrap(SupervisedLoss(model, precision), model)
    optimizer = make_optimizer(cfg, model, [p for p in trainable.parameters() if p.requires_grad], workers.device)
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer,
                              num_warmup_steps=int(cfg.train.warmup_ratio * cfg.max_steps),
                              num_training_steps=cfg.max_steps)
    return TrialState(model, trainable, tokenizer, optimizer, scheduler, precision.scaler(), data, precision, workers)


def adapted_base(cfg: TrialConfig, workers: Workers, precision: precisions.Precision, base: Any,
                 reuse_base: bool, resume_from: Path | None) -> Any:
    """The base (from `base`, else this process's BASE_CACHE when `reuse_base`, else a fresh load) with a fresh
    adapter carrying the weights of `resume_from`'s, before it is made data parallel (DDP starts from rank 0's)."""
    cache = models.BASE_CACHE if base is None and reuse_base else None
    if cache is not None:
        base = cache.acquire(cfg.model.name_or_path, cfg.quant, precision, workers.device,
                             cfg.model.trust_remote_code)
    elif base is None:
        base = models.load_base(cfg.model.name_or_path, cfg.quant, precision, workers.device,
                                cfg.model.trust_remote_code)
    model = with_adapter(base, cfg, resume_from)
    if cache is not None:
        cache.adapted_by(model)
    return model


def with_adapter(base: Any, cfg: TrialConfig, resume_from: Path | None) -> Any:
    seed_everything(cfg.seed)  # the adapter's initialisation depends on it
    model = models.attach_adapter(base, cfg.peft, cfg.max_steps, cfg.model.gradient_checkpointing)
    if resume_from is not None:
        load_adapter_weights(model, resume_from)
    return model


def sharded_model(cfg: TrialConfig, workers: Workers, precision: precisions.Precision,
                  resume_from: Path | None) -> tuple[Any, torch.nn.Module]:
    """(PEFT model, its loss module) sharded over the FSDP workers, loaded so that no device ever holds the whole
    base: every worker shards an empty skeleton (base + adapter on the meta device); rank 0 alone reads the
    checkpoint, into host memory, and builds the adapter there (seeded, resumed); then the weights go out one
    tensor at a time. A base too large for one GPU fits in its shards. Never cached: the trial's processes end
    with it (Ray Train starts new ones per trial)."""
    if workers.device.type == "cuda":
        torch.cuda.set_device(workers.device)  # where the broadcast tensors land (the process group's device)
    full_state = None
    if workers.is_main:
        host = models.load_base(cfg.model.name_or_path, cfg.quant, precision, torch.device("cpu"),
                                cfg.model.trust_remote_code)
        full_state = with_adapter(host, cfg, resume_from).state_dict()
    skeleton = models.empty_base(cfg.model.name_or_path, cfg.quant, precision, cfg.model.trust_remote_code)
    model = with_adapter(skeleton, cfg, None)  # seeded on every worker: the same random state (LoRA dropout)
    trainable = workers.wrap(SupervisedLoss(model, precision), model)
    distributed.load_from_rank0(model, full_state)
    return model, trainable


def step_batches(state: TrialState, cfg: TrialConfig, step: int) -> list[tuple[dict[str, torch.Tensor], int]]:
    """This worker's micro-batches of the global batch of `step` (its share of each micro-batch's examples), with
    the number of real (not padding) tokens in each."""
    examples, workers = state.data.train, state.workers
    lengths = [len(e["input_ids"]) for e in examples]
    pad = state.tokenizer.pad_token_id
    batches = []
    for micro in range(cfg.train.grad_accum):
        indices = task_data.batch_indices((step - 1) * cfg.train.grad_accum + micro + 1, cfg.train.batch_size,
                                          lengths, cfg.seed,
                                          group_by_length=cfg.data.group_by_length and not cfg.data.packing)
        own = indices[workers.rank::workers.world]
        mine = [examples[i] for i in own] if own else [ignored(examples[indices[0]])]  # more workers than examples
        batch = task_data.pack(mine, cfg.data.max_seq_len, pad) if cfg.data.packing else task_data.collate(mine, pad)
        real = sum(len(e["input_ids"]) for e in mine) if own else 0
        batches.append(({k: v.to(workers.device) for k, v in batch.items()}, real))
    return batches


def ignored(example: dict[str, list[int]]) -> dict[str, list[int]]:
    """The example with no supervised token: it takes part in the forward pass and adds nothing to the loss."""
    return {**example, "labels": [task_data.IGNORE_INDEX] * len(example["labels"])}


def supervised_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != task_data.IGNORE_INDEX).sum())


def train_step(state: TrialState, cfg: TrialConfig, step: int) -> tuple[float, int]:
    """One optimizer step over the global batch; returns (mean loss per answer token, tokens this worker saw).

    Each worker's loss is its token-loss sum divided by the global batch's answer tokens (times the number of
    workers, which DDP divides by), so the update equals one worker's on the whole global batch."""
    batches = step_batches(state, cfg, step)
    workers = state.workers
    global_tokens = workers.all_sum(sum(supervised_tokens(b) for b, _ in batches))
    scale = workers.world / max(global_tokens, 1.0)
    loss_sums = []
    for batch, _ in batches:
        loss_sum = state.trainable(**batch)
        state.scaler.scale(loss_sum * scale).backward()
        loss_sums.append(loss_sum.detach())
    tokens = sum(real for _, real in batches)
    total_loss = workers.all_sum(float(torch.stack(loss_sums).sum())) / max(global_tokens, 1.0)  # one device sync
    if not math.isfinite(total_loss):
        raise TrialDiverged(f"train loss is {total_loss} at step {step} (train.lr={cfg.train.lr})")
    trainable_params = [p for p in state.trainable.parameters() if p.requires_grad]
    if cfg.train.max_grad_norm:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(trainable_params, cfg.train.max_grad_norm)
    adalora = cfg.peft.method == "adalora"
    scale_before = state.scaler.get_scale() if adalora and state.scaler.is_enabled() else None
    state.scaler.step(state.optimizer)  # unscales the gradients in place first (unless unscale_ did above)
    state.scaler.update()
    state.scheduler.step()
    skipped = scale_before is not None and state.scaler.get_scale() < scale_before  # fp16 overflow: inf gradients
    if adalora and not skipped:  # its importance scores read the gradients: never inf/NaN ones
        state.model.base_model.update_and_allocate(step)
    state.optimizer.zero_grad(set_to_none=True)
    return total_loss, tokens


def generate_now(cfg: TrialConfig, step: int, needs_generation: bool) -> bool:
    """eval.generate: at every evaluation, at the last only, never; auto = every when the sweep's metric or
    scheduler needs a generation metric (`needs_generation`), else the last."""
    when = cfg.eval.generate
    if when == "auto":
        when = "every" if needs_generation else "final"
    return when == "every" or (when == "final" and step == cfg.max_steps)


def evaluate_state(state: TrialState, cfg: TrialConfig, generate: bool) -> dict[str, float]:
    """eval_loss (and its standard error over the rows) on the eval examples; the generation metrics on the
    generation rows when `generate`."""
    pad = state.tokenizer.pad_token_id
    loss, se = evaluate.eval_loss_stats(state.trainable, state.data.eval, pad, cfg.train.eval_batch_size,
                                        state.workers)
    metrics = {"eval_loss": loss, "eval_loss_se": se}
    if not math.isfinite(metrics["eval_loss"]):
        raise TrialDiverged(f"eval loss is {metrics['eval_loss']} at step {state.step}")
    names = cfg.generation_metrics()
    if generate and names and state.data.generation:
        metrics |= evaluate.generation_scores(state.model, state.tokenizer, state.data.generation, names, cfg,
                                              state.precision, state.workers)
    return metrics


def model_state(state: TrialState) -> dict[str, torch.Tensor] | None:
    """The adapter's weights as whole tensors when they are sharded (FSDP: a collective, every worker calls);
    None when save_pretrained can read them itself."""
    if state.workers.strategy != "fsdp" or not state.workers.distributed:
        return None
    return distributed.trainable_state_dict(state.model)


def resumable_state(state: TrialState) -> dict[str, Any]:
    return {
        "step": state.step,
        "optimizer": distributed.optimizer_state(state.trainable, state.optimizer, state.workers),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }


def write_checkpoint(state: TrialState, final: Path, metrics: dict[str, Any], full: bool) -> Path | None:
    """Adapter (+ the resumable state when `full`) + metrics.json under `final`, atomically, on the main
    worker (the others take part in gathering sharded weights); returns the folder on the main worker."""
    weights = model_state(state)
    extra = resumable_state(state) if full else None
    if not state.workers.is_main:
        return None
    with atomic_directory(final) as tmp:
        state.model.save_pretrained(tmp / ADAPTER_DIR, state_dict=weights)
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return final


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def load_adapter_weights(model: Any, checkpoint: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / ADAPTER_DIR / "adapter_model.safetensors")))


def restore_checkpoint(state: TrialState, checkpoint: Path) -> None:
    """Load optimizer, LR schedule, loss scaler and RNG state (build_state loaded the adapter's weights);
    training continues after the checkpoint's step."""
    saved = torch.load(checkpoint / STATE_FILE, weights_only=False)
    distributed.load_optimizer_state(state.trainable, state.optimizer, saved["optimizer"], state.workers)
    state.scheduler.load_state_dict(saved["scheduler"])
    scaler_state = saved.get("scaler") or {}
    if scaler_state or not state.scaler.is_enabled():
        state.scaler.load_state_dict(scaler_state)
    # else: saved without loss scaling (bf16/fp32; `auto` is fp16 only on GPUs without bf16, so a retry on another
    # node type can switch): an fp16 scaler starts afresh, as torch refuses to load an empty state into it
    random.setstate(saved["rng"]["python"])
    np.random.set_state(saved["rng"]["numpy"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    state.step = saved["step"]


def apply_hyperparameters(state: TrialState, cfg: TrialConfig) -> None:
    """After a restore, this trial's own lr and weight decay hold, not the saved ones: a PBT-exploited trial
    continues from another trial's state with its mutated config. The LR schedule keeps its position."""
    for group, lr_lambda in zip(state.optimizer.param_groups, state.scheduler.lr_lambdas):
        peak, group["weight_decay"] = group_hyperparameters(cfg, group)
        group["initial_lr"] = peak
        group["lr"] = peak * lr_lambda(state.scheduler.last_epoch)
    state.scheduler.base_lrs = [group["initial_lr"] for group in state.optimizer.param_groups]
    state.scheduler._last_lr = [group["lr"] for group in state.optimizer.param_groups]


def run_trial(cfg: TrialConfig, report: Report, resume_from: str | None = None,
              checkpoint_root: str | None = None, num_threads: int | None = None,
              data: task_data.TaskData | None = None, base: Any = None, reuse_base: bool = True,
              workers: Workers | None = None, save_state: SaveState | None = None,
              full_state_in_reports: bool = False, needs_generation: bool = False,
              gpus: float = 0.0) -> dict[str, Any]:
    """Train one adapter for `cfg.max_steps`, reporting metrics (and a checkpoint) at every evaluation.

    Returns the last reported metrics. `report(metrics, checkpoint_dir)` receives a directory that stays valid
    until the next report (None on workers other than the main one). `data` and `base` let a caller share
    tokenized data or a loaded base; otherwise the base is reused from the previous trial in this process when
    it matches (`reuse_base`). `save_state(folder, step)` persists a resumable state (default: it stays under
    `checkpoint_root/state`). `gpus`: what the trial was given (resources.gpus_per_trial): it refuses to run
    without a GPU, and a fraction caps its allocations (memory.claim_gpu)."""
    workers = workers or Workers.current()
    torch.set_num_threads(cfg.train.num_threads or num_threads or torch.get_num_threads())
    memory.claim_gpu(gpus, workers.device)
    memory.reset_peak(workers.device)
    started = time.perf_counter()
    hits = models.BASE_CACHE.hits
    state = build_state(cfg, workers, data, base, reuse_base, Path(resume_from) if resume_from else None)
    base_reused = models.BASE_CACHE.hits > hits
    resumed_from_step = 0
    if resume_from:
        restore_checkpoint(state, Path(resume_from))
        apply_hyperparameters(state, cfg)
        resumed_from_step = state.step
    with checkpoint_folder(checkpoint_root) as root:
        save_state = save_state or keep_locally(root)
        trainable_params, _ = models.count_parameters(state.model)
        checkpoint_every = cfg.train.checkpoint_every or 2 * cfg.train.eval_every
        window = {"loss": 0.0, "tokens": 0, "steps": 0, "time": 0.0}
        metrics: dict[str, Any] = {}
        first_step_s = None
        state.model.train()
        while state.step < cfg.max_steps:
            state.step += 1
            tick = time.perf_counter()
            loss, tokens = train_step(state, cfg, state.step)
            elapsed = time.perf_counter() - tick
            state.timings["train"] += elapsed
            first_step_s = first_step_s if first_step_s is not None else time.perf_counter() - started
            window = {"loss": window["loss"] + loss, "tokens": window["tokens"] + tokens,
                      "steps": window["steps"] + 1, "time": window["time"] + elapsed}
            if state.step % checkpoint_every == 0 and state.step != cfg.max_steps:
                persist_state(state, root, save_state)
            if state.step % cfg.train.eval_every and state.step != cfg.max_steps:
                continue
            tick = time.perf_counter()
            generating = generate_now(cfg, state.step, needs_generation)
            metrics = {"step": state.step, **evaluate_state(state, cfg, generating)}
            state.timings["eval"] += time.perf_counter() - tick
            metrics |= step_report(state, window, trainable_params, first_step_s, base_reused, resumed_from_step)
            window = {"loss": 0.0, "tokens": 0, "steps": 0, "time": 0.0}
            tick = time.perf_counter()
            checkpoint = write_checkpoint(state, root / f"step-{state.step:06d}", metrics, full_state_in_reports)
            if checkpoint is not None:
                state.bytes_written += folder_bytes(checkpoint)
            state.timings["checkpoint"] += time.perf_counter() - tick
            metrics |= time_and_bytes(state)  # after the checkpoint: this report counts its own
            report(metrics, str(checkpoint) if checkpoint else None)
            prune_checkpoints(root, keep=checkpoint)
        return metrics


@contextlib.contextmanager
def checkpoint_folder(checkpoint_root: str | None) -> Iterator[Path]:
    """`checkpoint_root`, or a temporary folder removed when the trial ends (no caller can read its checkpoints)."""
    if checkpoint_root:
        yield Path(checkpoint_root)
        return
    with tempfile.TemporaryDirectory(prefix="lora_tune-ckpt-", ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


def step_report(state: TrialState, window: dict[str, float], trainable_params: int, first_step_s: float | None,
                base_reused: bool, resumed_from_step: int) -> dict[str, Any]:
    """What a report carries besides the evaluation and the time and bytes accounting: throughput, memory."""
    workers = state.workers
    return {
        "train_loss": window["loss"] / window["steps"],
        "lr": state.scheduler.get_last_lr()[0],
        "tokens_per_s": workers.all_sum(window["tokens"]) / window["time"],
        "step_time_s": window["time"] / window["steps"],
        **peak_memory(workers),
        "trainable_params": trainable_params,
        "param_bytes": state.model.get_memory_footprint(),
        "precision": state.precision.name,
        "workers": workers.world,
        "time_to_first_step_s": first_step_s,
        "base_reused": base_reused,
        "resumed_from_step": resumed_from_step,
    }


def peak_memory(workers: Workers) -> dict[str, Any]:
    """memory.peak_report with each figure the largest worker's (every worker calls, with the same keys)."""
    return {k: workers.all_max(v) if isinstance(v, (int, float)) else v
            for k, v in memory.peak_report(workers.device).items()}


def time_and_bytes(state: TrialState) -> dict[str, Any]:
    """Shares of the trial's time spent evaluating and checkpointing, and the bytes its checkpoints wrote."""
    busy = sum(state.timings.values()) or 1.0
    return {"eval_time_frac": state.timings["eval"] / busy, "checkpoint_time_frac": state.timings["checkpoint"] / busy,
            "checkpoint_bytes": state.bytes_written}


def persist_state(state: TrialState, root: Path, save_state: SaveState) -> None:
    """The resumable state of this step, written whole and handed to `save_state` (main worker)."""
    tick = time.perf_counter()
    folder = write_checkpoint(state, root / f"state-{state.step:06d}", {"step": state.step}, full=True)
    if folder is not None:
        state.bytes_written += save_state(folder, state.step)
        shutil.rmtree(folder, ignore_errors=True)
    state.workers.barrier()
    state.timings["checkpoint"] += time.perf_counter() - tick


def keep_locally(root: Path) -> SaveState:
    """Without Ray: the newest resumable state stays in root/state."""
    def save(folder: Path, step: int) -> int:
        with atomic_directory(root / "state") as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        return folder_bytes(folder)
    return save


def prune_checkpoints(root: Path, keep: Path | None) -> None:
    """Local checkpoints are staging copies: the reporter has persisted them, keep only the newest."""
    if keep is None:
        return
    for old in root.glob("step-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Run one trial from the composed Hydra config, printing each report."""
    from lora_tune.compose import compose_config, split_config_dirs
    from lora_tune.errors import ConfigError, fail

    config_dirs, args = split_config_dirs(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = compose_config(args, config_dirs)
    except ConfigError as exc:
        fail(exc.problems)
    out = Path(cfg.output_dir) / cfg.sweep_name / "single-trial"

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        print(json.dumps({**metrics, "checkpoint": checkpoint}))

    run_trial(cfg.trial_config(), report, checkpoint_root=str(out))


if __name__ == "__main__":
    main()
