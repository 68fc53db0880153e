"""P4: HF `Trainer.hyperparameter_search(backend="ray")` with a PEFT `model_init`, as users write it today.

Same data (tokenized once, the same collate), same LoRA/QLoRA search space (conf/search_space/default.yaml as
ray.tune domains; lr as `learning_rate`), same max_steps, eval cadence, batch size, optimizer and schedule, same
local Ray (2 CPUs, 1 CPU per trial). `model_init` loads the base with `from_pretrained` (quantized per the trial's
bits) and attaches a fresh adapter for every trial: that is how HF's hyperparameter search works.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load, timed
from lora_tune.config import SweepConfig

LR_KEY = "train.lr"


def hp_space_of(cfg: SweepConfig) -> dict[str, Any]:
    """The sweep's own param_space (ray.tune domains); the lr entry named like the TrainingArguments field."""
    from lora_tune.tuner import param_space

    space = param_space(cfg.search_space)
    return {("learning_rate" if key == LR_KEY else key): domain for key, domain in space.items()}


def make_model_init(cfg: SweepConfig) -> Any:
    """model_init(trial): a fresh base (from_pretrained, bitsandbytes per bits) + fresh LoRA adapter."""

    def model_init(trial: dict[str, Any] | None = None) -> Any:
        from lora_tune import model as models
        from lora_tune import precision as precisions
        from lora_tune.space import decode_value

        params = {k: decode_value(v) for k, v in (trial or {}).items() if k != "learning_rate"}
        trial_cfg = cfg.trial_config(params)
        precision = precisions.resolve(trial_cfg.train.precision, models.default_device())  # as lora_tune's trials
        base = models.load_base(trial_cfg.model.name_or_path, trial_cfg.quant, precision)  # reloaded every trial
        return models.attach_adapter(base, trial_cfg.peft, trial_cfg.max_steps)

    return model_init


def training_args(cfg: SweepConfig, out: Path) -> Any:
    import torch
    from transformers import TrainingArguments

    from lora_tune.precision import resolve

    return TrainingArguments(
        output_dir=str(out / "hf-trainer"), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        per_device_eval_batch_size=max(1, cfg.data.eval_examples), eval_strategy="steps",
        eval_steps=cfg.train.eval_every, save_strategy="no", logging_strategy="no", report_to="none",
        learning_rate=cfg.train.lr, lr_scheduler_type=cfg.train.lr_scheduler,
        warmup_steps=int(cfg.train.warmup_ratio * cfg.max_steps), weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm, optim="adamw_torch", seed=cfg.seed, use_cpu=True,
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        bf16=resolve(cfg.train.precision, torch.device("cpu")).name == "bf16",  # autocast, as lora_tune's trials
    )


def hf_results(experiment_dir: Path) -> list[dict[str, Any]]:
    """Every result Ray Tune recorded for HF's trials (each trial folder's result.json), with the folder name."""
    from lora_tune.results import parse_result_lines

    return [{**result, "trial_dir": path.parent.name} for path in sorted(experiment_dir.glob("*/result.json"))
            for result in parse_result_lines(path.read_text())]


def eval_loss_objective(metrics: dict[str, float]) -> float:
    return metrics["eval_loss"]


def hf_search(cfg: SweepConfig, out: Path) -> dict[str, Any]:
    """Run HF's Ray Tune search on local Ray; wall time, best eval loss and every Ray result (timestamps)."""
    from ray.tune.search import BasicVariantGenerator
    from transformers import Trainer

    from lora_tune.data import collate
    from lora_tune.model import load_tokenizer
    from lora_tune.sweep import shared_task_data
    from lora_tune.tuner import init_ray, shutdown_ray

    started, load_before = time.time(), load()

    def search() -> Any:
        data = shared_task_data(cfg)
        init_ray(cfg)  # the same local Ray as a sweep (2 CPUs, loopback); tune.run would attach to any other
        try:
            trainer = Trainer(args=training_args(cfg, out), model_init=make_model_init(cfg),
                              train_dataset=data.train, eval_dataset=data.eval,
                              data_collator=functools.partial(collate, pad_id=load_tokenizer(
                                  cfg.model.name_or_path).pad_token_id))
            return trainer.hyperparameter_search(
                hp_space=lambda _: hp_space_of(cfg), backend="ray", n_trials=cfg.num_samples, direction="minimize",
                compute_objective=eval_loss_objective, resources_per_trial={"cpu": cfg.resources.cpus_per_trial},
                storage_path=str(out), name="p4-hf", verbose=0,
                search_alg=BasicVariantGenerator(random_state=cfg.seed))
        finally:
            shutdown_ray()

    best_run, wall = timed(search)
    results = hf_results(out / "p4-hf")
    losses = [r["eval_loss"] for r in results if r.get("eval_loss") is not None]
    trials = {r["trial_dir"] for r in results}
    return {"wall_s": round(wall, 2), "started": started, "results": results,
            "best_eval_loss": min(losses) if losses else None, "trials": len(trials),
            "steps_trained": sum(max(int(r.get("training_iteration", 0)) for r in results if r["trial_dir"] == t)
                                 for t in trials) * cfg.train.eval_every,
            "best_run": {"objective": best_run.objective, "hyperparameters": best_run.hyperparameters},
            "load_avg": [load_before, load()]}
