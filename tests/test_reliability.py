"""Chaos tests with real processes: killed trials resume from checkpoints, a killed driver resumes the sweep."""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_tune.storage import Store
from tests.conftest import recorded_finished, steps_reported
from tests.procs import kill_ray_actor, run_bounded
from tests.ray_cluster import alive_nodes

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def ray_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real single-node Ray head on 127.0.0.1 with token auth, in its own process group so the test stops
    exactly it. The token reaches the sweep (a child process) through the environment."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    port, dashboard = free_port(), free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_for_port(port)
        wait_for_port(dashboard)
        headers = {"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"}
        deadline = time.monotonic() + 60  # the raylet registers shortly after the GCS answers
        while alive_nodes(f"http://127.0.0.1:{dashboard}", headers) < 1:
            assert time.monotonic() < deadline and head.poll() is None, "the Ray head's raylet never came up"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def sweep_command(out: Path, *overrides: str) -> list[str]:
    """The sweep, on local Ray or (with a ray.address) on a cluster whose nodes all run on this machine: they
    share its disk, a shared mount truly (ray.shared_fs=true)."""
    return [sys.executable, "-m", "lora_tune.sweep", "experiment=tiny", f"output_dir={out}", "sweep_name=chaos",
            "wandb.mode=disabled", "scheduler=fifo", "data.max_train_examples=32", "data.exact_match_examples=0",
            "train.eval_every=4", "ray.shared_fs=true", *overrides]


def progress(sweep_dir: Path) -> dict[str, dict]:
    """Last progress row of each trial (Ray Tune writes progress.csv per trial dir)."""
    rows = {}
    for path in sweep_dir.glob("lora_trial_*/progress.csv"):
        with open(path, newline="") as handle:
            lines = list(csv.DictReader(handle))
        if lines:
            rows[lines[-1]["trial_id"]] = lines[-1]
    return rows


def results(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_killed_trials_resume_from_their_checkpoints(ray_head: str, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    log = tmp_path / "sweep.log"  # a file, not a pipe: a pipe nobody reads blocks the sweep once it is full
    max_steps = 48  # a trial is killed between its first checkpoint (step 8) and 8 steps before its end
    sweep = subprocess.Popen(sweep_command(out, "num_samples=6", f"max_steps={max_steps}", f"ray.address={ray_head}"),
                             cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    killed: dict[str, int] = {}
    deadline = time.monotonic() + 300
    try:
        while len(killed) < 3 and time.monotonic() < deadline and sweep.poll() is None:
            for trial_id, row in progress(out / "chaos").items():
                step, pid = int(row["step"]), int(row["pid"])
                if trial_id not in killed and 8 <= step < max_steps - 8 and len(killed) < 3 and kill_ray_actor(pid):
                    killed[trial_id] = step
            time.sleep(0.5)
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert len(killed) == 3, f"could not kill 3 running trials: {killed}"
    assert sweep.returncode == 0, log.read_text()[-3000:]
    rows = {r["trial_id"]: r for r in results(out / "chaos")}
    assert len(rows) == 6 and all(r["status"] == "TERMINATED" and r["steps"] == str(max_steps) for r in rows.values())
    for trial_id in killed:
        assert int(rows[trial_id]["resumed_from_step"]) > 0, rows[trial_id]
        assert int(rows[trial_id]["failures"]) >= 1
    untouched = [r for t, r in rows.items() if t not in killed]
    assert all(int(r["failures"]) == 0 and r["resumed_from_step"] == "0" for r in untouched)


def test_killed_driver_resumes_and_accounts_for_every_trial_once(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    driver = subprocess.Popen(sweep_command(out, "num_samples=6", "max_steps=32"), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if (out / "chaos").is_dir() and len(recorded_finished(Store.at(str(out / "chaos")))) >= 2:
                break
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    assert not (out / "chaos" / "results.csv").exists(), "the sweep finished before it could be killed"
    done_before = recorded_finished(Store.at(str(out / "chaos")))  # what the resume knows to have finished
    assert done_before, "no trial had finished before the kill: the resume below would prove nothing"
    resumed = run_bounded([sys.executable, "-m", "lora_tune.sweep", f"resume={out / 'chaos'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = results(out / "chaos")
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert all(r["status"] == "TERMINATED" and r["steps"] == "32" for r in rows)
    for trial_id in done_before:  # a trial that had finished is not run again: each step reported once
        assert steps_reported(out / "chaos", trial_id) == list(range(4, 33, 4)), trial_id
    assert (out / "chaos" / "best" / "adapter" / "adapter_model.safetensors").exists()
    assert resumed.stdout.strip().splitlines()[-1].startswith("lora_tune: winner ")


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL one `ray start` node: its process group and every descendant (its raylet and workers)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        descendants = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    proc.wait()


def test_losing_a_worker_node_mid_sweep_reschedules_its_trials(tmp_path: Path) -> None:
    from tests.ray_cluster import start_cluster

    cluster = start_cluster(nodes=2, cpus_per_node=1, token=secrets.token_hex(16))
    out, log = tmp_path / "runs", tmp_path / "sweep.log"
    max_steps = 96  # the node dies once a trial on each node is past step 8 and 24 or more steps from its end
    try:
        sweep = subprocess.Popen(
            sweep_command(out, "num_samples=4", f"max_steps={max_steps}", f"ray.address=127.0.0.1:{cluster.gcs_port}"),
            cwd=REPO, env=cluster.env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sweep.poll() is None:
            running = [r for r in progress(out / "chaos").values() if 8 <= int(r["step"]) < max_steps - 24]
            if len({r["node_id"] for r in running}) == 2:  # a trial on each node has checkpointed
                break
            time.sleep(0.5)
        head_node = cluster_head_node_id(cluster)
        kill_node(cluster.procs[1])
        sweep.wait(timeout=900)
    finally:
        cluster.stop()
    assert sweep.returncode == 0, log.read_text()[-3000:]
    rows = results(out / "chaos")
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" and r["steps"] == str(max_steps) for r in rows)
    moved = [r for r in rows if int(r["failures"]) >= 1]
    assert moved, "no trial was running on the lost node"
    assert all(r["node_id"] == head_node and int(r["resumed_from_step"]) > 0 for r in moved)


def cluster_head_node_id(cluster) -> str:
    """The head's node id, from the dashboard (the head is the node started with --head)."""
    import requests

    reply = requests.get(f"{cluster.dashboard}/nodes?view=summary", headers=cluster.headers(), timeout=10)
    nodes = reply.json()["data"]["summary"]
    return next(n["raylet"]["nodeId"] for n in nodes if n["raylet"].get("isHeadNode"))
