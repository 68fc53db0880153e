"""Shared fixtures: configs composed by Hydra exactly as the command line would, shrunk for CPU."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from lora_tune.compose import compose_config
from lora_tune.config import Dimension, SweepConfig

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
