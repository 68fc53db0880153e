"""Run a LoRA/QLoRA hyperparameter sweep with Ray Tune; configuration by Hydra (conf/).

    python -m lora_tune.sweep                          # quickstart: local Ray, SmolLM2-135M, W&B offline
    python -m lora_tune.sweep experiment=tiny          # seconds, on a tiny random model
    python -m lora_tune.sweep scheduler=fifo num_samples=16 search_space=qlora_vs_lora
    python -m lora_tune.sweep --config-dir ./my_conf search_space=my_space data=my_data
    python -m lora_tune.sweep --cfg job                # print the composed config

The command line: compose the config (compose.py, every problem at once, exit 2), then plan it (dry_run),
submit it to a cluster (jobs.py, for an http ray.address) or run it here: `run_sweep`, which needs no Hydra and
is what tests call. The data path reads top-down: preflight.py checks, tuner.py runs the trials on Ray Tune,
post_sweep.py writes the results, the winner and its summary.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lora_tune.compose import compose_config, hydra_main, pin_notes, split_config_dirs
from lora_tune.config import SweepConfig, to_dict
from lora_tune.errors import ConfigError, fail
from lora_tune.preflight import preflight, resolve_resume, sweep_location
from lora_tune.redaction import redact
from lora_tune.storage import Store, cache_dir


def shared_task_data(cfg: SweepConfig) -> Any:
    """Tokenize once per sweep (shared through the object store) unless trials search data.* or model.* keys;
    raises ConfigError for data that cannot be used. Prints what was done to the data (one line each)."""
    from lora_tune.data import DataError, prepare_task_data
    from lora_tune.model import load_tokenizer

    if any(dim.key.startswith(("data.", "model.")) for dim in cfg.search_space.values()):
        return None
    try:
        data = prepare_task_data(load_tokenizer(cfg.model.name_or_path), cfg.data, cfg.seed)
    except DataError as exc:
        raise ConfigError(exc.problems) from None
    for note in data.notes:
        print(f"lora_tune: {note}", file=sys.stderr, flush=True)
    return data


def with_detected_format(cfg: SweepConfig, data: Any) -> SweepConfig:
    """data.format=auto made concrete (what the trials, the scoring and config.yaml then use), the config checked
    again: plain text has no exact match to be a metric of."""
    if cfg.data.format != "auto":
        return cfg
    from lora_tune.data import load_splits

    fmt = data.format if data is not None else load_splits(cfg.data, cfg.seed).format
    return SweepConfig.from_dict(to_dict(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, format=fmt))))


def score_on_test(cfg: SweepConfig) -> Any:
    """Starts the winner's test scoring, as a Ray task on all of the sweep's CPUs (a GPU on a cluster)."""
    from lora_tune.evaluate import score_on_test as score
    from lora_tune.tuner import start_task

    def start(trial_cfg: SweepConfig, adapter: str) -> Any:
        return start_task(cfg, "the winner's test scoring", score, trial_cfg, adapter, all_cpus=True)

    return start


def confirmation(cfg: SweepConfig, location: str, data: Any, tracker: Any) -> Any:
    """Runs the confirmation trials (confirm.py) as the sweep's confirm/ Tune experiment; returns their Results."""
    from lora_tune import tuner
    from lora_tune.confirm import confirmation_config

    confirm_cfg = confirmation_config(cfg)

    def run(points: list[dict[str, Any]]) -> Any:
        print(f"lora_tune: confirming the top {cfg.eval.confirm_top_k} configs with seeds "
              f"{[p['seed'] for p in points[:cfg.eval.confirm_seeds]]} ({len(points)} trials)", flush=True)
        callbacks = [tuner.TrackerCallback(tracker, confirm_cfg, role="confirm")]
        if cfg.resources.workers_per_trial > 1:
            callbacks.append(tuner.TrainGroupReaper())
        return tuner.confirm_tuner(confirm_cfg, points, location, data, callbacks).fit()

    return run


def reference_results(cfg: SweepConfig, task: Any) -> dict[str, Any] | None:
    """What the reference task (base scores, default-LoRA baseline) returned; a failure is a warning."""
    from lora_tune.tuner import TaskStuck

    try:
        return task.result(cfg.ray.pending_timeout_s)
    except TaskStuck as exc:
        print(f"lora_tune: warning: {exc}", file=sys.stderr)
        return None
    except Exception as exc:  # noqa: BLE001 - the sweep's own results stand without the references
        reason = (str(exc).strip().splitlines() or [""])[-1][:300]
        print(f"lora_tune: warning: the base / default-LoRA reference task failed ({reason})", file=sys.stderr)
        return None


class Phases:
    """Where a sweep's wall time goes: Ray start (and data), trials, after the trials."""

    def __init__(self) -> None:
        self.marks = [("start", time.monotonic())]

    def mark(self, name: str) -> None:
        self.marks.append((name, time.monotonic()))

    def seconds(self) -> dict[str, float]:
        return {name: round(t - self.marks[i][1], 1) for i, (name, t) in enumerate(self.marks[1:])}

    def after_trials(self) -> dict[str, float]:
        """The phases so far, the time after the trials included (what summary.json records)."""
        self.mark("after_trials_s")
        return self.seconds()

    def line(self) -> str:
        parts = {"ray_start_s": "start-up (checks, data, Ray)", "trials_s": "trials",
                 "after_trials_s": "after the trials"}
        return "lora_tune: time: " + ", ".join(f"{parts[k]} {v:.0f} s" for k, v in self.seconds().items())


def run_sweep(cfg: SweepConfig, notes: list[str] | None = None) -> dict[str, Any] | None:
    """Validate, run the sweep on Ray Tune, write results; returns the winner's summary. `notes` (e.g. which
    keys the command line pinned) are printed once the sweep is known to start."""
    from lora_tune import tuner
    from lora_tune.baseline import references
    from lora_tune.post_sweep import finish, summary_line
    from lora_tune.tracking import TrialTracker

    if cfg.dry_run:  # print the plan (meta device, no weights); Ray never starts
        from lora_tune.plan import print_plan

        print_plan(cfg)
        return None
    phases = Phases()
    problems = preflight(cfg)
    if problems:
        raise ConfigError(problems)
    data = shared_task_data(cfg)
    cfg = with_detected_format(cfg, data)
    for note in notes or []:
        print(f"lora_tune: {note}", file=sys.stderr, flush=True)
    location = sweep_location(cfg)
    store = Store.at(location)
    local_dir = Path(store.root) if store.is_local else cache_dir(location)
    tuner.init_ray(cfg)
    if not cfg.resume:
        store.write_text("config.yaml", yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False))
    tracker = TrialTracker(cfg.wandb, cfg.sweep_name, store, local_dir, cfg.model.name_or_path, cfg.metric, cfg.mode)
    failures = tuner.FailureCounter()
    callbacks = [tuner.TrackerCallback(tracker, cfg), failures]
    if cfg.resources.workers_per_trial > 1:
        callbacks.append(tuner.TrainGroupReaper())
    phases.mark("ray_start_s")
    try:
        reference = tuner.start_task(cfg, "the base / default-LoRA reference task", references, cfg, location,
                                     data)  # beside the trials
        build = tuner.restore_tuner if cfg.resume else tuner.build_tuner
        grid = build(cfg, location, data, callbacks).fit()
        phases.mark("trials_s")
        summary = finish(cfg, grid, store, local_dir, tracker, failures.failures, score_on_test(cfg),
                         reference_results(cfg, reference), phases.after_trials,
                         confirmation(cfg, location, data, tracker))
    finally:
        tracker.close()
        tuner.shutdown_ray()
    print(phases.line())
    print(summary_line(summary, location))
    return summary


def launch(cfg: SweepConfig, overrides: list[str], config_dirs: list[str] | None = None) -> None:
    """ray.address=http://HOST:PORT submits the sweep as a Ray Job (jobs.py, nothing starts here); else run it."""
    from lora_tune import jobs

    if cfg.dry_run or not jobs.is_job_address(cfg.ray.address):  # a dry run plans locally, submits nothing
        summary = run_sweep(resolve_resume(cfg), pin_notes(cfg, overrides))
        if summary and "error" in summary["test"]:  # written all the same, but the sweep did not do all it should
            raise SystemExit(1)
        return
    try:
        code = jobs.submit(overrides, cfg, config_dirs or [])
    except jobs.JobError as exc:
        fail([str(exc)])
    if code:
        raise SystemExit(code)


def cli(argv: list[str] | None = None) -> None:
    """`python -m lora_tune.sweep [--config-dir DIR] [key=value ...]`.

    Plain overrides (and the user's config dirs) are composed with Hydra's compose API and validated here, so
    that every problem (Hydra's own included) is one line and exit code 2; Hydra's other flags (--cfg job,
    --help, ...) go to its own entry.
    """
    config_dirs, args = split_config_dirs(list(sys.argv[1:] if argv is None else argv))
    if any(arg.startswith("-") for arg in args):
        hydra_main([*(f"--config-dir={d}" for d in config_dirs), *args],
                   lambda cfg, overrides: launch(cfg, overrides, config_dirs))
        return
    try:
        launch(compose_config(args, config_dirs), args, config_dirs)
    except ConfigError as exc:
        fail(exc.problems)


if __name__ == "__main__":
    cli()
