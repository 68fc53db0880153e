"""Sampled search-space values come back as config overrides; results columns and the size of a space."""

from __future__ import annotations

from lora_tune.compose import compose_config
from lora_tune.space import column_names, decode_value, encode_value, overrides_from_params, space_size


def test_list_values_round_trip_through_params() -> None:
    assert encode_value(["q_proj", "v_proj"]) == "q_proj+v_proj"
    assert decode_value("q_proj+v_proj") == ["q_proj", "v_proj"]
    assert decode_value("all-linear") == "all-linear"
    cfg = compose_config([])
    params = {"peft.target_modules": "q_proj+k_proj+v_proj+o_proj", "peft.r": 16, "unrelated": 1}
    overrides = overrides_from_params(params, cfg.search_space)
    assert overrides == {"peft.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "peft.r": 16}
    assert cfg.trial_config(overrides).peft.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_columns_and_size() -> None:
    cfg = compose_config(["search_space=rank"])
    assert column_names(cfg.search_space) == {"peft.r": "r", "peft.alpha": "alpha"}
    assert space_size(cfg.search_space) == 25
    assert space_size(compose_config([]).search_space) is None  # lr is continuous
