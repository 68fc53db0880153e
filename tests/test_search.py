"""search_alg=optuna and search_alg=grid run real sweeps (the README's claim): Optuna proposes the trials through
Ray Tune's OptunaSearch, grid enumerates every choice num_samples times."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from lora_tune.compose import compose_config
from lora_tune.sweep import run_sweep
from tests.conftest import with_space

QUICK = ["experiment=tiny", "wandb.mode=disabled", "scheduler=fifo", "max_steps=4", "train.eval_every=2",
         "data.max_train_examples=16", "data.test_examples=4", "verbose=0"]


def sweep(tmp_path: Path, name: str, *overrides: str, **dims: dict) -> tuple[Path, list[dict]]:
    cfg = compose_config([*QUICK, f"output_dir={tmp_path}", f"sweep_name={name}", *overrides])
    cfg = dataclasses.replace(with_space(cfg, **dims), verbose=0)
    run_sweep(cfg)
    rows = json.loads((tmp_path / name / "results.json").read_text())
    return tmp_path / name, [r for r in rows if r.get("role", "trial") == "trial"]


def test_an_optuna_sweep_runs_its_trials_through_optuna(tmp_path: Path) -> None:
    sweep_dir, rows = sweep(tmp_path, "tpe", "search_alg=optuna", "num_samples=3",
                            lr={"key": "train.lr", "type": "loguniform", "low": 1e-4, "high": 1e-2},
                            r={"key": "peft.r", "type": "choice", "values": [2, 4]})
    assert len(rows) == 3 and all(r["status"] == "TERMINATED" and r["steps"] == 4 for r in rows), rows
    assert all(1e-4 <= r["lr"] <= 1e-2 and r["r"] in (2, 4) for r in rows)
    assert len({r["lr"] for r in rows}) == 3  # sampled per trial, not one value
    # Tune saves the state of the search algorithm it ran: Optuna's searcher state, not the random generator's
    assert list(sweep_dir.glob("searcher-state-*.pkl")) and not list(sweep_dir.glob("basic-variant-state-*"))


def test_a_grid_sweep_runs_every_combination_num_samples_times(tmp_path: Path) -> None:
    # composed over an all-grid shipped space (grid refuses continuous dimensions), then given this test's choices
    _, rows = sweep(tmp_path, "grid", "search_alg=grid", "search_space=target_modules", "num_samples=2",
                    r={"key": "peft.r", "type": "choice", "values": [2, 4]},
                    alpha={"key": "peft.alpha", "type": "choice", "values": [8, 16]})
    assert all(r["status"] == "TERMINATED" for r in rows), rows
    assert Counter((r["r"], r["alpha"]) for r in rows) == {(2, 8): 2, (2, 16): 2, (4, 8): 2, (4, 16): 2}
