"""PEFT variants as search dimensions: DoRA, rsLoRA and AdaLoRA train with run_trial; impossible mixes are rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_tune.compose import compose_config
from lora_tune.config import ConfigError, SweepConfig, to_dict
from lora_tune.embedded import resolve_model_path
from lora_tune.train import run_trial

BASE = ["experiment=tiny", "search_space=target_modules", "data.max_train_examples=16",
        "data.exact_match_examples=0", "max_steps=16", "train.eval_every=8", "train.warmup_ratio=0",
        "peft.target_modules=all-linear"]


def reports(*overrides: str) -> list[dict]:
    out: list[dict] = []
    run_trial(compose_config([*BASE, *overrides]).trial_config(), lambda m, _: out.append(m))
    return out


@pytest.mark.parametrize("overrides", [
    ("peft.use_dora=true", "quant.bits=16", "train.lr=0.01"),
    ("peft.use_dora=true", "quant.bits=4", "train.lr=0.01"),
    ("peft.use_rslora=true", "quant.bits=4", "train.lr=0.01"),
    ("peft.method=adalora", "quant.bits=16", "train.lr=0.05"),
    ("peft.method=adalora", "quant.bits=4", "train.lr=0.05"),
], ids=["dora-16bit", "dora-4bit", "rslora-4bit", "adalora-16bit", "adalora-4bit"])
def test_variant_trains(overrides: tuple[str, ...]) -> None:
    out = reports(*overrides)
    assert [r["step"] for r in out] == [8, 16]
    assert out[-1]["eval_loss"] < out[0]["eval_loss"]


def linear_shapes() -> list[tuple[int, int]]:
    """(in, out) of every linear layer of the tiny Llama under its blocks (all-linear: lm_head excluded), from its
    config.json: q, k, v, o, gate, up, down per layer."""
    config = json.loads((Path(resolve_model_path("embedded:tiny")) / "config.json").read_text())
    d, ff, heads, kv = (config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                            "num_key_value_heads"))
    head_dim = config.get("head_dim") or d // heads
    layer = [(d, heads * head_dim), (d, kv * head_dim), (d, kv * head_dim), (heads * head_dim, d), (d, ff), (d, ff),
             (ff, d)]
    return layer * config["num_hidden_layers"]


def test_variants_change_what_trains() -> None:
    """LoRA trains r x (in + out) per module; DoRA adds a magnitude vector (out) per module; AdaLoRA starts at
    adalora_init_r with a singular-value vector (init_r) per module."""
    short = ("max_steps=2", "train.eval_every=2")
    cfg = compose_config([*BASE, *short]).trial_config()
    shapes = linear_shapes()
    lora = cfg.peft.r * sum(i + o for i, o in shapes)
    assert reports(*short)[0]["trainable_params"] == lora
    assert reports(*short, "peft.use_dora=true")[0]["trainable_params"] == lora + sum(o for _, o in shapes)
    init_r = cfg.peft.adalora_init_r
    adalora = init_r * sum(i + o for i, o in shapes) + init_r * len(shapes)
    assert reports(*short, "peft.method=adalora")[0]["trainable_params"] == adalora


DORA = {"key": "peft.use_dora", "type": "choice", "values": [True]}


@pytest.mark.parametrize(("space", "message"), [
    ({"dora": DORA, "method": {"key": "peft.method", "type": "choice", "values": ["lora", "adalora"]}},
     "peft.use_dora=true, peft.method=adalora cannot run together"),
    ({"rs": {"key": "peft.use_rslora", "type": "choice", "values": [True]},
      "method": {"key": "peft.method", "type": "choice", "values": ["adalora"]}},
     "AdaLoRA ignores rsLoRA"),
    ({"dora": DORA, "bits": {"key": "quant.bits", "type": "choice", "values": [4, 8]}},
     "peft.use_dora=true, quant.bits=8 cannot run together"),
], ids=["dora+adalora", "rslora+adalora", "dora+8bit-on-cpu"])
def test_impossible_combinations_are_rejected_before_ray(space: dict, message: str) -> None:
    data = to_dict(compose_config(["experiment=tiny"]))
    data["search_space"] = space
    with pytest.raises(ConfigError) as info:
        SweepConfig.from_dict(data)
    assert any(message in p for p in info.value.problems), info.value.problems
    assert all("\n" not in p for p in info.value.problems)


def test_adalora_needs_two_steps() -> None:
    with pytest.raises(ConfigError, match="max_steps: got 1; accepted: an integer >= 2 with peft.method=adalora"):
        compose_config([*BASE, "peft.method=adalora", "max_steps=1"])


def test_dora_on_8bit_is_allowed_for_gpu_trials() -> None:
    cfg = compose_config(["experiment=tiny", "resources=gpu", "quant.bits=8", "peft.use_dora=true"])
    assert cfg.peft.use_dora and cfg.quant.bits == 8


def test_shipped_variant_spaces_search_the_variants() -> None:
    variants = compose_config(["experiment=tiny", "search_space=variants"]).search_space
    assert variants["use_dora"].values == variants["use_rslora"].values == [False, True]
    adalora = compose_config(["experiment=tiny", "search_space=adalora"]).search_space
    assert adalora["method"].values == ["lora", "adalora"]
    assert max(adalora["r"].values) <= compose_config(["experiment=tiny"]).peft.adalora_init_r  # AdaLoRA's r fits
