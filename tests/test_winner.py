"""The winner's adapter: the checkpoint of the step its metric was measured at, and when the best trial's
checkpoints cannot be read, the next best trial with a complete adapter (README: "The winner")."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.train import Checkpoint, Result

from lora_tune.compose import compose_config
from lora_tune.post_sweep import ADAPTER_DIR, export_winner
from lora_tune.storage import Store


def checkpoint(root: Path, name: str, with_adapter: bool = True) -> Checkpoint:
    """A trial checkpoint folder as the trainable writes it; its adapter file names the checkpoint."""
    folder = root / name
    folder.mkdir(parents=True)
    if with_adapter:
        (folder / ADAPTER_DIR).mkdir()
        (folder / ADAPTER_DIR / "adapter_config.json").write_text(f'{{"from": "{name}"}}')
    return Checkpoint.from_directory(str(folder))


def result(kept: list[tuple[Checkpoint, int, float]], path: Path) -> Result:
    """A Ray Result keeping (checkpoint, step, eval_loss) triples, the last one also its latest checkpoint."""
    return Result(metrics={"step": kept[-1][1], "eval_loss": kept[-1][2]}, checkpoint=kept[-1][0], error=None,
                  path=str(path), best_checkpoints=[(c, {"step": s, "eval_loss": v}) for c, s, v in kept])


@pytest.fixture
def cfg(tmp_path: Path):
    return compose_config(["experiment=tiny", f"output_dir={tmp_path / 'runs'}", "sweep_name=w",
                           "wandb.mode=offline"])


def exported_from(sweep: Path) -> str:
    return (sweep / "best" / ADAPTER_DIR / "adapter_config.json").read_text()


def test_the_checkpoint_of_the_winning_step_is_exported(tmp_path: Path, cfg) -> None:
    """The row's best_step, not Ray's latest or best-scored checkpoint (they differ here on purpose)."""
    sweep = tmp_path / "sweep"
    kept = [(checkpoint(tmp_path, "a-step2"), 2, 0.3), (checkpoint(tmp_path, "a-step4"), 4, 0.1)]
    row = {"trial_id": "a", "best_step": 2, "eval_loss": 0.1}
    winner = export_winner([row], {"a": result(kept, tmp_path / "a")}, cfg, Store.at(sweep), sweep / "best")
    assert winner is row
    assert "a-step2" in exported_from(sweep)


def test_the_next_best_trial_with_a_complete_adapter_wins(tmp_path: Path, cfg,
                                                          capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    broken = [(checkpoint(tmp_path, "a-step4", with_adapter=False), 4, 0.1)]
    whole = [(checkpoint(tmp_path, "b-step4"), 4, 0.2)]
    ranked = [{"trial_id": "a", "best_step": 4, "eval_loss": 0.1}, {"trial_id": "b", "best_step": 4, "eval_loss": 0.2}]
    results = {"a": result(broken, tmp_path / "a"), "b": result(whole, tmp_path / "b")}
    winner = export_winner(ranked, results, cfg, Store.at(sweep), sweep / "best")
    assert winner is ranked[1]
    assert "b-step4" in exported_from(sweep)
    assert "the next best trial wins" in capsys.readouterr().err


def test_no_trial_with_an_adapter_means_no_winner(tmp_path: Path, cfg) -> None:
    sweep = tmp_path / "sweep"
    broken = [(checkpoint(tmp_path, "a-step4", with_adapter=False), 4, 0.1)]
    ranked = [{"trial_id": "a", "best_step": 4, "eval_loss": 0.1}]
    assert export_winner(ranked, {"a": result(broken, tmp_path / "a")}, cfg, Store.at(sweep), sweep / "best") is None
    assert not (sweep / "best" / ADAPTER_DIR).exists()
