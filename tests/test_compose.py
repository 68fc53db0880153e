"""Composition as the command line does it: pinned keys, removed dimensions, the user's own config folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lora_tune.compose import compose_config, pin_notes, split_config_dirs
from lora_tune.errors import ConfigError
from tests.conftest import REPO
from tests.procs import run_bounded


def test_a_plain_override_of_a_searched_key_pins_it() -> None:
    cfg = compose_config(["peft.r=16", "train.weight_decay=0.1"])
    assert cfg.peft.r == 16
    assert cfg.search_space["r"].values == [16] and cfg.search_space["r"].type == "choice"
    assert cfg.search_space["alpha"].values == [8, 16, 32, 64]  # the others are still searched
    assert pin_notes(cfg, ["peft.r=16", "train.weight_decay=0.1"]) == [
        "peft.r=16 pins r: search_space.r is not searched in this sweep"]


def test_pinned_values_reach_every_trial_config() -> None:
    from lora_tune.tuner import param_space

    cfg = compose_config(["peft.r=16", "peft.target_modules=[q_proj,k_proj]"])
    space = param_space(cfg.search_space)
    assert space["peft.r"] == 16 and space["peft.target_modules"] == "q_proj+k_proj"  # constants, not domains
    trial = cfg.trial_config({"peft.r": space["peft.r"]})
    assert trial.peft.r == 16


def test_null_removes_a_dimension_and_plain_keys_outside_the_space_do_not_pin() -> None:
    cfg = compose_config(["search_space.r=null", "train.weight_decay=0.1"])
    assert "r" not in cfg.search_space and cfg.peft.r == 8
    assert all(dim.key != "train.weight_decay" for dim in cfg.search_space.values())


def test_search_space_overrides_are_not_pins() -> None:
    cfg = compose_config(["search_space.r.values=[4,64]"])
    assert cfg.search_space["r"].values == [4, 64]


@pytest.fixture
def my_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "my_conf"
    (conf / "search_space").mkdir(parents=True)
    (conf / "data").mkdir()
    (conf / "search_space" / "my_space.yaml").write_text(
        "rank:\n  key: peft.r\n  type: grid\n  values: [2, 6]\n")
    (conf / "data" / "my_data.yaml").write_text("path: embedded:dates\nmax_seq_len: 48\nsystem_prompt: null\n")
    return conf


def test_the_users_config_dir_adds_groups_next_to_the_shipped_ones(my_conf: Path) -> None:
    cfg = compose_config(["search_space=my_space", "data=my_data", "experiment=tiny"], [str(my_conf)])
    assert list(cfg.search_space) == ["rank"] and cfg.search_space["rank"].values == [2, 6]
    assert cfg.data.max_seq_len == 64  # experiment=tiny is applied last, over the user's data option
    assert cfg.data.system_prompt is None
    cfg = compose_config(["search_space=my_space", "data=my_data"], [str(my_conf)])
    assert cfg.data.max_seq_len == 48
    assert compose_config(["search_space=rank"], [str(my_conf)]).search_space["r"].values == [4, 8, 16, 32, 64]


def test_hydra_searchpath_works_too(my_conf: Path) -> None:
    cfg = compose_config(["search_space=my_space", f"hydra.searchpath=[file://{my_conf}]"])
    assert list(cfg.search_space) == ["rank"]


def test_the_users_yaml_gets_the_same_one_line_errors(my_conf: Path) -> None:
    (my_conf / "data" / "bad.yaml").write_text("path: embedded:dates\nmax_seq_len: lots\npromt_field: q\n")
    with pytest.raises(ConfigError) as err:
        compose_config(["data=bad", "search_space=nope"], [str(my_conf)])
    problems = "\n".join(err.value.problems)
    assert "search_space: no option 'nope'; accepted: " in problems and "my_space" in problems
    with pytest.raises(ConfigError) as err:
        compose_config(["data=bad"], [str(my_conf)])
    assert err.value.problems == [  # both planted problems (Hydra itself stops at the first), each naming its file
        "data.max_seq_len: got 'lots' in data/bad.yaml; accepted: an integer",
        "data.promt_field: unknown key in data/bad.yaml; accepted: keys shown by --cfg job"]
    with pytest.raises(ConfigError, match="--config-dir: .* is not a folder"):
        compose_config([], [str(my_conf / "missing")])


def test_config_dir_flags_are_split_off() -> None:
    assert split_config_dirs(["--config-dir", "a", "x=1", "--config-dir=b", "-cd", "c", "--cfg", "job"]) == (
        ["a", "b", "c"], ["x=1", "--cfg", "job"])


def test_the_command_line_takes_a_config_dir(my_conf: Path, tmp_path: Path) -> None:
    done = run_bounded([sys.executable, "-m", "lora_tune.sweep", "--config-dir", str(my_conf), "experiment=tiny",
                        "search_space=my_space", "dry_run=true"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert done.returncode == 0, done.stderr
    assert "rank             peft.r                 grid [2, 6]" in done.stdout
    shown = run_bounded([sys.executable, "-m", "lora_tune.sweep", f"--config-dir={my_conf}", "search_space=my_space",
                         "--cfg", "job"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "rank:" in shown.stdout and "key: peft.r" in shown.stdout
