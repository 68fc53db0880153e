"""Every config group composes; experiment=tiny shrinks the run; validation reports every problem at once."""

from __future__ import annotations

import pytest

from lora_tune.config import ConfigError, SweepConfig, TrialConfig, flatten, to_dict
from lora_tune.sweep import CONF_DIR, compose_config

GROUPS = ["model", "peft", "quant", "data", "train", "search_space", "scheduler", "search_alg", "resources",
          "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_group_option_composes(group: str, option: str) -> None:
    # grid search enumerates, so it needs a space without continuous entries
    extra = ["search_space=rank"] if (group, option) == ("search_alg", "grid") else []
    cfg = compose_config([f"{group}={option}", *extra])
    assert isinstance(cfg, SweepConfig)
    choice = {"scheduler": cfg.scheduler.name, "search_alg": cfg.search_alg.name, "experiment": cfg.experiment}
    if group in choice:
        assert choice[group] == option


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"


def test_default_is_quickstart_on_smollm2_with_asha() -> None:
    cfg = compose_config([])
    assert cfg.experiment == "quickstart"
    assert cfg.model.name_or_path == "embedded:smollm2-135m"
    assert cfg.scheduler.name == "asha" and cfg.metric == "eval_loss" and cfg.mode == "min"
    assert cfg.num_samples >= 8
    keys = {dim.key for dim in cfg.search_space.values()}
    assert {"peft.r", "peft.alpha", "peft.target_modules", "quant.bits", "train.lr"} <= keys
    targets = cfg.search_space["target_modules"].values
    assert ["q_proj", "v_proj"] in targets and "all-linear" in targets
    assert cfg.search_space["bits"].values == [4, 8, 16]
    assert cfg.search_space["lr"].type == "loguniform"
    assert cfg.sweep_name.startswith("quickstart-")


def test_tiny_experiment_shrinks_everything() -> None:
    quick, tiny = compose_config([]), compose_config(["experiment=tiny"])
    assert tiny.model.name_or_path == "embedded:tiny"
    assert tiny.max_steps < quick.max_steps
    assert tiny.num_samples < quick.num_samples
    assert tiny.data.max_train_examples is not None
    assert tiny.data.eval_examples < quick.data.eval_examples
    assert tiny.data.test_examples < quick.data.test_examples


def test_command_line_overrides_reach_the_typed_config() -> None:
    cfg = compose_config(["peft.r=32", "quant.bits=8", "train.lr=0.01", "num_samples=3", "scheduler=fifo"])
    assert (cfg.peft.r, cfg.quant.bits, cfg.train.lr, cfg.num_samples) == (32, 8, 0.01, 3)
    assert cfg.scheduler.name == "fifo"


def test_validation_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["peft.r=0", "quant.bits=3", "num_samples=0", "+peft.rank=4", "metric=accuracy"])
    text = str(err.value)
    for expected in ("peft.r:", "quant.bits:", "num_samples:", "peft.rank: unknown key", "metric:"):
        assert expected in text
    assert all("\n" not in line for line in err.value.problems)
    assert "accepted: 4, 8, 16" in text


def test_search_space_must_set_trial_keys() -> None:
    with pytest.raises(ConfigError, match="search_space.r.key: 'peft.rank' is not a trial config key"):
        compose_config(["search_space.r.key=peft.rank"])


def test_trial_config_applies_dotted_overrides() -> None:
    cfg = compose_config(["experiment=tiny"])
    trial = cfg.trial_config({"peft.r": 16, "quant.bits": 8, "peft.target_modules": ["q_proj"]})
    assert isinstance(trial, TrialConfig)
    assert (trial.peft.r, trial.quant.bits, trial.peft.target_modules) == (16, 8, ["q_proj"])
    assert trial.model == cfg.model
    with pytest.raises(ConfigError, match="quant.bits"):
        cfg.trial_config({"quant.bits": 2})


def test_flatten_and_to_dict_round_trip() -> None:
    cfg = compose_config(["experiment=tiny"])
    flat = flatten(to_dict(cfg.trial_config()))
    assert flat["peft.r"] == cfg.peft.r and flat["quant.bits"] == cfg.quant.bits
    assert TrialConfig.from_dict(to_dict(cfg.trial_config())) == cfg.trial_config()
