"""What a Ray trial runs (trainable.run_in_trial), called in this process: torch uses the trial's CPU share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lora_tune.compose import compose_config
from lora_tune.storage import Store
from lora_tune.trainable import run_in_trial


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def threads_while_training(tmp_path: Path, *overrides: str) -> set[int]:
    """torch's intra-op thread count at each report of a 4-step trial on the tiny model."""
    cfg = compose_config(["experiment=tiny", f"output_dir={tmp_path}", "wandb.mode=disabled", "max_steps=4",
                          "train.eval_every=2", "data.max_train_examples=8", "data.exact_match_examples=0",
                          *overrides])
    seen: set[int] = set()
    torch.set_num_threads(7)  # what the worker process had before the trial: neither value under test
    run_in_trial(cfg, {}, None, Store.at(tmp_path / "trial"), None,
                 lambda metrics, checkpoint: seen.add(torch.get_num_threads()))
    return seen


def test_torch_threads_follow_resources_cpus_per_trial(tmp_path: Path) -> None:
    assert threads_while_training(tmp_path, "resources.cpus_per_trial=2") == {2}
    assert threads_while_training(tmp_path, "resources.cpus_per_trial=1") == {1}


def test_train_num_threads_overrides_the_cpu_share(tmp_path: Path) -> None:
    assert threads_while_training(tmp_path, "resources.cpus_per_trial=2", "train.num_threads=3") == {3}
