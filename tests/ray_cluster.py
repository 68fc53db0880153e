"""A real multi-node Ray cluster on 127.0.0.1 for tests (used by tests/test_cluster.py).

Each node is a `ray start --block` from this project's venv in its own session (setsid), so `stop()` ends
exactly the process groups it started; it never runs `ray stop`, which would end every Ray on the machine.
Every port is picked free, so it can run next to other Ray instances.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from tests.procs import run_bounded

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The session cluster's token (one module, so conftest.py and the tests that import it agree on it).
CLUSTER_TOKEN = secrets.token_hex(16)


def laptop_env(token: str | None, home: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """A laptop's environment: its own HOME (no ~/.ray/auth_token), a token or not, no W&B or HF settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "HF_"))}
    env.update({"HOME": str(home), **(extra_env or {})})
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


def laptop(args: list[str], token: str | None, home: Path, timeout: float = 600,
           extra_env: dict[str, str] | None = None, module: str = "lora_tune.sweep") -> subprocess.CompletedProcess:
    """`python -m lora_tune.sweep ...` (or another module) as a laptop runs it."""
    return run_bounded([sys.executable, "-m", module, *args], cwd=REPO, env=laptop_env(token, home, extra_env),
                       capture_output=True, text=True, timeout=timeout)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 not handed out before in this process (Ray refuses one port for two components,
    and the OS may offer a port again once the probing socket is closed)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def node_ports() -> list[str]:
    """Per-node ports that default to fixed numbers (two nodes on one machine would collide)."""
    flags = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
             "--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port")
    return [arg for flag in flags for arg in (flag, str(free_port()))]


@dataclass
class LocalCluster:
    """Nodes started by `start_cluster`; `dashboard` is the Jobs API address."""

    gcs_port: int
    dashboard_port: int
    env: dict[str, str]
    temp_dir: Path
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    worker_homes: list[Path] = field(default_factory=list)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def node_ids(self) -> dict[str, str]:
        """{"head": id, "worker": id} of a two-node cluster, from the dashboard."""
        reply = requests.get(f"{self.dashboard}/nodes?view=summary", headers=self.headers(), timeout=10)
        nodes = reply.json()["data"]["summary"]
        return {"head" if n["raylet"].get("isHeadNode") else "worker": n["raylet"]["nodeId"] for n in nodes
                if n["raylet"].get("state") == "ALIVE"}

    def start_node(self, head: bool, num_cpus: int) -> None:
        """The head, or a worker node with a HOME, temp dir and working directory of its own (nothing it writes
        lands where the head or the laptop would find it)."""
        cmd = [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
               "--num-gpus=0", "--disable-usage-stats", *node_ports()]
        env, cwd = dict(self.env), self.temp_dir
        if head:
            cmd += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
                    f"--temp-dir={self.temp_dir}"]
        else:  # its own temp dir: nodes sharing one would delete each other's runtime_env packages
            node_dir = self.temp_dir / f"n{len(self.procs)}"
            (node_dir / "home").mkdir(parents=True)
            cmd += [f"--address=127.0.0.1:{self.gcs_port}", f"--temp-dir={node_dir}"]
            env["HOME"], cwd = str(node_dir / "home"), node_dir
            self.worker_homes.append(node_dir / "home")
        log = open(self.logs / f"node{len(self.procs)}.log", "wb")  # noqa: SIM115 - lives as long as the node
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, cwd=cwd))

    def headers(self) -> dict[str, str]:
        token = self.env.get("RAY_AUTH_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def alive_nodes(self) -> int:
        """Nodes the dashboard reports alive (0 while it is not up yet)."""
        return alive_nodes(self.dashboard, self.headers())

    def wait_for(self, nodes: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.alive_nodes() < nodes:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(p.read_text()[-2000:] for p in sorted(self.logs.glob("node*.log")))
                self.stop()
                raise RuntimeError(f"local Ray cluster did not come up with {nodes} nodes:\n{tails}")
            time.sleep(1.0)

    def processes_titled(self, prefix: str) -> list[int]:
        """PIDs of this cluster's processes whose title starts with `prefix`."""
        return [pid for node in self.procs for pid in descendants_titled(node.pid, prefix)]

    def stop(self) -> None:
        """SIGTERM then SIGKILL each node's process group and descendants (only what this cluster started)."""
        descendants = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                descendants += psutil.Process(proc.pid).children(recursive=True)
        for proc in self.procs:
            with _ignore_missing():
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with _ignore_missing():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in self.procs:  # workers that outlived their raylet stay in the node's process group
            with _ignore_missing():
                os.killpg(proc.pid, signal.SIGKILL)
        for child in descendants:  # ... unless they started a session of their own
            with contextlib.suppress(psutil.Error):
                child.kill()
        self.procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        shutil.rmtree(self.logs, ignore_errors=True)


def alive_nodes(dashboard: str, headers: dict[str, str]) -> int:
    """Nodes (raylets) the dashboard at `dashboard` reports alive; 0 while it is not up yet."""
    try:
        reply = requests.get(f"{dashboard}/nodes?view=summary", headers=headers, timeout=5)
        summary = reply.json()["data"]["summary"]
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return 0
    return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")


def descendants_titled(pid: int, prefix: str) -> list[int]:
    """PIDs of the processes under `pid` whose title starts with `prefix` (Ray titles a worker process
    `ray::<actor class>.<method>`), read from /proc."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error, IndexError):
                if child.cmdline()[0].startswith(prefix):
                    found.append(child.pid)
    return found


class _ignore_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, *_: object) -> bool:
        return kind is ProcessLookupError or kind is PermissionError


def cluster_env(token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The nodes' environment: this venv first on PATH (jobs run `python`), token auth on or off, `extra` (an
    object store's endpoint and credentials, say)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "HF_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", **(extra or {})})
    if token:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def start_cluster(nodes: int = 2, cpus_per_node: int = 1, token: str | None = None,
                  extra_env: dict[str, str] | None = None) -> LocalCluster:
    """A head (with the dashboard on 127.0.0.1) plus `nodes - 1` workers, all up and registered."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lt-ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    logs = Path(tempfile.mkdtemp(prefix="lora_tune-cluster-logs-"))
    cluster = LocalCluster(gcs_port=free_port(), dashboard_port=free_port(), env=cluster_env(token, extra_env),
                           temp_dir=temp_dir, logs=logs)
    cluster.start_node(head=True, num_cpus=cpus_per_node)
    cluster.wait_for(1)
    for _ in range(nodes - 1):
        cluster.start_node(head=False, num_cpus=cpus_per_node)
    cluster.wait_for(nodes)
    return cluster


if __name__ == "__main__":  # manual check: python -m tests.ray_cluster
    started = start_cluster()
    print(f"up: {started.dashboard}, {started.alive_nodes()} nodes; Ctrl-C stops it")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        started.stop()
