"""The default-LoRA baseline a sweep is compared with: r=8, alpha=16, q_proj+v_proj, 16-bit base.

It trains with the sweep's own step budget, data and non-searched settings (so the only differences from
"no sweep at all" are the searched hyperparameters), then scores exact match on the test split. No Ray here:
`sweep.evaluate_baseline` runs `train_and_score` as a Ray task when `eval.baseline=true`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lora_tune.config import SweepConfig, TrialConfig

DEFAULT_LORA = {
    "peft.method": "lora", "peft.r": 8, "peft.alpha": 16, "peft.target_modules": ["q_proj", "v_proj"],
    "peft.use_dora": False, "peft.use_rslora": False, "quant.bits": 16,
}


def default_lora_config(cfg: SweepConfig) -> TrialConfig:
    """The sweep's trial defaults with the default-LoRA adapter on a 16-bit base."""
    return cfg.trial_config(DEFAULT_LORA)


def missing_modules(cfg: SweepConfig) -> list[str]:
    """Default targets the model lacks (e.g. GPT-2 has c_attn, not q_proj/v_proj)."""
    from lora_tune.model import linear_module_names

    available = linear_module_names(cfg.model.name_or_path, cfg.model.trust_remote_code)
    return [m for m in DEFAULT_LORA["peft.target_modules"] if m not in available]


def train_and_score(trial_cfg: TrialConfig, num_threads: int = 1) -> dict[str, Any]:
    """Train the adapter for max_steps, then exact match on the test split with base + adapter."""
    import torch
    from peft import PeftModel

    from lora_tune import model as models
    from lora_tune.data import load_rows
    from lora_tune.evaluate import exact_match
    from lora_tune.train import run_trial

    torch.set_num_threads(num_threads)
    reports: list[tuple[dict[str, Any], str | None]] = []
    with tempfile.TemporaryDirectory(prefix="lora_tune-baseline-") as tmp:
        run_trial(trial_cfg, lambda metrics, ckpt: reports.append((metrics, ckpt)), checkpoint_root=tmp,
                  num_threads=num_threads)
        final, checkpoint = reports[-1]
        rows = load_rows(trial_cfg.data, trial_cfg.data.test_split, trial_cfg.data.test_examples)
        tokenizer = models.load_tokenizer(trial_cfg.model.name_or_path)
        base = models.load_base(trial_cfg.model.name_or_path, trial_cfg.quant, trial_cfg.model.trust_remote_code)
        tuned = PeftModel.from_pretrained(base, str(Path(checkpoint) / "adapter"))
        score = exact_match(tuned, tokenizer, rows, trial_cfg.data.system_prompt, trial_cfg.data.max_new_tokens)
    return {
        "default_lora_exact_match": score,
        "default_lora_eval_loss": min(m["eval_loss"] for m, _ in reports),
        "default_lora_steps": final["step"],
        "default_lora": {k: v for k, v in DEFAULT_LORA.items() if k != "peft.method"},
    }
