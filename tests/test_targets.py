"""Symbolic target-module sets resolve against each architecture's own module names (models on the meta device)."""

from __future__ import annotations

import pytest
from transformers import (
    FalconConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PhiConfig,
    Qwen2Config,
)

from lora_tune import targets
from lora_tune.model import meta_model

SMALL = {"vocab_size": 128, "num_attention_heads": 2, "num_hidden_layers": 1}
ARCHITECTURES = {
    "llama": LlamaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **SMALL),
    "mistral": MistralConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **SMALL),
    "qwen2": Qwen2Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **SMALL),
    "phi": PhiConfig(hidden_size=32, intermediate_size=64, **SMALL),
    "gpt2": GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=128),
    "falcon": FalconConfig(hidden_size=32, **SMALL),
}
# What each set must become for each architecture (for qv: PEFT's defaults, within the attention blocks).
EXPECTED = {
    "llama": {"qv": ["q_proj", "v_proj"], "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "mistral": {"qv": ["q_proj", "v_proj"], "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "qwen2": {"qv": ["q_proj", "v_proj"], "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "phi": {"qv": ["q_proj", "v_proj"], "attention": ["q_proj", "k_proj", "v_proj", "dense"],
            "mlp": ["fc1", "fc2"]},
    "gpt2": {"qv": ["c_attn"], "attention": ["c_attn", "attn.c_proj"], "mlp": ["c_fc", "mlp.c_proj"]},
    "falcon": {"qv": ["query_key_value"], "attention": ["query_key_value", "dense"],
               "mlp": ["dense_h_to_4h", "dense_4h_to_h"]},
}


@pytest.fixture(scope="module")
def models() -> dict:
    return {name: meta_model(config) for name, config in ARCHITECTURES.items()}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("spec", ["qv", "attention", "mlp"])
def test_sets_resolve_to_the_architectures_own_names(models: dict, arch: str, spec: str) -> None:
    model = models[arch]
    names = targets.linear_modules(model)
    resolved = targets.resolve(spec, names, model.config.model_type)
    assert sorted(resolved) == sorted(EXPECTED[arch][spec])
    assert all(targets.matches(t, names) for t in resolved)
    assert targets.check(spec, names, model.config.model_type) == []


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_all_linear_and_the_lm_head(models: dict, arch: str) -> None:
    names = targets.linear_modules(models[arch])
    assert targets.resolve("all-linear", names) == "all-linear"
    assert not any(n.endswith("lm_head") for n in names)


def test_explicit_lists_are_still_checked(models: dict) -> None:
    gpt2 = models["gpt2"]
    names = targets.linear_modules(gpt2)
    assert targets.check(["c_attn"], names, "gpt2") == []
    assert targets.check(["attn.c_proj"], names, "gpt2") == []
    (problem,) = targets.check(["q_proj", "v_proj"], names, "gpt2")
    assert problem.startswith("peft.target_modules: the model has no module(s) q_proj, v_proj; accepted: ")
    assert "c_attn" in problem and "attn.c_proj" in problem


def test_a_set_that_finds_nothing_is_a_one_line_problem() -> None:
    (problem,) = targets.check("mlp", ["model.layers.0.self_attn.q_proj"], "llama", key="search_space.t.values")
    assert problem.startswith("search_space.t.values: mlp finds no linear layer in this llama; accepted: ")
