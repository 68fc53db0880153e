"""Thin Ray Tune adapter around `train.run_trial`: config per trial, report, checkpoint, restore.

Also bridges Tune's trial events to the W&B tracker (registry.py), so that W&B runs live in the driver.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from lora_tune.config import SweepConfig
from lora_tune.data import TaskData
from lora_tune.registry import TrialTracker
from lora_tune.space import overrides_from_params
from lora_tune.train import TrialDiverged, run_trial

DIVERGED_MARKER = "diverged.txt"


def make_trainable(cfg: SweepConfig) -> Any:
    """The Tune function trainable for `cfg`; tokenized `data` (or None) comes through tune.with_parameters."""
    threads = max(1, int(cfg.resources.cpus_per_trial))

    def lora_trial(params: dict[str, Any], data: TaskData | None = None) -> None:
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per report
        trial_cfg = cfg.trial_config(overrides_from_params(params, cfg.search_space))
        node_id = ray.get_runtime_context().get_node_id()
        marker = Path(tune.get_context().get_trial_dir()) / DIVERGED_MARKER
        if marker.exists():  # a diverged trial diverges again: fail its retries at once
            raise TrialDiverged(marker.read_text())
        staging = Path(tempfile.mkdtemp(prefix="lora_tune-trial-"))

        def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
            checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            tune.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)

        try:
            resume_from = None
            if (checkpoint := tune.get_checkpoint()) is not None:
                resume_from = checkpoint.to_directory(str(staging / "restored"))
            run_trial(trial_cfg, report, resume_from=resume_from, checkpoint_root=str(staging / "out"),
                      num_threads=threads, data=data)
        except TrialDiverged as exc:
            marker.write_text(str(exc))
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            release_gpu_memory()

    return lora_trial


def release_gpu_memory() -> None:
    """Hand the trial's cached CUDA memory back, so the next trial on this GPU (or its share) starts empty."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class FailureCounter(tune.Callback):
    """Remembers how often each trial failed (Ray restores `num_failures` with the experiment state)."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}

    def _record(self, trial: Any) -> None:
        self.failures[trial.trial_id] = trial.num_failures

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)


class TrackerCallback(tune.Callback):
    """Forwards trial start / result / end to a TrialTracker (W&B runs in the driver process)."""

    def __init__(self, tracker: TrialTracker, cfg: SweepConfig):
        self.tracker = tracker
        self.cfg = cfg

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = overrides_from_params(trial.config, self.cfg.search_space)
        self.tracker.trial_started(trial.trial_id, self.cfg.trial_config(params).to_dict())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.tracker.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        steps = (trial.last_result or {}).get("step", 0)
        self.tracker.trial_ended(trial.trial_id, {"status": "TERMINATED", "steps": steps,
                                                  "stopped_early": steps < self.cfg.max_steps})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.trial_ended(trial.trial_id, {"status": "ERROR"})
