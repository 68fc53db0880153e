"""Run a sweep on a remote Ray cluster through the Ray Jobs API, and manage the job from a laptop.

    python -m lora_tune.sweep experiment=tiny ray.address=http://HEAD:8265            # submit, stream the logs
    python -m lora_tune.sweep ray.address=http://HEAD:8265 detach=true                # submit, print the job id
    python -m lora_tune.sweep ray.address=http://HEAD:8265 attach=raysubmit_XXXX      # stream a submitted job
    python -m lora_tune.jobs stop raysubmit_XXXX --address http://HEAD:8265           # stop it
    python -m lora_tune.jobs status raysubmit_XXXX --address http://HEAD:8265
    python -m lora_tune.jobs fetch raysubmit_XXXX --address http://HEAD:8265 --dest runs   # copy the sweep dir here

The job ships lora_tune (the package with its configs and task data), your `--config-dir` folders and a local
`data.path` as its `working_dir` (never .venv, runs/, caches, .git, .env or key files) and runs
`python -m lora_tune.sweep <your overrides> ray.address=auto` on the head node. Token authentication: the token
comes from RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (Ray's own order)
and is sent as an `Authorization: Bearer` header; it is never printed or written anywhere.
`--address` defaults to $RAY_ADDRESS when that is an http(s) URL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import logging
import os
import shlex
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_tune import __version__
from lora_tune.config import is_uri
from lora_tune.errors import fail
from lora_tune.shipped import CONF_DIR, DATA_DIR, IN_CHECKOUT, PACKAGE_DIR

# Never shipped to the cluster (gitignore syntax, relative to the project): environments, results, caches,
# version control, and anything that may hold a credential.
EXCLUDES = [
    ".git", ".venv", "venv", "env/", "runs/", "outputs/", "multirun/", "wandb/", "__pycache__", "*.pyc",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", ".benchmarks", "*.egg-info", ".cache", ".whl", "*.whl",
    ".ipynb_checkpoints", ".env", ".env.*", "*.env", ".envrc", ".netrc", ".ray", "auth_token", "*.pem",
    "*.key", "*.p12", "*.pfx", "*.jks", "id_rsa*", "id_ed25519*", "id_ecdsa*", "*credentials*", "*.secret",
    ".git-credentials", ".pypirc", "*.tfstate", "kubeconfig*",
]
# Credentials the job may need on the cluster (W&B online, gated hub models); forwarded only when set,
# never printed.
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_BASE_URL", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# Overrides the laptop decides for the cluster run.
LAPTOP_ONLY_KEYS = {"ray.address", "detach", "attach", "sweep_name", "output_dir"}
CLUSTER_OUTPUT_ROOT = "~/lora_tune"  # relative output_dir on the cluster: under the head node's home
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ARCHIVE_BEGIN, ARCHIVE_END = "LORA_TUNE_ARCHIVE_BEGIN", "LORA_TUNE_ARCHIVE_END"
MAX_FETCH_BYTES = 256 * 2**20
MAX_SHIPPED_DATA_BYTES = 100 * 2**20  # a local data.path larger than this belongs in object storage
USER_CONF, USER_DATA = "user_conf", "user_data"  # where the job's working_dir holds what the laptop ships


class JobError(Exception):
    """A problem to report on one line (`key: what is wrong; accepted: ...`), exit 2."""


def is_job_address(address: str | None) -> bool:
    """http(s)://HOST:PORT is a dashboard: submit through the Jobs API."""
    return bool(address) and str(address).startswith(("http://", "https://"))


def auth_token() -> tuple[str | None, str]:
    """(token, where it came from), in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if path := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        try:
            return Path(path).expanduser().read_text().strip(), "RAY_AUTH_TOKEN_PATH"
        except OSError:
            raise JobError(f"RAY_AUTH_TOKEN_PATH: cannot read {path}; accepted: a file holding the cluster's "
                           "token") from None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip(), str(default)
    return None, ""


@contextlib.contextmanager
def cluster_errors(address: str, source: str) -> Iterator[None]:
    """Ray's multi-line HTTP / auth errors -> one JobError line (the token itself never appears)."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        if "Authentication required" in str(exc) or not source:
            raise JobError(f"ray.address: the cluster at {address} requires a token; set RAY_AUTH_TOKEN "
                           "(or RAY_AUTH_TOKEN_PATH to a file holding it)") from None
        raise JobError(f"ray.address: the cluster at {address} refused the token from {source}; set "
                       "RAY_AUTH_TOKEN to the cluster's token") from None
    except ConnectionError:
        raise JobError(f"ray.address: cannot reach a Ray dashboard at {address}; accepted: http://HOST:PORT of "
                       "a running cluster's dashboard (e.g. through `kubectl port-forward` or an SSH tunnel)") from None
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        if "does not exist" in text or "404" in text:
            raise JobError(f"job: not found on {address}; accepted: a job id from `ray job list` "
                           "or from detach=true") from None
        raise JobError(f"ray.address: the cluster at {address} answered: {text[:300]}") from None


def quiet_ray_client_logs() -> None:
    """Ray's per-file packaging notes and default-exclude warnings are noise on the submitter's terminal."""
    for name in ("ray._private.runtime_env", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Cluster:
    """A JobSubmissionClient with the token attached and errors made one line."""

    def __init__(self, address: str):
        self.address = address.rstrip("/")
        token, self.source = auth_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        from ray.job_submission import JobSubmissionClient

        quiet_ray_client_logs()

        with self.errors():
            self.client = JobSubmissionClient(self.address, headers=headers)

    def errors(self) -> contextlib.AbstractContextManager:
        return cluster_errors(self.address, self.source)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.errors():
            return getattr(self.client, method)(*args, **kwargs)


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def cluster_output(output_dir: str, storage_path: str | None) -> str:
    """Where the sweep is written on the cluster: storage_path, an absolute output_dir, or under ~/lora_tune."""
    if storage_path:
        return storage_path
    if output_dir.startswith(("/", "~")):
        return output_dir
    return f"{CLUSTER_OUTPUT_ROOT}/{output_dir}"


def entrypoint(overrides: list[str], sweep_name: str, output: str, config_dirs: int = 0,
               data_path: str | None = None) -> str:
    """The cluster's command: the user's overrides, joining the cluster the job runs on, with the shipped config
    dirs and data (relative to the job's working_dir)."""
    laptop_only = LAPTOP_ONLY_KEYS | ({"data.path"} if data_path else set())
    kept = [o for o in overrides if override_key(o) not in laptop_only]
    pinned = ["ray.address=auto", f"sweep_name={sweep_name}", f"output_dir='{output}'"]
    pinned += [f"data.path='{data_path}'"] if data_path else []
    dirs = [f"--config-dir={USER_CONF}/{i}" for i in range(config_dirs)]
    return " ".join(["python", "-m", "lora_tune.sweep", *dirs, *(shlex.quote(o) for o in kept + pinned)])


def user_modules(metrics: list[str] | None) -> list[Path]:
    """The local files of the user's scorers (eval.metrics' module:function) found in this working directory."""
    found = []
    for spec in metrics or []:
        if ":" not in spec:
            continue
        top = spec.split(":", 1)[0].split(".", 1)[0]
        for candidate in (Path(f"{top}.py"), Path(top)):
            if candidate.exists():
                found.append(candidate.resolve())
    return found


def stage_working_dir(stage: Path, config_dirs: list[str], data_path: str | None,
                      modules: list[Path] | None = None) -> str | None:
    """Assemble the job's working_dir in `stage`: the package (with conf/ and data/ beside it in a checkout),
    the user's config dirs, a local data.path and the user's scorer modules (at the top, importable as on the
    laptop). Returns the data path relative to the working_dir, if shipped."""
    import shutil

    ignore = shutil.ignore_patterns(*EXCLUDES)
    shutil.copytree(PACKAGE_DIR, stage / "lora_tune", ignore=ignore)
    if IN_CHECKOUT:
        shutil.copytree(CONF_DIR, stage / "conf", ignore=ignore)
        shutil.copytree(DATA_DIR, stage / "data", ignore=ignore)
    for i, folder in enumerate(config_dirs):
        shutil.copytree(Path(folder).expanduser(), stage / USER_CONF / str(i), ignore=ignore)
    for module in modules or []:
        (shutil.copytree(module, stage / module.name, ignore=ignore) if module.is_dir()
         else shutil.copy2(module, stage / module.name))
    if not data_path:
        return None
    source = Path(data_path).expanduser()
    size = sum(p.stat().st_size for p in source.rglob("*")) if source.is_dir() else source.stat().st_size
    if size > MAX_SHIPPED_DATA_BYTES:
        raise JobError(f"data.path: {source} is {size >> 20} MB, more than a job ships ({MAX_SHIPPED_DATA_BYTES >> 20} "
                       "MB); accepted: a hub dataset id, or a path on the cluster's shared storage")
    target = stage / USER_DATA / source.name
    target.parent.mkdir(parents=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=ignore)
    else:
        shutil.copy2(source, target)
    return f"{USER_DATA}/{source.name}"


@contextlib.contextmanager
def staged_env(pip: list[str] | None = None, config_dirs: list[str] | None = None, data_path: str | None = None,
               modules: list[Path] | None = None) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(the job's runtime_env, the shipped data path) with its working_dir staged in a temp folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lora_tune-job-") as stage:
        shipped = stage_working_dir(Path(stage), list(config_dirs or []), data_path, modules)
        yield runtime_env(pip, Path(stage)), shipped


def shipped_data_path(path: str) -> str | None:
    """A data.path that exists on this machine and must travel with the job (not a shipped task or a hub id)."""
    return path if not path.startswith("embedded:") and not is_uri(path) and Path(path).expanduser().exists() else None


def runtime_env(pip: list[str] | None, working_dir: Path) -> dict[str, Any]:
    """The project as working_dir (secrets, environments and results excluded), optional pip deps, credentials."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(EXCLUDES)}
    if pip:
        env["pip"] = list(pip)
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if forwarded:
        env["env_vars"] = forwarded
    return env


def submit(overrides: list[str], cfg: Any, config_dirs: list[str] | None = None) -> int:
    """Submit the sweep described by the Hydra `overrides` (cfg: the validated SweepConfig; config_dirs: the
    user's --config-dir folders, shipped with it); returns the exit code."""
    cluster = Cluster(cfg.ray.address)
    if getattr(cfg, "attach", None):
        return follow(cluster, cfg.attach)
    output = cluster_output(cfg.output_dir, cfg.ray.storage_path)
    modules = user_modules(cfg.eval.metrics)
    with staged_env(cfg.ray.pip, config_dirs, shipped_data_path(cfg.data.path), modules) as (env, data_path):
        command = entrypoint(overrides, cfg.sweep_name, output, len(config_dirs or []), data_path)
        metadata = {"lora_tune_sweep_name": cfg.sweep_name, "lora_tune_output": output,
                    "lora_tune_version": __version__}
        job_id = cluster.call("submit_job", entrypoint=command, runtime_env=env, metadata=metadata)
    note(f"submitted job {job_id} to {cluster.address}: {command}")
    if cfg.detach:
        note(f"detached; follow it with `python -m lora_tune.sweep ray.address={cluster.address} attach={job_id}`, "
             f"stop it with `python -m lora_tune.jobs stop {job_id} --address {cluster.address}`")
        print(job_id, flush=True)
        return 0
    return follow(cluster, job_id)


def note(message: str) -> None:
    print(f"lora_tune: {message}", file=sys.stderr, flush=True)


async def stream_logs(cluster: Cluster, job_id: str) -> None:
    with cluster.errors():
        async for chunk in cluster.client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()


def follow(cluster: Cluster, job_id: str) -> int:
    """Stream the job's logs until it ends; Ctrl-C asks whether to stop the job or detach."""
    cluster.call("get_job_status", job_id)  # an unknown id fails here, on one line
    note(f"following job {job_id} (Ctrl-C: stop it or detach)")
    try:
        asyncio.run(stream_logs(cluster, job_id))
    except KeyboardInterrupt:
        return interrupted(cluster, job_id)
    return outcome(cluster, wait(cluster, job_id))


def ask(prompt: str) -> str:
    """The user's answer; detach when nobody can answer (no terminal, EOF, a second Ctrl-C)."""
    if not sys.stdin.isatty():
        return "d"
    try:
        return input(prompt).strip().lower() or "d"
    except (EOFError, KeyboardInterrupt):
        return "d"


def interrupted(cluster: Cluster, job_id: str) -> int:
    answer = ask("\nlora_tune: stop the job on the cluster, or detach and leave it running? [s]top/[d]etach: ")
    if answer.startswith("s"):
        return stop(cluster, job_id)
    note(f"detached from {job_id}; it keeps running. Re-attach: `python -m lora_tune.sweep "
         f"ray.address={cluster.address} attach={job_id}`")
    return 0


def wait(cluster: Cluster, job_id: str, timeout_s: float = 60.0) -> Any:
    """The job's info once it reaches a terminal state (logs can end a moment before the status does)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = cluster.call("get_job_info", job_id)
        if str(info.status) in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def outcome(cluster: Cluster, info: Any) -> int:
    """0 when the job succeeded (the sweep's summary was its last line); else one line and its exit code."""
    if str(info.status) == "SUCCEEDED":
        return 0
    message = (info.message or "").strip().splitlines()
    note(f"job {info.submission_id} {info.status}: {message[0] if message else 'no message'}")
    return info.driver_exit_code or 1


def stop(cluster: Cluster, job_id: str) -> int:
    cluster.call("stop_job", job_id)
    info = wait(cluster, job_id, timeout_s=120.0)
    note(f"job {job_id} {info.status}")
    return 0 if str(info.status) in TERMINAL else 1


def keep_in_archive(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Results, adapter, summary, W&B offline runs; not checkpoints, nor links (W&B's point outside the dir)."""
    if "/checkpoint_" in f"/{member.name}" or member.issym() or member.islnk():
        return None
    return member


def pack(sweep_dir: str) -> int:
    """On the cluster: print the sweep dir (without checkpoints) as a base64 tar.gz between markers."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        fail(f"{root} does not exist on the cluster")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root, arcname=".", filter=keep_in_archive)
    if buffer.tell() > MAX_FETCH_BYTES:
        fail(f"{root} is {buffer.tell() >> 20} MB without checkpoints; copy it from ray.storage_path instead")
    print(ARCHIVE_BEGIN)
    sys.stdout.write(base64.encodebytes(buffer.getvalue()).decode())
    print(ARCHIVE_END, flush=True)
    return 0


def fetch(cluster: Cluster, job_id: str, dest: Path) -> Path:
    """Copy a sweep job's results (results, best adapter, summary, W&B offline runs; no checkpoints) into
    dest/<sweep_name>: straight from object storage when the sweep lives there, else through a packing job."""
    meta = cluster.call("get_job_info", job_id).metadata or {}
    if "lora_tune_sweep_name" not in meta:
        raise JobError(f"job: {job_id} is not a lora_tune sweep job; accepted: a job id submitted by lora_tune.sweep")
    remote = f"{meta['lora_tune_output'].rstrip('/')}/{meta['lora_tune_sweep_name']}"
    target = dest / meta["lora_tune_sweep_name"]
    if is_uri(remote):
        return download_sweep(remote, target)
    with staged_env() as (env, _):
        pack_id = cluster.call("submit_job", entrypoint=f"python -m lora_tune.jobs pack {shlex.quote(remote)}",
                               runtime_env=env, metadata={"lora_tune_fetch": job_id})
    info = wait(cluster, pack_id, timeout_s=600.0)
    logs = cluster.call("get_job_logs", pack_id)
    if str(info.status) != "SUCCEEDED" or ARCHIVE_BEGIN not in logs:
        last = (logs.strip().splitlines() or ["no output"])[-1]
        raise JobError(f"job: cannot fetch {remote} from the cluster ({last})")
    payload = logs.split(ARCHIVE_BEGIN, 1)[1].split(ARCHIVE_END, 1)[0]
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(payload)), mode="r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, ValueError) as exc:
        raise JobError(f"job: the archive of {remote} is unreadable ({exc})") from None
    return target


def download_sweep(location: str, target: Path) -> Path:
    """A sweep in object storage, without its checkpoints and Ray's trial state, into `target`."""
    from lora_tune.storage import StorageError, Store

    try:
        store = Store.at(location)
        names = [n for n in store.files() if not n.startswith("lora_trial_") and "/checkpoint_" not in f"/{n}"]
        if "results.json" not in names:
            raise JobError(f"job: {location} has no results yet; accepted: a finished sweep job")
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(store.read_bytes(name))
    except StorageError as exc:
        raise JobError(f"job: cannot fetch {location} ({exc})") from None
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lora_tune.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["stop", "status", "logs", "attach", "fetch", "pack"])
    parser.add_argument("target", help="the job id (pack: the sweep dir on the cluster)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="the dashboard, http://HOST:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--dest", default="runs", help="fetch: local folder for <sweep_name>/ (default: runs)")
    return parser.parse_args(argv)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "pack":
        return pack(args.target)
    if not is_job_address(args.address):
        raise JobError(f"--address: got {args.address!r}; accepted: http://HOST:PORT of the cluster's dashboard "
                       "(or set RAY_ADDRESS)")
    cluster = Cluster(args.address)
    if args.command == "stop":
        return stop(cluster, args.target)
    if args.command == "attach":
        return follow(cluster, args.target)
    if args.command == "logs":
        sys.stdout.write(cluster.call("get_job_logs", args.target))
        return 0
    if args.command == "fetch":
        print(fetch(cluster, args.target, Path(args.dest)))
        return 0
    print(cluster.call("get_job_status", args.target))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run_command(parse_args(argv))
    except JobError as exc:
        fail(str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
