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
    assert space["train.lr"].lower == pytest.approx(1e-3) and space["train.lr"].upper == pytest.approx(5e-3)
    assert space["peft.target_modules"].categories == ["attention", "all-linear"]


def test_samples_stay_inside_the_domain() -> None:
    cfg = compose_config([])
    space = param_space(cfg.search_space)
    for _ in range(50):
        lr = space["train.lr"].sample()
        assert 1e-3 <= lr <= 5e-3
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


def test_a_task_after_the_trials_never_waits_forever_for_resources() -> None:
    """A task the driver waits for after the trials (the winner's scoring, the references) runs and returns, or
    raises what it raised; one that cannot start because a placement group holds every CPU ends with TaskStuck
    after ray.pending_timeout_s, naming the task, what it needs and what holds the resources."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from lora_tune.tuner import TaskStuck, start_task

    cfg = compose_config(["experiment=tiny", "resources.cpus_per_trial=1", "ray.max_failures=0"])

    def double(value: int, threads: int) -> int:  # local functions: Ray ships them by value
        return value * 2

    def process_id(value: int, threads: int) -> int:
        import os

        return os.getpid()

    def refuse(value: int, threads: int) -> int:
        raise ValueError(f"refused {value}")

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        assert start_task(cfg, "doubling", double, 21).result(60) == 42
        pids = [start_task(cfg, "pid", process_id, 0).result(60) for _ in range(2)]
        assert pids[0] != pids[1]  # each task's process ends with it, and what it loaded with it (GPU memory)
        with pytest.raises(ValueError, match="refused 7"):
            start_task(cfg, "refusing", refuse, 7).result(60)
        group = placement_group([{"CPU": 1}, {"CPU": 1}])
        ray.get(group.ready(), timeout=60)
        with pytest.raises(TaskStuck) as stuck:
            start_task(cfg, "the winner's test scoring", double, 1).result(2)
        message = str(stuck.value)
        assert message.startswith("the winner's test scoring did not start within ray.pending_timeout_s=2 s")
        assert "needs CPU 1;" in message and f"placement group {group.id.hex()[:8]} (CREATED) holds CPU 2" in message
        assert message.endswith("free: CPU 0 of 2") and "\n" not in message
        remove_placement_group(group)
        assert start_task(cfg, "doubling", double, 5).result(60) == 10  # the cancelled task held nothing
    finally:
        ray.shutdown()


@pytest.mark.parametrize("overrides,reused", [
    ([], True),
    (["train.optimizer=adamw_8bit"], True),
    (["train.optimizer=paged_adamw"], False),  # bitsandbytes never frees paged buffers: a process per trial
    (["resources.workers_per_trial=2"], False),  # Ray Train starts its own workers
])
def test_trial_processes_are_reused_unless_a_trial_may_page_its_optimizer(overrides: list[str], reused: bool) -> None:
    from lora_tune.tuner import reuses_actors

    assert reuses_actors(compose_config(["experiment=tiny", *overrides])) is reused


def test_a_searched_paged_optimizer_stops_process_reuse_too() -> None:
    from lora_tune.tuner import reuses_actors
    from tests.conftest import with_space

    cfg = with_space(compose_config(["experiment=tiny"]),
                     opt={"key": "train.optimizer", "type": "choice", "values": ["adamw", "paged_adamw"]})
    assert not reuses_actors(cfg)
