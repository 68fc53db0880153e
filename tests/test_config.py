"""The dataclasses are the single source of defaults: the YAML in conf/ agrees with them, each group holds only
its own keys, every group option composes, and validation reports every problem at once."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from lora_tune.compose import compose_config
from lora_tune.config import (
    SCHEDULERS,
    SEARCH_ALGS,
    ConfigError,
    SweepConfig,
    TrialConfig,
    flatten,
    nested_sections,
    to_dict,
)
from lora_tune.shipped import CONF_DIR

GROUPS = ["model", "peft", "quant", "data", "train", "eval", "search_space", "scheduler", "search_alg", "resources",
          "logger", "experiment"]
# The group option config.yaml picks, and the dataclass it documents (every key, with the dataclass's default).
DOCUMENTING = {"model": "smollm2", "peft": "lora", "quant": "nf4", "data": "dates", "train": "default",
               "eval": "default", "resources": "cpu"}
POLYMORPHIC = {"scheduler": SCHEDULERS, "search_alg": SEARCH_ALGS}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_yaml(group: str, option: str) -> dict[str, Any]:
    data = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()) or {}
    data.pop("defaults", None)
    return data


def defaults_of(cls: type) -> dict[str, Any]:
    return to_dict(cls())


def section_class(group: str) -> type:
    return nested_sections(SweepConfig)[group]


def same(a: Any, b: Any) -> bool:
    return to_dict(a) == to_dict(b)


@pytest.mark.parametrize("group", sorted(DOCUMENTING))
def test_the_default_option_lists_every_key_with_the_dataclass_default(group: str) -> None:
    yaml_values, defaults = load_yaml(group, DOCUMENTING[group]), defaults_of(section_class(group))
    assert set(yaml_values) == set(defaults), f"conf/{group}/{DOCUMENTING[group]}.yaml keys differ from the schema"
    wrong = {k: (yaml_values[k], defaults[k]) for k in defaults if not same(yaml_values[k], defaults[k])}
    assert not wrong, f"conf/{group}/{DOCUMENTING[group]}.yaml disagrees with lora_tune/config.py: {wrong}"


@pytest.mark.parametrize("group", sorted(POLYMORPHIC))
def test_each_polymorphic_option_lists_its_own_schema_and_nothing_else(group: str) -> None:
    for option, cls in POLYMORPHIC[group].items():
        text = (CONF_DIR / group / f"{option}.yaml").read_text()
        assert f"- {option}_schema" in text, f"conf/{group}/{option}.yaml does not name its schema"
        yaml_values, defaults = load_yaml(group, option), defaults_of(cls)
        assert set(yaml_values) == set(defaults), f"conf/{group}/{option}.yaml: keys of another option?"
        assert all(same(yaml_values[k], defaults[k]) for k in defaults), f"conf/{group}/{option}.yaml"


def test_top_level_keys_and_ray_agree_with_the_dataclasses() -> None:
    top = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    defaults = to_dict(SweepConfig())
    # ray.storage_path reads $LORA_TUNE_STORAGE_PATH (set on cluster nodes), null without it: the schema's default
    assert top["ray"].pop("storage_path") == "${oc.env:LORA_TUNE_STORAGE_PATH,null}"
    assert defaults["ray"].pop("storage_path") is None
    for key, value in top.items():
        if key in ("defaults", "hydra") or (isinstance(value, str) and "${" in value):
            continue
        assert same(value, defaults[key]), f"conf/config.yaml {key}: {value!r} != {defaults[key]!r}"
    assert set(top["ray"]) == set(defaults["ray"])
    logger = load_yaml("logger", "wandb")["wandb"]
    assert logger == defaults["wandb"]


@pytest.mark.parametrize("group", ["model", "resources", "logger", "experiment"])
def test_other_options_set_only_what_differs_from_the_defaults(group: str) -> None:
    flat_defaults = flatten(to_dict(SweepConfig()))
    section = "" if group in ("logger", "experiment") else f"{group}."
    for option in options(group):
        if option == DOCUMENTING.get(group) or (group, option) == ("logger", "wandb"):
            continue
        values = flatten(load_yaml(group, option))
        restated = [k for k, v in values.items() if k != "experiment" and same(v, flat_defaults.get(section + k))]
        assert not restated, f"conf/{group}/{option}.yaml restates defaults: {restated}"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_group_option_composes(group: str, option: str) -> None:
    # grid search enumerates, so it needs a space without continuous entries
    extra = ["search_space=rank"] if (group, option) == ("search_alg", "grid") else []
    cfg = compose_config([f"{group}={option}", *extra])
    assert isinstance(cfg, SweepConfig)
    choice = {"scheduler": cfg.scheduler.name, "search_alg": cfg.search_alg.name, "experiment": cfg.experiment}
    if group in choice:
        assert choice[group] == option
    if group in POLYMORPHIC:
        assert type(getattr(cfg, group)) is POLYMORPHIC[group][option]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"


def test_a_group_holds_only_its_own_keys() -> None:
    with pytest.raises(ConfigError, match="scheduler.perturbation_interval: unknown key"):
        compose_config(["scheduler=asha", "scheduler.perturbation_interval=5"])
    with pytest.raises(ConfigError, match="scheduler.grace_period: unknown key"):
        compose_config(["scheduler=fifo", "scheduler.grace_period=5"])
    assert compose_config(["scheduler=pbt", "scheduler.mutate=[train.lr]"]).scheduler.mutate == ["train.lr"]


def test_default_is_quickstart_on_smollm2_with_asha() -> None:
    cfg = compose_config([])
    assert cfg.experiment == "quickstart"
    assert cfg.model.name_or_path == "embedded:smollm2-135m"
    assert cfg.scheduler.name == "asha" and cfg.metric == "eval_loss" and cfg.mode == "min"
    assert cfg.num_samples >= 8 and cfg.max_steps == 30
    keys = {dim.key for dim in cfg.search_space.values()}
    assert {"peft.r", "peft.alpha", "peft.target_modules", "quant.bits", "train.lr"} <= keys
    assert cfg.search_space["target_modules"].values == ["attention", "all-linear"]
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


def test_validation_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["peft.r=0", "quant.bits=3", "num_samples=0", "+peft.rank=4", "metric=accuracy"])
    text = str(err.value)
    for expected in ("peft.r:", "quant.bits:", "num_samples:", "peft.rank: unknown key", "metric:"):
        assert expected in text
    assert all("\n" not in line for line in err.value.problems)
    assert "accepted: 4, 8, 16" in text


def test_wrong_types_are_described_by_the_keys_own_check_all_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["peft.r=abc", "num_samples=many", "model.trust_remote_code=maybe",
                        "data.group_by_length=often"])
    assert err.value.problems == ["peft.r: got 'abc'; accepted: an integer > 0",
                                  "num_samples: got 'many'; accepted: an integer >= 1",
                                  "model.trust_remote_code: got 'maybe'; accepted: true or false",
                                  "data.group_by_length: got 'often'; accepted: true or false"]


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
    assert SweepConfig.from_dict(to_dict(cfg)) == dataclasses.replace(cfg, data=cfg.data)


@pytest.mark.parametrize("overrides,expected", [
    (["search_alg=optuna"], "search_space.bits.type: grid cannot be sampled by Optuna"),
    (["scheduler=pbt", "scheduler.mutate=[peft.r]"], "scheduler.mutate: cannot mutate peft.r"),
    (["scheduler=pbt", "scheduler.mutate=[train.weight_decay]"],
     "scheduler.mutate: train.weight_decay is not searched"),
    (["metric=eval_exact_match", "data.exact_match_examples=0"], "data.exact_match_examples: metric=eval_exact_match"),
    (["metric=eval_rouge_l"], "metric: got 'eval_rouge_l'"),
    (["eval.metrics=[regex]"], "eval.answer_regex: the regex metric needs it"),
    (["train.precision=fp8"], "train.precision: got 'fp8'; accepted: auto, bf16, fp16, fp32"),
    (["resources.workers_per_trial=2", "resources.strategy=fsdp", "quant.bits=8", "search_space=rank"],
     "resources.strategy: FSDP cannot shard bitsandbytes 8-bit"),
    (["resources.workers_per_trial=2", "resources.strategy=fsdp", "quant.bits=4", "search_space=rank"],
     "resources.strategy: FSDP2 corrupts bitsandbytes 4-bit weights (bitsandbytes#1945"),
    (["resources.workers_per_trial=2", "resources.strategy=fsdp"],  # the default space searches bits 4, 8, 16
     "resources.strategy: FSDP2 corrupts bitsandbytes 4-bit"),
    (["resources.gpus_per_trial=2"], "resources.gpus_per_trial: got 2: a one-worker trial trains on one GPU"),
])
def test_combinations_that_would_fail_inside_ray_are_refused(overrides: list[str], expected: str) -> None:
    extra = ["search_space=qlora_vs_lora"] if overrides[0] == "search_alg=optuna" else []
    with pytest.raises(ConfigError) as err:
        compose_config([*overrides, *extra])
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems
