"""Ray Tune and Ray Train, trial side: what runs inside each trial. The driver side is tuner.py.

A trial of one worker runs `train.run_trial` in its Tune actor. With `resources.workers_per_trial=N > 1` the trial
is a Ray Train `TorchTrainer` with N workers (one GPU each on a GPU cluster, CPUs and gloo locally), placed by
`resources.placement`; rank 0's reports reach Tune through `TuneRelay` with their checkpoints, so ASHA, PBT and
Tune's checkpoint handling work as for one worker. When Tune stops or pauses such a trial, `stop_train_run` aborts
the Train run and makes sure its workers' reserved resources are handed back.

Every trial keeps in its own storage (the trial folder under ray.storage_path, which every node reaches):
`resume/step-N/` (the newest resumable state, written every train.checkpoint_every steps) and `diverged.txt`
(a trial whose loss diverged fails its retries at once). A retried trial, on any node, resumes from the newest of
its Tune checkpoint (when it holds a resumable state, as PBT's do) and `resume/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import ray
from ray import tune

from lora_tune.config import SweepConfig
from lora_tune.data import TaskData
from lora_tune.space import overrides_from_params
from lora_tune.storage import Store
from lora_tune.train import STATE_FILE, TrialDiverged, run_trial

DIVERGED_MARKER = "diverged.txt"
RESUME_DIR = "resume"
TRAIN_GROUP_FILE = "train_placement_groups.txt"  # the placement group ids of the trial's Train runs, one a line
# This trial actor's running Train controller and its workers' placement group, for stop_train_run.
_RUNNING: dict[str, Any] = {"controller": None, "placement_group": None}


# --- the trial's own storage -----------------------------------------------------------------------------


def trial_store() -> Store:
    """The trial folder in the sweep's storage (local, a shared mount or a bucket), from Tune's context."""
    storage = tune.get_context().get_storage()
    return Store(storage.storage_filesystem, storage.trial_fs_path)


def newest_state(store: Store) -> tuple[int, str] | None:
    """(step, folder) of the newest complete resumable state in resume/."""
    steps = []
    for name in store.folders(RESUME_DIR):
        if name.startswith("step-") and store.is_complete_dir(f"{RESUME_DIR}/{name}"):
            steps.append((int(name.removeprefix("step-")), f"{RESUME_DIR}/{name}"))
    return max(steps) if steps else None


def state_saver(store: Store) -> Any:
    """save_state for run_trial: the state goes to resume/step-N (manifest last), then older ones go."""
    def save(folder: Path, step: int) -> int:
        written = store.put_dir(folder, f"{RESUME_DIR}/step-{step:06d}")
        for name in store.folders(RESUME_DIR):
            if name != f"step-{step:06d}":
                store.delete(f"{RESUME_DIR}/{name}")
        return written
    return save


def resume_point(store: Store, checkpoint: Any, local: Path) -> str | None:
    """A local folder with the newest resumable state: the Tune checkpoint when it holds one (PBT's), else the
    trial's resume/ state, whichever is newer; None for a fresh start."""
    candidates = []
    if checkpoint is not None:
        try:
            folder = Path(checkpoint.to_directory(str(local / "checkpoint")))
        except (FileNotFoundError, OSError):  # a restored experiment state may name a checkpoint Ray pruned since
            folder = local / "missing"
        if (folder / STATE_FILE).is_file():
            step = int(json.loads((folder / "metrics.json").read_text())["step"])
            candidates.append((step, str(folder)))
    found = newest_state(store)
    if found is not None and (not candidates or found[0] > candidates[0][0]):
        return str(store.get_dir(found[1], local / "state"))
    return candidates[0][1] if candidates else None


# --- one trial -------------------------------------------------------------------------------------------


def trial_kwargs(cfg: SweepConfig) -> dict[str, Any]:
    """What every trial of this sweep passes to run_trial besides its config."""
    generated = cfg.metric in cfg.metric_names()[2:]
    return {"full_state_in_reports": cfg.scheduler.name == "pbt",
            "needs_generation": generated,
            "gpus": cfg.resources.gpus_per_trial}


def run_in_trial(cfg: SweepConfig, params: dict[str, Any], data: TaskData | None, store: Store, checkpoint: Any,
                 report: Any, workers: Any = None) -> None:
    """One trial (or one worker of it): resume point, run_trial, divergence marker."""
    trial_cfg = cfg.trial_config(overrides_from_params(params, cfg.search_space))
    if store.is_file(DIVERGED_MARKER):  # a diverged trial diverges again: fail its retries at once
        raise TrialDiverged(store.read_text(DIVERGED_MARKER))
    staging = Path(tempfile.mkdtemp(prefix="lora_tune-trial-"))
    try:
        run_trial(trial_cfg, report, resume_from=resume_point(store, checkpoint, staging),
                  checkpoint_root=str(staging / "out"), num_threads=max(1, int(cfg.resources.cpus_per_trial)),
                  data=data, workers=workers, save_state=state_saver(store), **trial_kwargs(cfg))
    except TrialDiverged as exc:
        if workers is None or workers.is_main:
            store.write_text(DIVERGED_MARKER, str(exc))
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_trainable(cfg: SweepConfig, data: TaskData | None) -> Any:
    """The Tune trainable for `cfg`, with the sweep's tokenized `data` (or None) put in the object store once."""
    if cfg.resources.workers_per_trial > 1:
        return train_driver(cfg, data)

    def lora_trial(params: dict[str, Any], data: TaskData | None = None) -> None:
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per report
        node_id = ray.get_runtime_context().get_node_id()

        def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
            checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            tune.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)

        run_in_trial(cfg, params, data, trial_store(), tune.get_checkpoint(), report)

    return resilient(lora_trial, data)


def resilient(fn: Any, data: TaskData | None) -> type:
    """`fn` as a Tune trainable class that survives a restore from a checkpoint Ray has since pruned.

    Ray snapshots the experiment state every ~10 s while it deletes checkpoints beyond ray.num_to_keep at once, so
    a sweep resumed after its driver was killed can name a trial's latest checkpoint that is gone; Ray's own
    restore then fails the trial on every retry. Such a trial starts without a Tune checkpoint instead and
    resumes from its resume/ state (resume_point)."""
    from ray.tune.trainable.function_trainable import wrap_function

    class LoraTrial(wrap_function(tune.with_parameters(fn, data=data))):
        def restore(self, checkpoint_path: Any) -> Any:
            if isinstance(checkpoint_path, str):
                checkpoint = tune.Checkpoint.from_directory(checkpoint_path)
            else:
                checkpoint = getattr(checkpoint_path, "checkpoint", checkpoint_path)
            if Store(checkpoint.filesystem, checkpoint.path).exists():
                return super().restore(checkpoint_path)
            logging.getLogger(__name__).warning("%s is gone; the trial resumes from its resume/ state",
                                                checkpoint.path)
            return None

    LoraTrial.__name__ = LoraTrial.__qualname__ = "lora_trial"  # Ray names trial folders and log lines by it
    return LoraTrial


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What one Tune trial reserves: its resources, or (Ray Train) almost nothing: its TorchTrainer reserves
    the workers' resources itself."""
    if cfg.resources.workers_per_trial > 1:
        return {"cpu": 0, "memory": 1}  # no CPU: a fraction would keep a worker's whole CPU from being free
    return {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}


# --- a trial of several workers: Ray Train inside Tune ------------------------------------------------------


def worker_loop(config: dict[str, Any]) -> None:
    """Each Ray Train worker: its rank and device from Ray Train, its share of the trial."""
    import ray.train
    import ray.train.torch

    from lora_tune.distributed import Workers

    cfg: SweepConfig = config["cfg"]
    workers = Workers.current(cfg.resources.strategy, ray.train.torch.get_device())
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)

    store = Store(config["storage_fs"], config["trial_path"])
    checkpoint = ray.train.get_checkpoint() or config["checkpoint"]
    run_in_trial(cfg, config["params"], config["data"], store, checkpoint, report, workers)


class TuneRelay:
    """Runs in the Train controller: hands Tune each report of rank 0 (with its checkpoint) and, at once, the
    controller's handle (so that a stopped trial can abort it)."""

    def __init__(self, queue: Any):
        self.queue = queue

    def callbacks(self) -> list[Any]:
        import ray.train
        from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

        queue = self.queue

        class Reports(ray.train.UserCallback):
            def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
                queue.put(("report", metrics[0], checkpoint))

        class Started(ControllerCallback):
            def after_controller_start(self, train_run_context: Any) -> None:
                queue.put(("controller", ray.get_runtime_context().current_actor, None))

        class Placed(WorkerGroupCallback):
            def after_worker_group_start(self, worker_group: Any) -> None:
                state = worker_group.get_worker_group_state()
                queue.put(("placement_group", state.placement_group_handle.placement_group, None))

        return [Reports(), Started(), Placed()]


def run_under_tune(trainer_for: Any) -> None:
    """Run a TorchTrainer (made by `trainer_for(callbacks)`) in a thread; relay its reports to tune.report."""
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    trainer = trainer_for(TuneRelay(queue).callbacks())
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's thread below
            outcome["error"] = exc
        finally:
            # A trial Tune stops is torn down with its queue while an aborted fit() is still unwinding.
            with contextlib.suppress(ray.exceptions.RayActorError):
                queue.put(("done", None, None))

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while True:
        kind, payload, checkpoint = queue.get()
        if kind == "done":
            break
        if kind in _RUNNING:
            _RUNNING[kind] = payload
            if kind == "placement_group":  # for the driver, once the trial has ended (release_train_groups)
                record_train_group(trial_store(), payload.id.hex())
            continue
        relayed = tune.Checkpoint(path=checkpoint.path, filesystem=checkpoint.filesystem) if checkpoint else None
        tune.report(payload, checkpoint=relayed)
    thread.join()
    _RUNNING.update(controller=None, placement_group=None)
    if "error" in outcome:
        raise unwrap(outcome["error"])


def unwrap(error: BaseException) -> BaseException:
    """A worker's TrialDiverged surfaces as itself (the sweep reports its reason), other errors as they are."""
    text = str(error)
    if "TrialDiverged" in text:
        reason = next((line for line in reversed(text.splitlines()) if "TrialDiverged" in line), text)
        return TrialDiverged(reason.split("TrialDiverged:", 1)[-1].strip())
    return error


def train_driver(cfg: SweepConfig, data: TaskData | None) -> Any:
    """The Tune trainable of a multi-worker trial: a TorchTrainer per start of the trial (Tune's checkpoint and
    the trial's resume/ state are what a restart continues from)."""

    def lora_trial(params: dict[str, Any], data: TaskData | None = None) -> None:
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer

        logging.getLogger("ray.train").setLevel(logging.WARNING)
        storage = tune.get_context().get_storage()
        res = cfg.resources
        scaling = ray.train.ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=res.gpus_per_trial > 0,
            resources_per_worker={"CPU": res.cpus_per_trial, **({"GPU": res.gpus_per_trial}
                                                                if res.gpus_per_trial else {})},
            placement_strategy=res.placement.upper())
        loop_config = {"cfg": cfg, "params": params, "data": data, "checkpoint": tune.get_checkpoint(),
                       "storage_fs": storage.storage_filesystem, "trial_path": storage.trial_fs_path}

        def trainer_for(callbacks: list[Any]) -> Any:
            return TorchTrainer(
                worker_loop, train_loop_config=loop_config, scaling_config=scaling,
                torch_config=TorchConfig(backend="nccl" if res.gpus_per_trial else "gloo"),
                run_config=ray.train.RunConfig(
                    name=f"train-{uuid.uuid4().hex[:8]}",  # a new Train run per start: Tune holds the checkpoints
                    storage_path=storage.trial_fs_path, storage_filesystem=storage.storage_filesystem,
                    callbacks=callbacks, failure_config=ray.train.FailureConfig(max_failures=0),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                    logging_config=ray.train.LoggingConfig(log_level="WARNING")))  # Tune reports the results

        run_under_tune(trainer_for)

    class TrainDriver(resilient(lora_trial, data)):
        def cleanup(self) -> None:
            stop_train_run()  # a module function: this class is pickled by value, the module's state is not
            super().cleanup()

    TrainDriver.__name__ = TrainDriver.__qualname__ = "lora_trial"
    return TrainDriver


def stop_train_run() -> None:
    """Tune stops or pauses a trial (ASHA, PBT): abort its Train run and make sure its workers' placement group is
    gone. The group lives as long as the sweep's driver, not the trial: one left behind holds its CPUs/GPUs for
    the rest of the sweep and the next Train trial waits for them forever. Ray Train removes it on abort, and its
    own cleaner removes it once it sees the controller dead through the dashboard's state API (tuner.init_ray);
    an abort that timed out or failed leaves it to be removed here at once, not at the cleaner's next poll."""
    controller, group = _RUNNING["controller"], _RUNNING["placement_group"]
    if controller is not None:
        with contextlib.suppress(Exception):  # abort ends the controller actor: ActorDiedError
            ray.get(controller.abort.remote(), timeout=60)
    with contextlib.suppress(Exception):  # the trial is going away either way: never fail its stop
        if group is not None and remove_if_held(group):
            logging.getLogger(__name__).warning("the stopped trial's Train workers still held their resources "
                                                "after the abort; released them")
    _RUNNING.update(controller=None, placement_group=None)


def record_train_group(store: Store, group_id: str) -> None:
    """Add a Train run's placement group id to the trial's list (a restarted trial has one run per start)."""
    known = recorded_train_groups(store)
    if group_id not in known:
        store.write_text(TRAIN_GROUP_FILE, "".join(f"{g}\n" for g in [*known, group_id]))


def recorded_train_groups(store: Store) -> list[str]:
    """The placement group ids the trial's Train runs recorded (hex), oldest first."""
    if not store.is_file(TRAIN_GROUP_FILE):
        return []
    return [line.strip() for line in store.read_text(TRAIN_GROUP_FILE).splitlines() if line.strip()]


def release_train_groups(store: Store) -> int:
    """Driver side, once a trial has ended (finished, stopped, failed or killed): remove every placement group its
    Train runs reserved that Ray still holds; how many were. A group lives as long as the sweep's driver, not the
    trial: Ray Train removes it when its run shuts down, but Tune ends a trial at its last report (ASHA's max_t)
    or kills a trial whose stop is slow (at the experiment's end, after 10 s) while that shutdown is under way,
    and its controller dies with the trial's process, leaving the group to hold its CPUs/GPUs forever."""
    return sum(remove_if_held(train_group(g)) for g in recorded_train_groups(store))


def train_group(hex_id: str) -> Any:
    """The placement group with this recorded id."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id)))


def remove_if_held(group: Any) -> bool:
    """Remove the placement group unless the GCS has it removed already; whether it was still there."""
    if placement_group_state(group) in ("REMOVED", ""):
        return False
    ray.util.remove_placement_group(group)
    return True


def placement_group_state(group: Any) -> str:
    """CREATED, PENDING, REMOVED, ... as the GCS has it now ("" for one it does not know)."""
    return ray.util.placement_group_table(group).get("state", "")
