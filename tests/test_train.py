"""run_trial without Ray: loss goes down, checkpoints resume exactly, divergence is an error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lora_tune.config import TrialConfig
from lora_tune.sweep import compose_config
from lora_tune.train import TrialDiverged, run_trial


def tiny_trial(**train: object) -> TrialConfig:
    cfg = compose_config(["experiment=tiny", "peft.target_modules=all-linear", "peft.r=8", "quant.bits=16",
                          "data.max_train_examples=16", "data.exact_match_examples=2", "max_steps=24",
                          "train.eval_every=8", "train.lr=0.01", "train.warmup_ratio=0"]).trial_config()
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def collect(cfg: TrialConfig, **kwargs: object) -> list[dict]:
    reports: list[dict] = []
    run_trial(cfg, lambda metrics, ckpt: reports.append({**metrics, "checkpoint": ckpt}), **kwargs)
    return reports


def test_loss_goes_down_without_ray() -> None:
    reports = collect(tiny_trial())
    assert [r["step"] for r in reports] == [8, 16, 24]
    assert reports[-1]["eval_loss"] < reports[0]["eval_loss"] - 0.5
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    for key in ("eval_exact_match", "lr", "tokens_per_s", "step_time_s", "peak_mem_mb", "trainable_params"):
        assert key in reports[-1]


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_bases_train_too(bits: int) -> None:
    cfg = tiny_trial()
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, bits=bits), max_steps=16)
    reports = collect(cfg)
    assert reports[-1]["eval_loss"] < reports[0]["eval_loss"]


def test_resume_from_checkpoint_continues_exactly(tmp_path: Path) -> None:
    full = collect(tiny_trial(), checkpoint_root=str(tmp_path / "full"))
    # Stop after the first checkpoint (step 8), then resume from it.
    partial: list[dict] = []

    def stop_after_first(metrics: dict, ckpt: str | None) -> None:
        partial.append({**metrics, "checkpoint": ckpt})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(tiny_trial(), stop_after_first, checkpoint_root=str(tmp_path / "part"))
    checkpoint = partial[0]["checkpoint"]
    assert Path(checkpoint, "adapter", "adapter_model.safetensors").exists()
    resumed = collect(tiny_trial(), resume_from=checkpoint, checkpoint_root=str(tmp_path / "resumed"))
    assert [r["step"] for r in resumed] == [16, 24]
    assert resumed[0]["resumed_from_step"] == 8
    assert resumed[-1]["eval_loss"] == pytest.approx(full[-1]["eval_loss"], rel=1e-5)


def test_checkpoints_are_written_atomically(tmp_path: Path) -> None:
    collect(tiny_trial(), checkpoint_root=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000024"]  # no .tmp-* left, older pruned


def test_diverging_loss_is_an_error() -> None:
    cfg = tiny_trial(lr=1e4, max_grad_norm=0)  # fp16 weights overflow within two steps
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, compute_dtype="fp16"))
    with pytest.raises(TrialDiverged, match="train loss is nan at step 2"):
        collect(cfg)


def test_reused_base_gives_identical_results() -> None:
    from lora_tune.model import BASE_CACHE

    cfg = tiny_trial()
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, bits=4), max_steps=16)
    BASE_CACHE.clear()
    fresh = collect(cfg, reuse_base=False)
    first = collect(cfg)  # loads into the cache
    other = collect(dataclasses.replace(cfg, peft=dataclasses.replace(cfg.peft, r=4)))  # reuses, other adapter
    reused = collect(cfg)  # reuses the base the previous trials adapted
    assert not first[0]["base_reused"] and other[0]["base_reused"] and reused[0]["base_reused"]
    assert [r["eval_loss"] for r in reused] == [r["eval_loss"] for r in fresh] == [r["eval_loss"] for r in first]
    assert [r["train_loss"] for r in reused] == [r["train_loss"] for r in fresh]
    assert other[-1]["trainable_params"] != reused[-1]["trainable_params"]
    assert not any("lora_" in name for name, _ in BASE_CACHE.base.named_modules()) or BASE_CACHE.adapted
