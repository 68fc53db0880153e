"""Sweeps on a real two-node Ray cluster through the Jobs API, with token auth; and the cluster/ manifests.

    .venv/bin/python -m pytest -q tests/test_cluster.py            # slow ones start a local 2-node cluster

The cluster tests start `ray start` nodes on 127.0.0.1 (tests/ray_cluster.py) with RAY_AUTH_MODE=token and run
`python -m lora_tune.sweep ... ray.address=http://127.0.0.1:<dashboard>` in a separate process, as a laptop would.
"""

from __future__ import annotations

import csv
import re
import secrets
import shlex
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lora_tune import jobs
from lora_tune.compose import compose_config
from lora_tune.config import ConfigError
from lora_tune.placement import unplaceable
from tests.ray_cluster import CLUSTER_TOKEN, LocalCluster, laptop

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "cluster"
TOKEN = CLUSTER_TOKEN
PLANTED = {"WANDB_API_KEY": "plantedwandb" + secrets.token_hex(14), "HF_TOKEN": "hf_planted" + secrets.token_hex(12)}
# the nodes of this cluster share this machine's disk: a shared mount, truly
# wandb.mode pinned: with the planted key, `auto` would go online (no W&B server here) and nothing would check it
TINY = ["experiment=tiny", "data.max_train_examples=32", "data.test_examples=4", "scheduler=fifo", "ray.shared_fs=true",
        "wandb.mode=offline"]


# --- the submission path, without a cluster ---------------------------------------------------------------------

def test_entrypoint_forwards_overrides_and_composes_on_the_cluster(tmp_path: Path) -> None:
    overrides = ["experiment=tiny", "ray.address=http://10.0.0.1:8265", "detach=true", "sweep_name=mine",
                 "peft.target_modules=[q_proj,v_proj]", "output_dir=elsewhere", "ray.shared_fs=true",
                 "data.path=/laptop/only/mine.jsonl"]
    command = jobs.entrypoint(overrides, "pinned", str(tmp_path / "out"), config_dirs=1,
                              data_path=str(REPO / "data" / "dates"))
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "lora_tune.sweep", f"--config-dir={jobs.USER_CONF}/0"]
    assert "ray.address=auto" in argv and "detach=true" not in argv and "sweep_name=pinned" in argv
    assert f"data.path='{REPO / 'data' / 'dates'}'" in argv and "data.path=/laptop/only/mine.jsonl" not in argv
    cfg = compose_config(argv[4:])  # what the cluster composes
    assert cfg.ray.address == "auto" and not cfg.detach and cfg.sweep_name == "pinned"
    assert cfg.output_dir == str(tmp_path / "out") and list(cfg.peft.target_modules) == ["q_proj", "v_proj"]


def test_cluster_output_defaults_to_the_head_nodes_home() -> None:
    assert jobs.cluster_output("runs", None) == "~/lora_tune/runs"
    assert jobs.cluster_output("/shared/runs", None) == "/shared/runs"
    assert jobs.cluster_output("runs", "/mnt/nfs/sweeps") == "/mnt/nfs/sweeps"


def test_job_keys_are_validated() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["detach=true", "attach=raysubmit_x", "ray.address=ftp://head"])
    text = "\n".join(err.value.problems)
    assert "ray.address: got 'ftp://head'; accepted: null, auto, HOST:PORT" in text
    assert "detach: needs a job address" in text and "attach: accepted: a job id" in text
    cfg = compose_config(["ray.address=http://127.0.0.1:8265", "detach=true", "ray.pip=['transformers>=5']",
                          "ray.storage_path=s3://bucket/sweeps"])
    assert jobs.is_job_address(cfg.ray.address) and list(cfg.ray.pip) == ["transformers>=5"]


def package(working_dir: Path, tmp_path: Path) -> set[str]:
    """The files Ray's own packager uploads for jobs.runtime_env (zip names)."""
    from ray._private.runtime_env.packaging import create_package

    env = jobs.runtime_env(None, working_dir)
    target = tmp_path / f"{working_dir.name}.zip"
    # .gitignore not consulted: the excludes alone must keep environments, results and secrets out.
    create_package(env["working_dir"], target, include_gitignore=False, excludes=env["excludes"])
    assert target.stat().st_size < 100 * 2**20, f"working_dir upload is {target.stat().st_size >> 20} MB"
    with zipfile.ZipFile(target) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def test_working_dir_ships_the_package_configs_and_data_without_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "my_conf"
    (conf / "search_space").mkdir(parents=True)
    (conf / "search_space" / "mine.yaml").write_text("r: {key: peft.r, values: [4]}\n")
    (conf / ".env").write_text("SECRET=1")
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "p", "answer": "a"}\n')
    with jobs.staged_env(None, [str(conf)], str(data)) as (env, data_path):
        shipped = package(Path(env["working_dir"]), tmp_path)
    assert data_path == f"{jobs.USER_DATA}/mine.jsonl" and data_path in shipped
    assert "lora_tune/sweep.py" in shipped and "conf/config.yaml" in shipped
    assert "lora_tune/model_configs/llama3_8b.json" in shipped
    assert any(name.startswith("data/dates/") for name in shipped)
    assert f"{jobs.USER_CONF}/0/search_space/mine.yaml" in shipped and f"{jobs.USER_CONF}/0/.env" not in shipped
    assert not any("__pycache__" in name or name.startswith((".venv/", "runs/", ".git/", "tests/")) for name in shipped)
    planted = tmp_path / "project"
    for name in (".env", ".env.local", "conf/.env", "id_rsa", "deploy.pem", "secrets.key", ".netrc",
                 "gcp-credentials.json", ".venv/lib/x.py", "runs/s/results.csv", "keep/ok.py"):
        (planted / name).parent.mkdir(parents=True, exist_ok=True)
        (planted / name).write_text("x")
    assert package(planted, tmp_path) == {"keep/ok.py"}


def test_credentials_are_forwarded_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    env = jobs.runtime_env(["peft"], REPO)
    assert env["env_vars"] == {"WANDB_API_KEY": "k" * 40} and env["pip"] == ["peft"]


def test_token_comes_from_the_environment_then_the_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert jobs.auth_token() == (None, "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_token()[0] == "from-home"
    (tmp_path / "tok").write_text("from-path\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.auth_token() == ("from-path", "RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_token() == ("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    with pytest.raises(jobs.JobError, match="RAY_AUTH_TOKEN_PATH: cannot read"):
        jobs.auth_token()


def test_unreachable_dashboard_is_one_line(tmp_path: Path) -> None:
    result = laptop(["experiment=tiny", f"output_dir={tmp_path}", "ray.address=http://127.0.0.1:9",
                     "ray.shared_fs=true"], token=None,
                    home=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("lora_tune: error: ray.address: cannot reach")


# --- manifests ---------------------------------------------------------------------------------------------------

def load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((CLUSTER_DIR / name).read_text()) if doc]


def gpu_group(spec: dict) -> dict:
    groups = spec["workerGroupSpecs"]
    gpu = [g for g in groups if "nvidia.com/gpu" in str(g["template"]["spec"]["containers"][0]["resources"])]
    assert gpu, "no worker group requests nvidia.com/gpu"
    return gpu[0]


def assert_token_auth(containers: list[dict]) -> None:
    for container in containers:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], "the token must come from a Secret"


def assert_object_store_and_shared_cache(containers: list[dict]) -> None:
    """Sweeps go to the bucket named by a Secret (ray.storage_path's default), credentials from it too; HF_TOKEN
    from a Secret; one Hugging Face cache on the shared volume."""
    for container in containers:
        env = {e["name"]: e for e in container.get("env", [])}
        for name in ("LORA_TUNE_STORAGE_PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
            assert "secretKeyRef" in env[name]["valueFrom"], name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env["HF_HOME"]["value"].startswith("/mnt/shared/") and "/mnt/shared" in mounts


@pytest.mark.parametrize("manifest", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_gpu_pods_mount_memory_backed_shared_memory(manifest: str) -> None:
    """A pod's /dev/shm is 64 MB unless a memory-backed volume is mounted there: Ray's object store and torch's
    dataloader workers need far more (Ray warns and falls back to disk, NCCL can fail)."""
    (doc,) = [d for d in load_all(manifest) if d["kind"] in ("RayCluster", "RayJob")]
    pod = gpu_group(doc["spec"].get("rayClusterSpec", doc["spec"]))["template"]["spec"]
    memory_volumes = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
    for container in pod["containers"]:
        assert any(m["mountPath"] == "/dev/shm" and m["name"] in memory_volumes for m in container["volumeMounts"])


def test_storage_path_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_TUNE_STORAGE_PATH", "s3://team-bucket/sweeps")
    assert compose_config([]).ray.storage_path == "s3://team-bucket/sweeps"
    monkeypatch.delenv("LORA_TUNE_STORAGE_PATH")
    assert compose_config([]).ray.storage_path is None


def test_launcher_yaml_has_gpu_workers_autoscaling_docker_and_auth() -> None:
    (config,) = load_all("launcher-aws.yaml")
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type", "docker",
                "max_workers", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    assert config["provider"]["type"] == "aws" and config["docker"]["image"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(t["min_workers"] <= t["max_workers"] for t in gpu)
    assert all("node_config" in t for t in types.values())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    run_options = " ".join(config["docker"]["run_options"])
    assert re.search(r"--env LORA_TUNE_STORAGE_PATH=s3://\S+", run_options)  # sweeps in S3 by default
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())  # the bucket through a role
    assert "sudo" not in " ".join(config.get("setup_commands", []))  # the container has no sudo
    text = (CLUSTER_DIR / "launcher-aws.yaml").read_text()
    assert "# initialization_commands:" in text and "--volume /mnt/efs:/mnt/efs" in text  # host mount, passed in


def test_kuberay_raycluster_has_a_gpu_group_and_token_auth() -> None:
    docs = load_all("kuberay-raycluster.yaml")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["apiVersion"].startswith("ray.io/") and cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["rayVersion"] and spec["headGroupSpec"]["rayStartParams"] is not None
    group = gpu_group(spec)
    assert group["groupName"] and "rayStartParams" in group
    # idle GPUs cost: it scales to zero, and the autoscaler can add workers (KubeRay: min <= replicas <= max)
    assert group["minReplicas"] == group["replicas"] == 0 < group["maxReplicas"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert_token_auth(head + group["template"]["spec"]["containers"])
    assert_object_store_and_shared_cache(head + group["template"]["spec"]["containers"])
    text = (CLUSTER_DIR / "kuberay-raycluster.yaml").read_text()
    assert "kubectl create secret generic lora-tune-ray-token" in text
    assert "kubectl create secret generic lora-tune-storage" in text and "ray.shared_fs=true" in text
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kuberay_rayjob_submits_the_sweep() -> None:
    (job,) = [d for d in load_all("kuberay-rayjob.yaml") if d["kind"] == "RayJob"]
    assert job["apiVersion"].startswith("ray.io/")
    spec = job["spec"]
    assert "lora_tune.sweep" in spec["entrypoint"] and "ray.address=auto" in spec["entrypoint"]
    group = gpu_group(spec["rayClusterSpec"])
    assert 1 <= group["minReplicas"] <= group["replicas"] < group["maxReplicas"]  # a GPU at once, room to grow
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0  # no idle GPU cluster
    containers = (spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
                  + group["template"]["spec"]["containers"])
    assert_token_auth(containers)
    assert_object_store_and_shared_cache(containers)
    assert "storage_path=/" not in spec["entrypoint"]  # the bucket from the Secret, not a pod's disk


def shipped_gpu_nodes() -> dict[str, tuple[dict[str, float], int]]:
    """Each shipped cluster's GPU worker node: (what Ray may schedule on one node, how many nodes at most)."""
    nodes = {}
    (launcher,) = load_all("launcher-aws.yaml")
    for name, node in launcher["available_node_types"].items():
        if node.get("resources", {}).get("GPU", 0) >= 1:
            nodes[f"launcher-aws {name}"] = ({k: float(v) for k, v in node["resources"].items()}, node["max_workers"])
    for manifest in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        for doc in [d for d in load_all(manifest) if d["kind"] in ("RayCluster", "RayJob")]:
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            group = gpu_group(spec)
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            nodes[f"{manifest} {group['groupName']}"] = (
                {"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"])}, group["maxReplicas"])
    return nodes


@pytest.mark.parametrize("group", sorted(p.stem for p in (REPO / "conf" / "resources").glob("*.yaml")))
def test_every_shipped_resource_group_can_be_placed_on_every_shipped_cluster(group: str) -> None:
    """A trial's workers are a placement group of one bundle each: strict_pack needs them all on one node, pack
    and spread may use several. A group Ray can never place leaves the trial waiting forever (resources=multi_gpu
    used strict_pack, two GPUs on one node, on clusters of one-GPU nodes)."""
    res = compose_config([f"resources={group}"]).resources
    for cluster, (node, max_nodes) in shipped_gpu_nodes().items():
        assert unplaceable(res, [node] * max_nodes) is None, (group, cluster)


def test_dockerfile_pins_a_cuda_base_and_installs_the_project() -> None:
    text = (CLUSTER_DIR / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert "cuda" in base.lower() and ":" in base and "latest" not in base
    assert re.search(r"torch==\d", text) and re.search(r"ray\[[^\]]*default[^\]]*\]==\d", text)
    assert "COPY" in text and re.search(r"pip install[^\n]*--no-deps[^\n]*\.", text)


# --- a real two-node cluster ---------------------------------------------------------------------------------------

def job_id_of(stderr: str) -> str:
    return re.search(r"submitted job (raysubmit_\w+)", stderr).group(1)


@pytest.mark.slow
def test_without_the_token_the_submission_stops_at_once(cluster: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    for token, expected in ((None, "requires a token; set RAY_AUTH_TOKEN"), ("wrong-token", "refused the token")):
        result = laptop([*TINY, f"output_dir={out}", f"ray.address={cluster.dashboard}"], token, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[-1]]
        assert expected in result.stderr and "wrong-token" not in result.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def attached_sweep(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """4 trials of the tiny model, submitted and followed to the end, with credentials planted in the env."""
    home = tmp_path_factory.mktemp("laptop")
    out = home / "runs"
    result = laptop([*TINY, f"output_dir={out}", "sweep_name=two-nodes", f"ray.address={cluster.dashboard}"],
                    TOKEN, home, extra_env=PLANTED)
    return result, out / "two-nodes", home


@pytest.mark.slow
def test_sweep_runs_on_both_nodes_and_streams_its_logs(attached_sweep: tuple) -> None:
    result, sweep_dir, _ = attached_sweep
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"Trial lora_trial_\w+ (started|completed)", result.stdout)  # Tune's output, streamed
    assert result.stdout.strip().splitlines()[-1].startswith("lora_tune: winner ")
    with open(sweep_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)
    assert len({r["node_id"] for r in rows}) == 2, "trials did not run on both nodes"
    assert (sweep_dir / "best" / "adapter" / "adapter_model.safetensors").is_file()
    # each trial's W&B run, recorded offline on whichever node ran it, ends up in the sweep's folder; and the sweep's
    assert len(list(sweep_dir.glob("wandb/offline-run-*/*.wandb"))) == len(rows) + 1


@pytest.mark.slow
def test_no_credential_reaches_files_or_output(attached_sweep: tuple) -> None:
    result, sweep_dir, _ = attached_sweep
    secrets_ = [TOKEN, *PLANTED.values()]
    for text in (result.stdout, result.stderr):
        assert not [s for s in secrets_ if s in text]
    files = [p for p in sweep_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    leaks = [(str(p), s[:6]) for p in files for s in secrets_ if s.encode() in p.read_bytes()]
    assert not leaks


@pytest.mark.slow
def test_fetch_copies_the_sweep_dir_to_the_laptop(cluster: LocalCluster, attached_sweep: tuple,
                                                   tmp_path: Path) -> None:
    result, sweep_dir, home = attached_sweep
    job_id = job_id_of(result.stderr)
    fetched = laptop(["fetch", job_id, "--address", cluster.dashboard, "--dest", str(tmp_path)], TOKEN, home,
                     module="lora_tune.jobs")
    assert fetched.returncode == 0, fetched.stderr
    local = tmp_path / "two-nodes"
    assert fetched.stdout.strip() == str(local)
    assert (local / "results.csv").read_text() == (sweep_dir / "results.csv").read_text()
    assert (local / "best" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (sweep_dir / "best" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert not list(local.rglob("checkpoint_*"))


@pytest.mark.slow
def test_attach_follows_a_job_from_its_start_to_its_winner(cluster: LocalCluster, attached_sweep: tuple) -> None:
    """attach=<job id> streams the job's log from its start (here a job that has ended: the whole log) and exits
    as the job did; an unknown id is one line."""
    result, _, home = attached_sweep
    job_id = job_id_of(result.stderr)
    attached = laptop([f"ray.address={cluster.dashboard}", f"attach={job_id}"], TOKEN, home)
    assert attached.returncode == 0, attached.stderr[-3000:]
    assert f"Running entrypoint for job {job_id}" in attached.stdout  # the log from its start
    assert attached.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]  # the winner line
    unknown = laptop([f"ray.address={cluster.dashboard}", "attach=raysubmit_nope"], TOKEN, home)
    assert unknown.returncode == 2 and "job: not found" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest.mark.slow
def test_a_detached_job_runs_until_the_stop_command_ends_it(cluster: LocalCluster, tmp_path: Path) -> None:
    args = [*TINY, "num_samples=1", "max_steps=100000", f"output_dir={tmp_path / 'runs'}", "sweep_name=long",
            f"ray.address={cluster.dashboard}", "detach=true"]
    detached = laptop(args, TOKEN, tmp_path)  # detach=true: prints the job id and returns at once
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip().splitlines()[-1]
    assert job_id == job_id_of(detached.stderr) and "winner" not in detached.stdout
    status = ""
    for _ in range(120):
        status = laptop(["status", job_id, "--address", cluster.dashboard], TOKEN, tmp_path,
                        module="lora_tune.jobs").stdout.strip()
        if status == "RUNNING":
            break
        time.sleep(1)
    assert status == "RUNNING"
    assert poll(lambda: trial_processes(cluster), 300), "the job's trial never started"
    stopped = laptop(["stop", job_id, "--address", cluster.dashboard], TOKEN, tmp_path, module="lora_tune.jobs")
    assert stopped.returncode == 0 and f"job {job_id} STOPPED" in stopped.stderr

    def job_status() -> str:
        return laptop(["status", job_id, "--address", cluster.dashboard], TOKEN, tmp_path,
                      module="lora_tune.jobs").stdout.strip()

    assert poll(lambda: job_status() == "STOPPED", 60), job_status()
    assert poll(lambda: not trial_processes(cluster), 60), f"trial processes left running: {trial_processes(cluster)}"


def trial_processes(cluster: LocalCluster) -> list[int]:
    """The cluster's processes running a trial (a Tune trainable actor) or a sweep driver."""
    return [pid for prefix in ("ray::ResourceTrainable", "ray::lora_trial") for pid in cluster.processes_titled(prefix)]


def poll(condition: Callable[[], object], timeout_s: float) -> bool:
    """True as soon as `condition()` is true, False if it is still false after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
