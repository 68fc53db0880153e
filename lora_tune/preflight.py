"""Checks that need the filesystem, the network or the model's module names, run before Ray or a model starts.

Config-only checks live in config.py; these read the data files, build the model on the meta device (no
weights), probe the sweep's storage and the cluster address. Every problem is one line; `preflight` returns
them all.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lora_tune.config import SweepConfig, is_uri
from lora_tune.errors import ConfigError
from lora_tune.storage import StorageError, Store, root_exists


def sweep_location(cfg: SweepConfig) -> str:
    """Where the sweep lives: <ray.storage_path>/<sweep_name>, else <output_dir>/<sweep_name> (absolute)."""
    root = cfg.ray.storage_path or cfg.output_dir
    if is_uri(root):
        return f"{root.rstrip('/')}/{cfg.sweep_name}"
    return str(Path(root).expanduser().resolve() / cfg.sweep_name)


def preflight(cfg: SweepConfig) -> list[str]:
    """Every problem with the data, the metrics (a user scorer must import), the model's module names, the storage
    and the cluster address."""
    from lora_tune.data import check_data
    from lora_tune.metrics import check_metrics

    problems = check_data(cfg.data, cfg.seed)
    problems += check_metrics(cfg.generation_metrics(), cfg.eval.answer_regex)
    problems += model_problems(cfg)
    problems += storage_problems(cfg)
    problems += address_problems(cfg.ray.address)
    return problems


def model_problems(cfg: SweepConfig) -> list[str]:
    """Target modules (set or searched) against the model's own module names, read on the meta device."""
    from lora_tune.model import architecture, check_targets, meta_model

    try:
        model = meta_model(architecture(cfg.model.name_or_path, cfg.model.trust_remote_code),
                           cfg.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loading problem is a config problem here
        return [f"model.name_or_path: cannot read {cfg.model.name_or_path!r} ({str(exc).splitlines()[0][:200]})"]
    return check_targets(model, cfg.peft, cfg.search_space)


def storage_problems(cfg: SweepConfig) -> list[str]:
    """The sweep's storage must be writable (local: creatable; object store: reachable), and new unless resumed."""
    location = sweep_location(cfg)
    key = "ray.storage_path" if cfg.ray.storage_path else "output_dir"
    problems = [] if is_uri(location) else output_dir_problems(Path(location).parent, key)
    try:
        if not root_exists(location):
            return problems + [f"{key}: the bucket of {location} does not exist; accepted: an existing bucket "
                               "(create it first), or a local path"]
        exists = Store.at(location).exists()
    except (StorageError, OSError) as exc:
        return problems + [f"{key}: cannot reach {location} ({str(exc).splitlines()[0][:200]}); accepted: a "
                           "writable folder or an object-store URI with credentials in the environment"]
    if exists and not cfg.resume:
        problems.append(f"sweep_name: {location} exists; accepted: a new sweep_name, or resume={location} to "
                        "continue it")
    return problems


def output_dir_problems(folder: Path, key: str = "output_dir") -> list[str]:
    """The sweep's parent folder must be creatable and writable (checked without creating anything)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return []
    return [f"{key}: {folder} is not writable; accepted: a folder this user can create files in"]


def address_problems(address: str | None) -> list[str]:
    """A cluster address must answer on its port (the Jobs API's http://HOST:PORT or GCS HOST:PORT)."""
    if not address or address == "auto":
        return []
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    default_port = 8265 if parsed.scheme in ("http", "https") else 10001 if parsed.scheme == "ray" else 6379
    try:
        port = parsed.port or default_port
        with socket.create_connection((parsed.hostname or "", port), timeout=3):
            return []
    except (OSError, ValueError) as exc:
        return [f"ray.address: cannot reach {address} ({exc.__class__.__name__}); accepted: null (local Ray), auto, "
                "HOST:PORT of a running cluster, or http://HOST:8265 of its dashboard"]


def resolve_resume(cfg: SweepConfig) -> SweepConfig:
    """resume=<sweep>: continue with the config that sweep was started with (its config.yaml), wherever it is."""
    if not cfg.resume:
        return cfg
    import yaml

    location = cfg.resume if is_uri(cfg.resume) else str(Path(cfg.resume).expanduser().resolve())
    try:
        store = Store.at(location)
        started = store.is_file("config.yaml") and store.is_file("tuner.pkl")
    except (StorageError, OSError) as exc:
        raise ConfigError([f"resume: cannot read {cfg.resume} ({exc})"]) from None
    if not started:
        raise ConfigError([f"resume: {cfg.resume} is not a sweep (no config.yaml and tuner.pkl); accepted: "
                           "<output_dir>/<sweep_name> or <ray.storage_path>/<sweep_name> of a sweep that started"])
    saved = SweepConfig.from_dict(yaml.safe_load(store.read_text("config.yaml")))
    parent, name = location.rstrip("/").rsplit("/", 1)
    ray = dataclasses.replace(saved.ray, address=cfg.ray.address, shared_fs=cfg.ray.shared_fs or saved.ray.shared_fs,
                              storage_path=parent if is_uri(location) else None)
    return dataclasses.replace(saved, resume=location, retry_errored=cfg.retry_errored, verbose=cfg.verbose,
                               output_dir=parent if not is_uri(location) else saved.output_dir, sweep_name=name,
                               ray=ray)
