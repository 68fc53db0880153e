"""Shared fixtures: configs composed by Hydra exactly as the command line would, shrunk for CPU; one S3 server
and one two-node Ray cluster per session."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_tune.compose import compose_config
from lora_tune.config import Dimension, SweepConfig
from lora_tune.storage import Store
from tests.ray_cluster import CLUSTER_TOKEN, LocalCluster, start_cluster
from tests.s3_server import S3Server, start_s3

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths in conf/ (data/dates) resolve against the repository, wherever pytest starts."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> SweepConfig:
    """experiment=tiny writing under tmp_path, W&B offline."""
    return compose_config(["experiment=tiny", f"output_dir={tmp_path / 'runs'}", "sweep_name=t",
                           "wandb.mode=offline"])


def with_space(cfg: SweepConfig, **dims: dict) -> SweepConfig:
    """Replace the search space with `name={key, type, values...}` entries."""
    return dataclasses.replace(cfg, search_space={name: Dimension(**spec) for name, spec in dims.items()})


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """One S3-compatible server (moto, a real process on 127.0.0.1) for the session; its endpoint and credentials
    are in the environment, as a user's would be (AWS_ENDPOINT_URL, AWS_* keys)."""
    server = start_s3()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env.items():
            patch.setenv(key, value)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def cluster(s3: S3Server) -> Iterator[LocalCluster]:
    """One real two-node Ray cluster for the session (token auth; the worker node with its own HOME, temp dir and
    working directory; both nodes see the S3 endpoint)."""
    started = start_cluster(nodes=2, cpus_per_node=1, token=CLUSTER_TOKEN, extra_env=s3.env)
    try:
        yield started
    finally:
        started.stop()


def recorded_finished(store: Store) -> set[str]:
    """Trials the sweep's Tune experiment state (local or in a bucket) records as finished: what a resumed sweep
    knows, and so the trials a resume must not run again (a trial may report its last step before the state that
    says it finished is written)."""
    states = sorted(n for n in store.files() if n.startswith("experiment_state-") and n.endswith(".json"))
    if not states:
        return set()
    try:
        trials = [json.loads(entry[0]) for entry in store.read_json(states[-1])["trial_data"]]
    except (ValueError, KeyError):  # caught while it was being written
        return set()
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


def steps_reported(sweep_dir: Path, trial_id: str) -> list[int]:
    """Every step a trial reported, in order, from its progress.csv (a trial run again would repeat steps)."""
    for path in sweep_dir.glob("lora_trial_*/progress.csv"):
        with open(path, newline="") as handle:
            lines = list(csv.DictReader(handle))
        if lines and lines[0]["trial_id"] == trial_id:
            return [int(line["step"]) for line in lines]
    return []
