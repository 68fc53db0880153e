"""The Tuner's parts: search-space entries become the right ray.tune domains; schedulers get their settings."""

from __future__ import annotations

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from lora_tune.compose import compose_config
from lora_tune.config import ConfigError, Dimension
from lora_tune.tuner import build_scheduler, param_space


def test_default_space_translates_to_tune_domains() -> None:
    cfg = compose_config([])
    space = param_space(cfg.search_space)
    assert isinstance(space["peft.r"], Categorical) and space["peft.r"].categories == [4, 8, 16, 32]
    assert isinstance(space["train.lr"], Float) and isinstance(space["train.lr"].get_sampler(), LogUniform)
    assert space["train.lr"].lower == pytest.approx(3e-4) and space["train.lr"].upper == pytest.approx(3e-3)
    assert space["peft.target_modules"].categories == ["qv", "attention", "all-linear"]


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


def test_asha_grace_period_defaults_to_the_first_evaluation() -> None:
    def first_rung(asha: object) -> int:
        return min(milestone for milestone, _ in asha._brackets[0]._rungs)

    asha = build_scheduler(compose_config(["train.eval_every=7", "max_steps=70"]))
    assert first_rung(asha) == 7 and asha._max_t == 70
    assert first_rung(build_scheduler(compose_config(["scheduler.grace_period=14"]))) == 14


def test_pbt_mutates_the_searched_keys_it_names() -> None:
    pbt = build_scheduler(compose_config(["scheduler=pbt", "scheduler.perturbation_interval=5"]))
    assert pbt._perturbation_interval == 5 and set(pbt._hyperparam_mutations) == {"train.lr"}
