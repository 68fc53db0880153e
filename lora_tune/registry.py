"""Weights & Biases: one run per trial grouped by sweep, a sweep run, and the winning adapter as a model artifact.

The only module that imports wandb. Runs are created in the driver process (the API key never has to
reach workers or Ray's runtime_env). Every W&B call is guarded: W&B being slow, failing or unreachable
warns once and never fails a sweep; the local results are complete without it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_tune.config import WandbConfig, flatten

log = logging.getLogger("lora_tune.registry")


def resolve_mode(cfg: WandbConfig) -> str:
    """auto -> online when an API key is available, offline otherwise."""
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _guarded(method: Callable) -> Callable:
    """Turn any W&B exception into one warning; afterwards the tracker is a no-op."""

    @functools.wraps(method)
    def wrapper(self: TrialTracker, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - W&B trouble must never end a sweep
            self.enabled = False
            print(f"lora_tune: warning: W&B disabled for the rest of this sweep ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return None

    return wrapper


class TrialTracker:
    """Mirrors trials into W&B runs: started, one row per report, ended with a summary."""

    def __init__(self, cfg: WandbConfig, sweep_name: str, sweep_dir: Path, base_model: str):
        self.cfg = cfg
        self.mode = resolve_mode(cfg)
        self.enabled = self.mode != "disabled"
        self.sweep_name = sweep_name
        self.sweep_dir = sweep_dir
        self.base_model = base_model
        self.runs: dict[str, Any] = {}
        self.run_ids: dict[str, str] = {}

    def _init(self, **kwargs: Any) -> Any:
        import wandb

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.cfg.project, entity=self.cfg.entity, group=self.sweep_name,
                          mode=self.mode, dir=str(self.sweep_dir), reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off"), **kwargs)

    @_guarded
    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        if trial_id in self.runs:
            return  # a retried trial keeps its run
        flat = flatten(config)
        tags = [f"bits={flat.get('quant.bits')}", f"base={Path(self.base_model).name}"]
        run = self._init(name=trial_id, id=f"{self.sweep_name}-{trial_id}"[-64:], job_type="trial",
                         config=flat, tags=tags)
        self.runs[trial_id] = run
        self.run_ids[trial_id] = run.id

    @_guarded
    def trial_result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        run = self.runs.get(trial_id)
        if run is None:
            return
        row = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        run.log(row, step=int(metrics.get("step", 0)))

    @_guarded
    def trial_ended(self, trial_id: str, summary: dict[str, Any]) -> None:
        run = self.runs.pop(trial_id, None)
        if run is None:
            return
        for key, value in summary.items():
            run.summary[key] = value
        run.finish(exit_code=1 if summary.get("status") == "ERROR" else 0)

    @_guarded
    def close(self) -> None:
        for trial_id in list(self.runs):
            self.trial_ended(trial_id, {})

    def refs(self) -> dict[str, Any]:
        """What summary.json records about W&B."""
        return {"mode": self.mode, "project": self.cfg.project, "entity": self.cfg.entity,
                "group": self.sweep_name, "trial_runs": dict(self.run_ids)}

