"""Ray Tune, driver side: start Ray, build the Tuner (space, scheduler, search algorithm, resources, storage),
run or restore it, and the callbacks that mirror trials into W&B and count their failures.

The trial side (what runs inside each trial) is trainable.py; the Jobs API client is jobs.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune

from lora_tune.config import Dimension, SweepConfig
from lora_tune.errors import ConfigError
from lora_tune.space import encode_value, overrides_from_params

# Trial processes inherit these: quiet libraries, no tokenizer thread pools fighting the trial's threads.
# A Ray Train trial's workers wait for their resources while other trials (or the reference task) hold them.
WORKER_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
              "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
              "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "86400",
              # Ray Tune warns whenever checkpoints come faster than every 5 s (short evaluation intervals do)
              "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def init_ray(cfg: SweepConfig) -> None:
    import ray

    os.environ.update(WORKER_ENV)
    if cfg.ray.address:  # cluster workers do not inherit this process's environment
        try:
            ray.init(address=cfg.ray.address, log_to_driver=True, runtime_env={"env_vars": WORKER_ENV})
        except ConnectionError as exc:
            cause = str(exc.__cause__ or exc).splitlines()[0]
            hint = ("; with token authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
                    if "token" in cause.lower() else "")
            raise ConfigError([f"ray.address: cannot join the cluster at {cfg.ray.address} ({cause[:200]})"
                               f"{hint}"]) from None
    else:
        # A new local instance on the loopback interface: address="local" never joins another Ray that is
        # running on this machine (ray.init() alone would attach to it through /tmp/ray/ray_current_cluster).
        # Ray Train trials start the dashboard: its state API is how Ray Train's placement group cleaner sees a
        # trial's controller die (TrainGroupReaper does the same from here; without the dashboard the cleaner
        # also warns every second). One worker a trial: ~2 s saved.
        ray.init(address="local", num_cpus=cfg.resources.num_cpus, log_to_driver=True,
                 include_dashboard=cfg.resources.workers_per_trial > 1, _node_ip_address="127.0.0.1")
    check_placement(cfg)


def check_placement(cfg: SweepConfig) -> None:
    """Refuse (this machine's own Ray: no node will ever join it) or warn (a cluster: an autoscaler may add one)
    when the live nodes cannot hold one trial's workers: its trials would wait forever, saying nothing (Ray Tune
    does not see a Ray Train trial's workers, which its TorchTrainer reserves)."""
    import ray

    from lora_tune.placement import unplaceable

    reason = unplaceable(cfg.resources, [node["Resources"] for node in ray.nodes() if node.get("Alive")])
    if reason is None:
        return
    if not cfg.ray.address:
        ray.shutdown()
        raise ConfigError([f"resources: no trial could start on this machine: {reason}"])
    print(f"lora_tune: warning: no trial can start on the cluster as it is now: {reason}; trials wait for nodes "
          "that can hold them (an autoscaler's)", file=sys.stderr, flush=True)


def shutdown_ray() -> None:
    """Stop local Ray (flushing trial logs, so the summary is the last line); leave a cluster running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def to_domain(dim: Dimension, grid: bool = False) -> Any:
    """One dimension as a ray.tune domain; `grid` turns categorical choices into grid_search. A choice of one
    value (a pinned key) is a constant."""
    if dim.type in ("choice", "grid"):
        values = [encode_value(v) for v in dim.values]
        if len(values) == 1:
            return values[0]
        return tune.grid_search(values) if grid or dim.type == "grid" else tune.choice(values)
    if grid:
        raise ConfigError([f"search_space: {dim.key} is {dim.type}; search_alg=grid accepts only choice/grid entries"])
    low, high, q = dim.low, dim.high, dim.q
    makers = {
        "uniform": lambda: tune.uniform(low, high),
        "quniform": lambda: tune.quniform(low, high, q),
        "loguniform": lambda: tune.loguniform(low, high),
        "qloguniform": lambda: tune.qloguniform(low, high, q),
        "randint": lambda: tune.randint(int(low), int(high)),
        "qrandint": lambda: tune.qrandint(int(low), int(high), int(q)),
        "lograndint": lambda: tune.lograndint(int(low), int(high)),
    }
    return makers[dim.type]()


def param_space(dims: dict[str, Dimension], grid: bool = False) -> dict[str, Any]:
    """The Tuner's param_space: {config key: domain}, e.g. {"peft.r": tune.choice([4, 8])}."""
    return {dim.key: to_domain(dim, grid) for dim in dims.values()}


def build_scheduler(cfg: SweepConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    sched = cfg.scheduler
    if sched.name == "asha":
        return ASHAScheduler(time_attr="step", max_t=cfg.max_steps,
                             grace_period=sched.grace_period or cfg.train.eval_every,
                             reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    if sched.name == "pbt":
        by_key = {dim.key: dim for dim in cfg.search_space.values()}
        mutations = {key: to_domain(by_key[key]) for key in sched.mutate if key in by_key}
        return PopulationBasedTraining(time_attr="step", perturbation_interval=sched.perturbation_interval,
                                       hyperparam_mutations=mutations, quantile_fraction=sched.quantile_fraction,
                                       resample_probability=sched.resample_probability)
    return FIFOScheduler()


def build_search_alg(cfg: SweepConfig, limit: int | None) -> Any:
    """The search algorithm, capped at `limit` trials at once (Tune ignores TuneConfig.max_concurrent_trials
    when it is given a search algorithm instance: the cap must live in the algorithm)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if cfg.search_alg.name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=cfg.seed)
        return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit else searcher
    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=limit or 0)


def tune_trainable(cfg: SweepConfig, data: Any) -> Any:
    """The trial function with its shared data and per-trial resources attached."""
    from lora_tune.trainable import make_trainable, trial_resources

    return tune.with_resources(make_trainable(cfg, data), trial_resources(cfg))


def storage_parent(location: str) -> tuple[str, str]:
    """(storage_path, name) for Ray's RunConfig from the sweep's location (a path or a URI)."""
    parent, name = location.rstrip("/").rsplit("/", 1)
    return parent, name


def concurrent_trials(cfg: SweepConfig) -> int | None:
    """Trials at once: search_alg.max_concurrent, and for Ray Train trials (whose Tune trial reserves almost
    nothing; each TorchTrainer reserves its workers) as many as the cluster's resources hold now."""
    cap = cfg.search_alg.max_concurrent
    res = cfg.resources
    if res.workers_per_trial == 1:
        return cap
    import ray

    available = ray.cluster_resources()
    fits = int(available.get("CPU", 0) // (res.cpus_per_trial * res.workers_per_trial))
    if res.gpus_per_trial:
        fits = min(fits, int(available.get("GPU", 0) // (res.gpus_per_trial * res.workers_per_trial)))
    return max(1, min(fits, cap) if cap else fits)


def build_tuner(cfg: SweepConfig, location: str, data: Any, callbacks: list) -> Any:
    storage_path, name = storage_parent(location)
    return tune.Tuner(
        tune_trainable(cfg, data),
        param_space=param_space(cfg.search_space, grid=cfg.search_alg.name == "grid"),
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples,
            scheduler=build_scheduler(cfg), search_alg=build_search_alg(cfg, concurrent_trials(cfg)),
            reuse_actors=reuses_actors(cfg),  # the process keeps the loaded base (model.BaseModelCache)
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks, verbose=cfg.verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.ray.num_to_keep,
                                                    checkpoint_score_attribute=cfg.metric,
                                                    checkpoint_score_order=cfg.mode),
        ),
    )


def confirm_tuner(cfg: SweepConfig, points: list[dict[str, Any]], location: str, data: Any,
                  callbacks: list) -> Any:
    """The confirmation run (confirm.py): exactly `points` (the top configs, each with other seeds) as trials to
    the end, the search's trainable, resources and retries, stored as the sweep's confirm/ experiment (a resumed
    sweep continues it). `cfg` is confirm.confirmation_config(...): the seed is a search-space entry, FIFO."""
    from ray.tune.search import BasicVariantGenerator

    from lora_tune.confirm import CANDIDATE

    if cfg.resume and tune.Tuner.can_restore(f"{location.rstrip('/')}/confirm"):  # interrupted while confirming
        tuner = tune.Tuner.restore(f"{location.rstrip('/')}/confirm", trainable=tune_trainable(cfg, data),
                                   resume_unfinished=True, resume_errored=cfg.retry_errored)
        tuner._local_tuner.get_run_config().callbacks = callbacks  # as restore_tuner: this run's tracker
        return tuner
    space = {**param_space(cfg.search_space), CANDIDATE: tune.choice(sorted({p[CANDIDATE] for p in points}))}
    limit = concurrent_trials(cfg)
    return tune.Tuner(
        tune_trainable(cfg, data), param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=len(points), scheduler=build_scheduler(cfg),
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=limit or 0),
            reuse_actors=reuses_actors(cfg)),
        run_config=tune.RunConfig(
            name="confirm", storage_path=location, callbacks=callbacks, verbose=cfg.verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


def reuses_actors(cfg: SweepConfig) -> bool:
    """One-worker trials run one after another in one process (it keeps the loaded base), unless a trial may use
    paged AdamW: bitsandbytes never frees its paged buffers, so each trial would leak its optimizer state. Ray Train
    trials start new workers anyway (and an actor reset would not wait for a running TorchTrainer)."""
    optimizers = {cfg.train.optimizer} | {value for dim in cfg.search_space.values()
                                          if dim.key == "train.optimizer" for value in dim.values or []}
    return cfg.resources.workers_per_trial == 1 and "paged_adamw" not in optimizers


def restore_tuner(cfg: SweepConfig, location: str, data: Any, callbacks: list) -> Any:
    """Continue an interrupted sweep: finished trials stay finished, unfinished ones resume from checkpoints."""
    tuner = tune.Tuner.restore(location, trainable=tune_trainable(cfg, data), resume_unfinished=True,
                               resume_errored=cfg.retry_errored)
    # The restored RunConfig carries the callbacks pickled at the start; this run's tracker replaces them.
    tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner


class TaskStuck(RuntimeError):
    """A task the driver waits for after the trials never got the resources to start."""


@dataclass
class Task:
    """A Ray task started by start_task: a generator that yields once as it starts, then `fn`'s value."""
    name: str
    request: dict[str, float]
    outputs: Any  # the task's ObjectRefGenerator

    def result(self, pending_timeout_s: float) -> Any:
        """`fn`'s value (raises what it raised); TaskStuck when it has not started `pending_timeout_s` seconds
        into the wait (its run itself has no limit: a baseline trial on a large model may take hours)."""
        import ray

        started, _ = ray.wait([self.outputs], timeout=pending_timeout_s)
        if not started:
            ray.cancel(self.outputs, force=True)
            raise TaskStuck(f"{self.name} did not start within ray.pending_timeout_s={pending_timeout_s:g} s: it "
                            f"needs {format_resources(self.request)}; {held_resources()}")
        ray.get(next(self.outputs))  # raises what ended the task before it started (a function it cannot load)
        return ray.get(next(self.outputs))


def start_task(cfg: SweepConfig, name: str, fn: Callable, *args: Any, all_cpus: bool = False) -> Task:
    """`fn(*args, threads)` as a Ray task with one trial's (one worker's) resources, a GPU on a cluster, retried
    like a trial. `all_cpus`: it runs once the trials are done and may use every CPU."""
    import ray

    res = cfg.resources
    request = {"CPU": res.cpus_per_trial, **({"GPU": res.gpus_per_trial} if res.gpus_per_trial else {})}
    # max_calls=1: the task's process ends with it, and with it what the task loaded (the reference task's cached
    # 16-bit base and CUDA context would stay on the GPU beside the trials and the winner's scoring). Only
    # @ray.remote sets it (.options() cannot; Ray defaults it to 1 only there, for tasks that ask for GPUs).
    task = ray.remote(num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial, max_calls=1,
                      max_retries=max(cfg.ray.max_failures, 0))(announcing_start(fn))
    return Task(name, request, task.remote(*args, task_threads(cfg, all_cpus)))


def task_threads(cfg: SweepConfig, all_cpus: bool = False) -> int:
    """torch threads of a task beside or after the trials: one trial's CPU share, or (`all_cpus`) the sweep's."""
    res = cfg.resources
    return max(1, int(res.num_cpus or os.cpu_count() or 1)) if all_cpus else max(1, int(res.cpus_per_trial))


def announcing_start(fn: Callable) -> Callable:
    """`fn` as a generator task: its first output says it started (the driver can tell a task that waits for
    resources from one that runs), its second is `fn`'s value."""
    def run(*args: Any) -> Any:
        yield "started"
        yield fn(*args)

    run.__name__ = run.__qualname__ = getattr(fn, "__name__", "task")  # Ray names the task (and its logs) by it
    return run


def held_resources() -> str:
    """What holds this Ray's resources now: the placement groups not removed, and what is free of the total."""
    import ray
    from ray.util.placement_group import placement_group_table

    groups = [g for g in placement_group_table().values() if g.get("state") != "REMOVED"]
    held = "; ".join(f"placement group {g['placement_group_id'][:8]} ({g['state']}) holds "
                     + format_resources(sum_bundles(g["bundles"].values())) for g in groups)
    free, total = ray.available_resources(), ray.cluster_resources()
    capacity = ", ".join(f"{key} {free.get(key, 0):g} of {total[key]:g}" for key in ("CPU", "GPU") if key in total)
    return f"{held or 'no placement group holds resources'}; free: {capacity}"


def sum_bundles(bundles: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for key, amount in bundle.items():
            total[key] = total.get(key, 0) + amount
    return total


def format_resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{key} {amount:g}" for key, amount in resources.items() if key in ("CPU", "GPU")) or "nothing"


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


class TrainGroupReaper(tune.Callback):
    """Ray Train trials: once a trial has ended, however it ended (finished, stopped by the scheduler, failed, its
    process killed), the placement groups of its workers, which live as long as this driver, are removed, and at
    the experiment's end (after Tune has killed the trials still stopping) every trial's are: a group left behind
    holds its CPUs/GPUs, and the next trial, the retry or the winner's scoring would wait for them forever."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial, "ended")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial, "failed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial, "failed")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:
            self._release(trial, "ended")

    @staticmethod
    def _release(trial: Any, how: str) -> None:
        from lora_tune.storage import Store
        from lora_tune.trainable import release_train_groups

        try:
            released = release_train_groups(Store(trial.storage.storage_filesystem, trial.storage.trial_fs_path))
        except Exception as exc:  # noqa: BLE001 - a sweep goes on; Ray Train's own cleaner may still release it
            print(f"lora_tune: warning: could not release trial {trial.trial_id}'s Train workers ({exc})",
                  file=sys.stderr)
            return
        if released and how == "failed":  # a trial Tune ends at its last report still holds them: nothing to say
            print(f"lora_tune: trial {trial.trial_id} failed holding its Train workers' resources; released them",
                  file=sys.stderr)


class TrackerCallback(tune.Callback):
    """Forwards trial start / result / end to a TrialTracker (W&B runs in the driver process)."""

    def __init__(self, tracker: Any, cfg: SweepConfig, role: str = "trial"):
        self.tracker = tracker
        self.cfg = cfg
        self.role = role  # "confirm" for the confirmation run's trials (their W&B runs' job type)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = overrides_from_params(trial.config, self.cfg.search_space)
        self.tracker.trial_started(trial.trial_id, self.cfg.trial_config(params).to_dict(), role=self.role)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.tracker.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        steps = (trial.last_result or {}).get("step", 0)
        self.tracker.trial_ended(trial.trial_id, {"status": "TERMINATED", "steps": steps,
                                                  "stopped_early": steps < self.cfg.max_steps})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.trial_ended(trial.trial_id, {"status": "ERROR"})
