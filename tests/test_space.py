"""Search-space entries become the right ray.tune domains and come back as config overrides."""

from __future__ import annotations

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from lora_tune.config import ConfigError, Dimension
from lora_tune.space import column_names, decode_value, encode_value, overrides_from_params, param_space, space_size
from lora_tune.sweep import compose_config


def test_default_space_translates_to_tune_domains() -> None:
    cfg = compose_config([])
    space = param_space(cfg.search_space)
    assert isinstance(space["peft.r"], Categorical) and space["peft.r"].categories == [4, 8, 16, 32]
    assert isinstance(space["train.lr"], Float) and isinstance(space["train.lr"].get_sampler(), LogUniform)
    assert space["train.lr"].lower == pytest.approx(3e-4) and space["train.lr"].upper == pytest.approx(3e-3)
    assert space["peft.target_modules"].categories == ["q_proj+v_proj", "q_proj+k_proj+v_proj+o_proj", "all-linear"]


def test_samples_stay_inside_the_domain() -> None:
    cfg = compose_config([])
    space = param_space(cfg.search_space)
    for _ in range(50):
        lr = space["train.lr"].sample()
        assert 3e-4 <= lr <= 3e-3
        assert space["quant.bits"].sample() in (4, 8, 16)


def test_grid_search_and_integer_domains() -> None:
    dims = {"r": Dimension(key="peft.r", type="choice", values=[4, 8]),
            "n": Dimension(key="train.batch_size", type="randint", low=1, high=9)}
    assert isinstance(param_space(dims)["train.batch_size"], Integer)
    with pytest.raises(ConfigError, match="search_alg=grid accepts only choice/grid"):
        param_space(dims, grid=True)
    grid = param_space({"r": dims["r"]}, grid=True)
    assert grid["peft.r"] == {"grid_search": [4, 8]}


def test_empty_space_is_rejected() -> None:
    with pytest.raises(ConfigError, match="search_space: empty"):
        param_space({})


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
