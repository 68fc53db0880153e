"""Multi-worker trials with real Ray Train (TorchTrainer workers on CPU, gloo): the same optimisation as one
worker with the same global batch, ASHA on top of them, FSDP sharding, a killed worker's trial resumed, and the
workers' reserved CPUs handed back when a trial is stopped or its process killed.

    .venv/bin/python -m pytest -q tests/test_distributed.py       # minutes: every trial starts a worker group
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lora_tune.compose import compose_config
from lora_tune.storage import Store
from lora_tune.sweep import run_sweep
from lora_tune.train import run_trial
from tests.conftest import with_space
from tests.procs import kill_ray_actor
from tests.ray_cluster import LocalCluster, descendants_titled

pytestmark = pytest.mark.slow
SHARED = ["experiment=tiny", "wandb.mode=disabled", "verbose=0", "data.max_train_examples=32",
          "data.exact_match_examples=0", "data.test_examples=4", "train.batch_size=8", "max_steps=12",
          "train.eval_every=4", "peft.target_modules=all-linear", "quant.bits=16", "train.warmup_ratio=0",
          "peft.dropout=0",  # dropout masks are drawn per worker: without it the two runs can match exactly
          "train.precision=fp32"]  # the equivalence tolerances below are fp32 summation-order rounding
KILL_MAX_STEPS = 60  # the kill tests' trials: long enough to be killed mid-run with steps left to resume


def histories(location: str) -> dict[str, list[dict]]:
    from lora_tune.results import trial_histories

    return trial_histories(Store.at(location))


@pytest.fixture(scope="module")
def two_worker_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ASHA over lr 3e-2 (learns) then 1e-6 (does not), one trial at a time (2 workers per trial take both CPUs):
    the second is stopped at the first rung, below the first's result there; W&B offline."""
    out = tmp_path_factory.mktemp("ddp")
    shared = [o for o in SHARED if not o.startswith("wandb.mode=")]
    cfg = compose_config([*shared, "wandb.mode=offline", f"output_dir={out}", "sweep_name=ddp",
                          "resources.workers_per_trial=2", "num_samples=1"])
    cfg = with_space(cfg, lr={"key": "train.lr", "type": "grid", "values": [3e-2, 1e-6]})
    summary = run_sweep(cfg)
    return {"cfg": cfg, "summary": summary, "dir": out / "ddp"}


def test_two_workers_optimise_like_one_with_the_same_global_batch(two_worker_sweep: dict) -> None:
    """Each worker takes half of every step's global batch and the loss is normalised over the global batch's
    answer tokens, so the gradient is the one-worker gradient; DDP adds it up in another order. Tolerance 1e-4
    relative over 12 steps: fp32 summation-order rounding (~1e-7 a step) compounded by a learning rate of 3e-2,
    orders of magnitude below the step-to-step change of the loss (~1e-2)."""
    cfg = two_worker_sweep["cfg"]
    rows = json.loads((two_worker_sweep["dir"] / "results.json").read_text())
    learner = next(r for r in rows if r["lr"] == 3e-2 and r["steps"] == 12)
    assert learner["workers"] == 2
    two = [h["eval_loss"] for h in histories(str(two_worker_sweep["dir"]))[learner["trial_id"]]]
    one: list[float] = []
    run_trial(cfg.trial_config({"train.lr": 3e-2}), lambda m, c: one.append(m["eval_loss"]), reuse_base=False)
    assert len(one) == len(two) == 3 and one[-1] < one[0] - 0.1
    assert two == pytest.approx(one, rel=1e-4)


def test_asha_stops_two_worker_trials_and_the_winner_exports(two_worker_sweep: dict) -> None:
    rows = [r for r in json.loads((two_worker_sweep["dir"] / "results.json").read_text()) if r["role"] == "trial"]
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" and r["workers"] == 2 for r in rows)
    by_lr = {r["lr"]: r for r in rows}
    assert by_lr[3e-2]["steps"] == 12 and not by_lr[3e-2]["stopped_early"], rows
    assert by_lr[1e-6]["stopped_early"] and by_lr[1e-6]["steps"] == 4, rows
    assert two_worker_sweep["summary"]["hyperparameters"]["lr"] == 3e-2


def test_one_wandb_run_per_trial_not_per_worker(two_worker_sweep: dict) -> None:
    """Only rank 0 reports: each two-worker trial is one W&B run with one history row per evaluation."""
    from tests.test_tracking import offline_runs

    rows = {r["trial_id"]: r for r in json.loads((two_worker_sweep["dir"] / "results.json").read_text())}
    runs = offline_runs(two_worker_sweep["dir"])
    trial_runs = {r["run"].display_name: r for r in runs if r["run"].job_type == "trial"}
    assert trial_runs.keys() == rows.keys() and len(runs) == len(rows) + 1  # + the sweep's run
    for trial_id, run in trial_runs.items():
        steps = [h["step"] for h in run["history"] if "eval_loss" in h]
        assert steps == list(range(4, rows[trial_id]["steps"] + 1, 4)), (trial_id, steps)


def test_the_rank_0_adapter_loads_and_generates(two_worker_sweep: dict) -> None:
    import torch
    from peft import PeftModel

    from lora_tune.config import QuantConfig
    from lora_tune.model import load_base, load_tokenizer

    adapter = two_worker_sweep["dir"] / "best" / "adapter"
    model = PeftModel.from_pretrained(load_base("embedded:tiny", QuantConfig(bits=16)), str(adapter))
    tokenizer = load_tokenizer("embedded:tiny")
    batch = tokenizer(["Convert this date to ISO format (YYYY-MM-DD): May 1, 2001"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_fsdp_shards_a_16bit_base_and_trains_like_one_worker(tmp_path: Path) -> None:
    cfg = compose_config([*SHARED, f"output_dir={tmp_path}", "sweep_name=fsdp", "resources.workers_per_trial=2",
                          "resources.strategy=fsdp", "num_samples=1", "scheduler=fifo", "train.lr=0.03"])
    cfg = with_space(cfg, lr={"key": "train.lr", "type": "choice", "values": [3e-2]})
    summary = run_sweep(cfg)
    (row,) = [r for r in json.loads((tmp_path / "fsdp" / "results.json").read_text()) if r["role"] == "trial"]
    assert row["status"] == "TERMINATED" and row["workers"] == 2 and row["steps"] == 12
    one: list[float] = []
    run_trial(dataclasses.replace(cfg.trial_config()), lambda m, c: one.append(m["eval_loss"]), reuse_base=False)
    sharded = [h["eval_loss"] for h in histories(str(tmp_path / "fsdp"))[row["trial_id"]]]
    assert sharded == pytest.approx(one, rel=1e-4)
    assert (tmp_path / "fsdp" / "best" / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["trial_id"] == row["trial_id"]


def test_a_stopped_trials_worker_reservation_never_outlives_it() -> None:
    """The placement group a Train run reserves for its workers lives as long as the sweep's driver, not the trial:
    when the run's abort has not removed it (timed out, failed), stopping the trial does, or the sweep's next Train
    trial would wait for those CPUs forever."""
    import ray
    from ray.util.placement_group import placement_group

    from lora_tune import trainable

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        group = placement_group([{"CPU": 1}, {"CPU": 1}])
        ray.get(group.ready(), timeout=60)
        trainable._RUNNING["placement_group"] = group  # its controller is gone: nothing answers an abort
        trainable.stop_train_run()
        assert trainable.placement_group_state(group) == "REMOVED"
        assert trainable._RUNNING == {"controller": None, "placement_group": None}
        waiting = placement_group([{"CPU": 1}, {"CPU": 1}])  # the next trial's workers get their CPUs
        ray.get(waiting.ready(), timeout=60)
    finally:
        ray.shutdown()


def test_a_trial_ended_while_its_train_run_shuts_down_leaves_no_placement_group(tmp_path: Path) -> None:
    """The hang after a Train sweep's trials: Tune ends a trial at a report (ASHA's max_t, a rung, a stopper) while
    its Train run still runs, then at the experiment's end kills the trial's process if its stop is slow; the
    Train controller dies with it, Ray Train's cleaner (stopped by then) removes nothing, and the workers'
    placement group holds every CPU, so the winner's scoring waits forever. Forced here: a stopper ends the trial
    at step 4 of 12 and a callback kills the trial's process and Ray Train's cleaner as it completes. The driver
    removes the group as the trial completes (tuner.TrainGroupReaper), and none is left after the sweep."""
    import ray
    from ray import tune
    from ray.util.placement_group import placement_group_table

    from lora_tune import trainable, tuner
    from lora_tune.preflight import sweep_location
    from lora_tune.sweep import shared_task_data, with_detected_format

    cfg = compose_config([*SHARED, f"output_dir={tmp_path}", "sweep_name=race", "resources.workers_per_trial=2",
                          "resources.num_cpus=2", "num_samples=1", "scheduler=fifo", "ray.max_failures=0"])
    data = shared_task_data(cfg)
    cfg = with_detected_format(cfg, data)
    seen: dict[str, list[str]] = {}

    class KillMidShutdown(tune.Callback):  # before the reaper, as Tune's kill comes before any cleanup
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            seen["killed"] = [pid for pid in [trial.last_result["pid"], *cleaner_pids()] if kill_ray_actor(pid)]

    class GroupStates(tune.Callback):  # after the reaper: the trial has just ended
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            store = Store(trial.storage.storage_filesystem, trial.storage.trial_fs_path)
            seen["groups"] = trainable.recorded_train_groups(store)
            seen["states"] = [ray.util.placement_group_table(trainable.train_group(g))["state"] for g in seen["groups"]]

    tuner.init_ray(cfg)
    try:
        storage_path, name = tuner.storage_parent(sweep_location(cfg))
        grid = tune.Tuner(
            tuner.tune_trainable(cfg, data), param_space={},
            run_config=tune.RunConfig(name=name, storage_path=storage_path, stop={"step": 4}, verbose=0,
                                      callbacks=[KillMidShutdown(), tuner.TrainGroupReaper(), GroupStates()])).fit()
        left = {pid: g for pid, g in placement_group_table().items() if g["state"] != "REMOVED"}
    finally:
        tuner.shutdown_ray()
    assert grid[0].metrics["step"] == 4 and len(seen["killed"]) == 2, seen  # the trial and Ray Train's cleaner
    assert len(seen["groups"]) == 1 and seen["states"] == ["REMOVED"], seen
    assert left == {}, left


def cleaner_pids() -> list[int]:
    """Ray Train's placement group cleaner (a detached actor of this process's local Ray)."""
    return descendants_titled(os.getpid(), "ray::PlacementGroupCleaner")


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def test_a_killed_trial_process_hands_its_workers_cpus_to_its_retry(cluster: LocalCluster, tmp_path: Path) -> None:
    """A two-worker trial's own process dies mid-run (the OOM killer, say): Ray ends its Train controller and
    workers, but their placement group lives as long as the sweep's driver, and the retry would wait for those
    CPUs forever (checked: its placement group still PENDING after 7 minutes). The sweep's driver removes it
    (tuner.TrainGroupReaper). The session's cluster runs beside this local sweep: with two Ray instances on the
    machine, Ray Train's own cleaner cannot find its instance's state API and removes nothing."""
    sweep = tmp_path / "killed-trial"
    args = [*SHARED, f"max_steps={KILL_MAX_STEPS}", "train.checkpoint_every=4", f"output_dir={tmp_path}",
            "sweep_name=killed-trial",
            "resources.workers_per_trial=2", "resources.num_cpus=2", "num_samples=1", "scheduler=fifo",
            "ray.max_failures=1", "peft.r=8", "peft.alpha=16", "train.lr=0.01"]  # 2 CPUs: the group takes both
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lora_tune.sweep", *args], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        killed_after = kill_trial_process_once_resumable(proc, sweep)
        assert killed_after, f"the trial's process could not be killed mid-run; the sweep printed:\n{tail(log)}"
        assert proc.wait(timeout=420) == 0, tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
    (row,) = [r for r in csv.DictReader((sweep / "results.csv").open()) if r["role"] == "trial"]
    assert row["status"] == "TERMINATED" and row["steps"] == str(KILL_MAX_STEPS) and row["workers"] == "2"
    assert int(row["failures"]) == 1, row
    assert_resumed_from_newest_state(int(row["resumed_from_step"]), killed_after, every=4)


def assert_resumed_from_newest_state(resumed_from: int, newest_at_kill: int, every: int) -> None:
    """The retry continued from the newest resumable state (one written after the kill can only be newer: the
    killed process may have finished one more), not from an older one or from step 0."""
    assert newest_at_kill <= resumed_from < KILL_MAX_STEPS and resumed_from % every == 0, (resumed_from, newest_at_kill)


def newest_state_step(manifests: list[str]) -> int:
    """The newest step among `.../resume/step-N/MANIFEST.json` paths (0: none)."""
    return max((int(m) for m in re.findall(r"resume/step-(\d+)/MANIFEST\.json", " ".join(manifests))), default=0)


def kill_trial_process_once_resumable(proc: subprocess.Popen, sweep: Path) -> int:
    """SIGKILL the sweep's Tune trial process (`ray::ResourceTrainable...`) once a resumable state is written;
    the newest state's step when it was killed (0: never killed)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        trials = descendants_titled(proc.pid, "ray::ResourceTrainable")
        step = newest_state_step([str(p) for p in sweep.rglob("resume/*/MANIFEST.json")])
        if trials and step and kill_ray_actor(trials[0]):
            return step
        time.sleep(0.2)
    return 0


def train_worker_pids(cluster: LocalCluster) -> list[int]:
    """PIDs of the cluster's running Ray Train workers, by the title Ray gives an actor's process
    (`ray::RayTrainWorker...`), read from /proc: polling costs nothing (asking the dashboard's state API from a
    new process took seconds a poll, and one run on 2 busy cores never saw both workers before the trial ended)."""
    return cluster.processes_titled("ray::RayTrainWorker")


def test_a_killed_worker_fails_its_trial_which_resumes_from_its_checkpoint(cluster: LocalCluster, s3,
                                                                           tmp_path: Path) -> None:
    """The session's two-node cluster (1 CPU a node): the trial's 2 workers spread over both nodes."""
    uri = s3.uri("distributed")
    args = [*SHARED, f"max_steps={KILL_MAX_STEPS}", "sweep_name=killed-worker", "resources.workers_per_trial=2",
            "resources.placement=spread", "num_samples=1", "scheduler=fifo", f"ray.storage_path={uri}",
            f"ray.address={cluster.address}", "peft.r=8", "peft.alpha=16", "train.lr=0.01"]  # every key pinned
    env = {**cluster.env, "HOME": str(tmp_path)}
    log = tmp_path / "sweep.log"  # a file, not a pipe: a full pipe would block the sweep
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lora_tune.sweep", *args], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    store = Store.at(f"{uri}/killed-worker")
    killed, killed_after = None, 0
    deadline = time.monotonic() + 400
    try:
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            killed_after = newest_state_step(store.files())
            pids = train_worker_pids(cluster) if killed_after else []
            if len(pids) == 2 and kill_ray_actor(pids[1]):
                killed = pids[1]
            time.sleep(0.5)
        assert killed, f"no worker could be killed mid-trial; the sweep printed:\n{tail(log)}"
        assert proc.wait(timeout=900) == 0, tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
    (row,) = [r for r in csv.DictReader(io.StringIO(store.read_text("results.csv"))) if r["role"] == "trial"]
    assert row["status"] == "TERMINATED" and row["steps"] == str(KILL_MAX_STEPS) and row["workers"] == "2"
    assert int(row["failures"]) >= 1, row
    assert_resumed_from_newest_state(int(row["resumed_from_step"]), killed_after, every=8)  # 2 x eval_every
