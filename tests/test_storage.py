"""Sweeps on object storage and on nodes that share no disk, with real components: moto's S3 server on 127.0.0.1
and a two-node Ray cluster whose worker node has its own HOME, temp dir and working directory.

    .venv/bin/python -m pytest -q tests/test_storage.py       # the slow ones run sweeps on the cluster

The nodes of the test cluster run on one machine, so a test checks that no file of the sweep is written outside
the bucket (the laptop's and the worker node's folders hold no sweep file); Ray's own local staging copies
(/tmp/ray/session_*) are its business and are not checked.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_tune.storage import MANIFEST, StorageError, Store
from tests.conftest import REPO, recorded_finished
from tests.procs import kill_ray_actor, run_bounded
from tests.ray_cluster import CLUSTER_TOKEN, LocalCluster, laptop, laptop_env
from tests.s3_server import S3Server

TINY = ["experiment=tiny", "data.max_train_examples=32", "data.test_examples=4", "scheduler=fifo",
        "wandb.mode=offline", "verbose=0", "num_samples=4", "train.eval_every=4", "data.exact_match_examples=0"]


# --- the storage layer, locally and in a bucket -------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store.at(tmp_path / "sweep")
    s3: S3Server = request.getfixturevalue("s3")
    return Store.at(s3.uri(f"unit/{tmp_path.name}"))


def test_files_and_folders_round_trip(store: Store, tmp_path: Path) -> None:
    store.write_text("a/b.txt", "hello")
    store.write_json("c.json", {"x": 1})
    assert store.read_text("a/b.txt") == "hello" and store.read_json("c.json") == {"x": 1}
    assert store.files() == ["a/b.txt", "c.json"] and store.folders() == ["a"]
    local = tmp_path / "adapter"
    (local / "sub").mkdir(parents=True)
    (local / "weights.bin").write_bytes(os.urandom(1000))
    (local / "sub" / "config.json").write_text("{}")
    assert store.put_dir(local, "best/adapter") == 1002
    assert store.is_complete_dir("best/adapter")
    copied = store.get_dir("best/adapter", tmp_path / "back")
    assert (copied / "weights.bin").read_bytes() == (local / "weights.bin").read_bytes()
    store.delete("best")
    assert not store.exists("best")


def test_a_folder_without_its_manifest_or_not_matching_it_is_refused(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "adapter"
    local.mkdir()
    (local / "weights.bin").write_bytes(b"1234")
    store.put_dir(local, "best/adapter")
    store.write_bytes("best/adapter/weights.bin", b"12")  # a file changed after its manifest was written
    with pytest.raises(StorageError, match="does not match its manifest"):
        store.get_dir("best/adapter", tmp_path / "x")
    store.delete(f"best/adapter/{MANIFEST}")  # as a reader sees a folder whose writer died before the manifest
    with pytest.raises(StorageError, match="incomplete or missing"):
        store.get_dir("best/adapter", tmp_path / "y")
    with pytest.raises(StorageError, match="incomplete or missing"):
        store.local_dir("best/adapter")


def test_a_missing_bucket_is_a_one_line_error_before_anything_starts(s3: S3Server, tmp_path: Path) -> None:
    done = run_bounded([sys.executable, "-m", "lora_tune.sweep", *TINY, "ray.storage_path=s3://no-such-bucket/x"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "lora_tune: error: ray.storage_path: the bucket of s3://no-such-bucket/x/"
        f"{_sweep_name(done.stderr)} does not exist; accepted: an existing bucket (create it first), or a local path"]


def _sweep_name(stderr: str) -> str:
    return stderr.split("s3://no-such-bucket/x/", 1)[1].split(" ", 1)[0]


def test_a_cluster_with_a_local_storage_path_is_refused(tmp_path: Path) -> None:
    for address in ("http://127.0.0.1:8265", "127.0.0.1:6379", "auto"):
        done = run_bounded([sys.executable, "-m", "lora_tune.sweep", *TINY, f"ray.address={address}",
                            f"output_dir={tmp_path / 'runs'}"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("lora_tune: error: ray.storage_path: ") and "s3://bucket/prefix" in line
        assert "ray.shared_fs=true" in line
    assert not (tmp_path / "runs").exists()


# --- a sweep in a bucket, on a cluster whose nodes share no disk -------------------------------------------------


def driver_progress(cluster: LocalCluster, sweep: str) -> dict[str, dict]:
    """Each trial's last progress row, from the driver's local staging copy (test instrumentation: the driver
    runs on the head node of this one-machine cluster; the bucket gets these files when Ray syncs them)."""
    rows = {}
    for path in cluster.temp_dir.glob(f"session_*/artifacts/*/{sweep}/driver_artifacts/*/progress.csv"):
        with open(path, newline="") as handle:
            lines = list(csv.DictReader(handle))
        if lines:
            rows[lines[-1]["trial_id"]] = {**lines[-1], "folder": path.parent.name}
    return rows


def has_resume_state(store: Store, folder: str) -> bool:
    return any(store.is_complete_dir(f"{folder}/resume/{name}") for name in store.folders(f"{folder}/resume"))


def kill_a_trial_on(cluster: LocalCluster, store: Store, sweep: str, node: str, proc: subprocess.Popen,
                    timeout: float = 400) -> str:
    """SIGKILL a running trial on `node` once it has a resumable state in the bucket; returns its trial id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for trial_id, row in driver_progress(cluster, sweep).items():
            mid_run = row.get("node_id") == node and 8 <= int(row["step"]) < 48
            if mid_run and has_resume_state(store, row["folder"]) and kill_ray_actor(int(row["pid"])):
                return trial_id
        time.sleep(0.3)
    raise AssertionError(f"no trial on that node could be killed mid-run (exit {proc.poll()}); progress: "
                         f"{driver_progress(cluster, sweep)}")


def results_of(store: Store) -> dict[str, dict]:
    return {r["trial_id"]: r for r in csv.DictReader(io.StringIO(store.read_text("results.csv")))}


@pytest.fixture(scope="module")
def bucket_sweep(cluster: LocalCluster, s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny sweep submitted from a laptop through the Jobs API to ray.storage_path=s3://...; one of its trials
    SIGKILLed on the worker node mid-run."""
    home = tmp_path_factory.mktemp("laptop")
    uri = s3.uri("sweeps")
    args = [*TINY, "max_steps=48", "sweep_name=in-bucket", f"ray.storage_path={uri}",
            f"ray.address={cluster.dashboard}"]
    out, err = home / "stdout", home / "stderr"  # files, not pipes: a full pipe would stall the laptop
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "lora_tune.sweep", *args], cwd=REPO,
                                env=laptop_env(CLUSTER_TOKEN, home), stdout=stdout, stderr=stderr)
        store = Store.at(f"{uri}/in-bucket")
        try:
            killed = kill_a_trial_on(cluster, store, "in-bucket", cluster.node_ids()["worker"], proc)
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    return {"store": store, "killed": killed, "out": out.read_text(), "err": err.read_text(), "code": proc.returncode,
            "home": home, "uri": f"{uri}/in-bucket"}


@pytest.mark.slow
def test_every_file_of_the_sweep_is_an_object_in_the_bucket(bucket_sweep: dict, cluster: LocalCluster) -> None:
    assert bucket_sweep["code"] == 0, bucket_sweep["err"][-3000:]
    store = bucket_sweep["store"]
    names = set(store.files())
    for name in ("config.yaml", "results.csv", "results.json", "best/summary.json", "pending_links.json",
                 f"best/adapter/{MANIFEST}", "best/adapter/adapter_model.safetensors", "base_scores.json"):
        assert name in names, name
    assert any(n.startswith("wandb/offline-run-") and n.endswith(".wandb") for n in names)
    with_checkpoints = {n.split("/")[0] for n in names if n.endswith("/adapter/adapter_model.safetensors")
                        and "/checkpoint_" in n}
    assert len(with_checkpoints) == 4  # every trial's checkpoints are in the bucket
    assert bucket_sweep["out"].strip().splitlines()[-1].endswith(f"adapter {bucket_sweep['uri']}/best/adapter")
    summary = store.read_json("best/summary.json")
    assert summary["sweep"] == bucket_sweep["uri"] and summary["adapter"].startswith("s3://")
    # the job's driver runs in its unpacked working_dir, under the head node's temp dir: a sweep writing to local
    # disk would leave runs/in-bucket there
    working_dirs = list(cluster.temp_dir.glob("**/runtime_resources/working_dir_files/*"))
    assert working_dirs, "the job's working_dir was not found where the check below looks"
    for folder in [bucket_sweep["home"], *cluster.worker_homes, REPO / "runs", *working_dirs]:  # laptop, worker node
        assert not [p for p in Path(folder).rglob("*") if "in-bucket" in str(p)], folder


@pytest.mark.slow
def test_a_trial_killed_on_the_worker_node_resumes_from_the_bucket(bucket_sweep: dict) -> None:
    rows = results_of(bucket_sweep["store"])
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" and r["steps"] == "48" for r in rows.values())
    killed = rows[bucket_sweep["killed"]]
    assert int(killed["failures"]) >= 1 and int(killed["resumed_from_step"]) >= 8, killed
    others = [r for t, r in rows.items() if t != bucket_sweep["killed"]]
    assert all(r["failures"] == "0" and r["resumed_from_step"] == "0" for r in others)
    assert all(int(r["checkpoint_bytes"]) > 0 for r in rows.values())


@pytest.mark.slow
def test_report_export_and_fetch_read_the_bucket(bucket_sweep: dict, cluster: LocalCluster, tmp_path: Path) -> None:
    uri, home = bucket_sweep["uri"], bucket_sweep["home"]
    report = laptop([uri], None, home, module="lora_tune.report")
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip().splitlines()[-1] == f"lora_tune: report {uri}/report.md (plots next to it)"
    assert {"report.md", "curves.png"} <= set(bucket_sweep["store"].files())
    exported = laptop([uri], None, home, module="lora_tune.export")
    assert exported.returncode == 0, exported.stderr
    assert bucket_sweep["store"].is_complete_dir("best/merged")
    job_id = next(line.split("submitted job ")[1].split(" ")[0] for line in bucket_sweep["err"].splitlines()
                  if "submitted job" in line)
    fetched = laptop(["fetch", job_id, "--address", cluster.dashboard, "--dest", str(tmp_path)], CLUSTER_TOKEN, home,
                     module="lora_tune.jobs")
    assert fetched.returncode == 0, fetched.stderr
    local = tmp_path / "in-bucket"
    assert (local / "results.csv").read_text() == bucket_sweep["store"].read_text("results.csv")
    assert (local / "best" / "adapter" / "adapter_model.safetensors").is_file()
    assert not [p for p in local.rglob("*") if "checkpoint_" in str(p) or p.name.startswith("lora_trial_")]


@pytest.mark.slow
def test_a_killed_driver_resumes_from_the_bucket(cluster: LocalCluster, s3: S3Server, tmp_path: Path) -> None:
    uri = f"{s3.uri('resumed')}/driver"
    args = [*TINY, "max_steps=40", "sweep_name=driver", f"ray.storage_path={s3.uri('resumed')}",
            f"ray.address={cluster.address}"]
    env = {**cluster.env, "HOME": str(tmp_path)}  # a driver on a node: token auth on, the cluster's token
    driver = subprocess.Popen([sys.executable, "-m", "lora_tune.sweep", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = Store.at(uri)
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if len(recorded_finished(store)) >= 2:
                break
            time.sleep(0.3)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the driver ended by itself"
    assert not store.is_file("results.csv"), "the sweep finished before it could be killed"
    done_before = recorded_finished(store)
    assert done_before, "no trial had finished before the kill: the resume below would prove nothing"
    resumed = run_bounded([sys.executable, "-m", "lora_tune.sweep", f"resume={uri}",
                           f"ray.address={cluster.address}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = results_of(store)
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" and r["steps"] == "40" for r in rows.values())
    histories = {}
    for folder in store.folders():
        if store.is_file(f"{folder}/result.json"):
            lines = [json.loads(x) for x in store.read_text(f"{folder}/result.json").splitlines() if x.strip()]
            histories[lines[0]["trial_id"]] = [x["step"] for x in lines]
    for trial_id in done_before:  # a finished trial is not run again: its reports are not repeated
        assert histories[trial_id] == list(range(4, 41, 4)), histories[trial_id]
    assert resumed.stdout.strip().splitlines()[-1].startswith("lora_tune: winner ")
    assert not list(tmp_path.rglob("results.csv"))
