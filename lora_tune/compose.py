"""Hydra composition: conf/ (plus the user's own config dirs) and command-line overrides -> a validated SweepConfig.

The only module that imports Hydra. The dataclasses of config.py are registered as the schemas of conf/ (Hydra's
structured configs), so the YAML files carry values and comments while the types and the set of keys come from
the dataclasses. Every problem becomes one line of a `ConfigError`: Hydra's own (an unknown key, a value of the
wrong type, a missing group option) included, and all of them at once: an override Hydra rejects is set aside
and composition goes on without it.

A plain override of a key that the search space searches (`peft.r=16`) pins it: the dimension is reduced to that
one value for this sweep (`pin_notes` gives the line the sweep prints about it).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_tune.config import SCHEDULERS, SEARCH_ALGS, SweepConfig, get_dotted, set_dotted, to_dict
from lora_tune.errors import ConfigError, fail
from lora_tune.shipped import CONF_DIR

SCHEMA = "lora_tune_schema"  # the top-level schema's name in Hydra's ConfigStore (conf/config.yaml's defaults)
POLYMORPHIC = ("scheduler", "search_alg")  # groups whose options each name their own schema (<option>_schema)
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def register_schemas() -> None:
    """The dataclasses as Hydra schemas: the top-level one and one per scheduler / search algorithm option."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    top = OmegaConf.structured(SweepConfig)
    for group in POLYMORPHIC:  # each option file brings its own schema through its defaults list
        top[group] = None
    store.store(name=SCHEMA, node=top)
    for group, options in (("scheduler", SCHEDULERS), ("search_alg", SEARCH_ALGS)):
        for name, cls in options.items():
            store.store(group=group, name=f"{name}_schema", node=OmegaConf.structured(cls))


register_schemas()


@dataclasses.dataclass
class _Rejected:
    """An override Hydra refused, set aside so that composition can report the others too."""

    override: str
    problem: str | None = None  # a finished one-line problem
    key: str | None = None  # or a value of the wrong type for this key, described once the config is composed
    value: str | None = None
    expected: str | None = None


def override_key(override: str) -> str:
    """`+peft.r=4` -> `peft.r`."""
    return override.lstrip("+~").split("=", 1)[0]


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def searchpath_override(config_dirs: list[str]) -> list[str]:
    """The user's config dirs as Hydra's `hydra.searchpath` (their groups sit next to the shipped ones)."""
    if not config_dirs:
        return []
    paths = ",".join(f"file://{Path(d).expanduser().resolve()}" for d in config_dirs)
    return [f"hydra.searchpath=[{paths}]"]


def group_options(group: str, config_dirs: list[str]) -> list[str]:
    """The options of a config group: the shipped ones and the user's."""
    folders = [CONF_DIR, *(Path(d).expanduser() for d in config_dirs)]
    return sorted({p.stem for folder in folders for p in (folder / group).glob("*.yaml")})


def _compose_once(overrides: list[str], config_dirs: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=[*overrides, *searchpath_override(config_dirs)])


def _find_override(key: str, overrides: list[str]) -> str | None:
    return next((o for o in overrides if override_key(o) == key), None)


def _type_name(message: str) -> str:
    """OmegaConf's "could not be converted to Integer" / "is not a valid bool" -> what is accepted."""
    kinds = {"integer": "an integer", "float": "a number", "boolean": "true or false", "bool": "true or false",
             "string": "text"}
    found = re.search(r"converted to (\w+)|not a valid (\w+)", message)
    kind = (found.group(1) or found.group(2)).lower() if found else ""
    return kinds.get(kind, "a value of this key's type")


def _rejected(exc: Exception, overrides: list[str], config_dirs: list[str]) -> _Rejected | None:
    """Which override Hydra rejected and why, or None when the error is not an override's (a broken YAML file)."""
    text = " ".join(str(exc).split())
    cause = exc.__cause__
    if found := re.search(r"Error merging override (\S+)", text):
        override = found.group(1)
        key = getattr(cause, "full_key", None) or override_key(override)
        cause_text = " ".join(str(cause).split()) if cause else ""
        if "not in" in cause_text or "Key '" in cause_text and "is not in struct" in cause_text:
            return _Rejected(override, problem=f"{key}: unknown key; accepted: keys shown by --cfg job")
        if override in overrides:
            return _Rejected(override, key=key, value=override_value(override), expected=_type_name(cause_text))
    if found := re.search(r"Could not (?:override|append to config|delete from config)\W+(?:An item is already at )?"
                          r"'([^']+)'", text):
        key = found.group(1)
        override = _find_override(key, overrides)
        if override:
            detail = ("already exists; accepted: key=value without +" if override.startswith("+")
                      else "unknown key; accepted: keys shown by --cfg job (use +key=value to add one)")
            return _Rejected(override, problem=f"{key}: {detail}")
    if found := re.search(r"Could not find '([^/']+)/([^']+)'", text):
        group, option = found.groups()
        override = _find_override(group, overrides)
        problem = f"{group}: no option {option!r}; accepted: {', '.join(group_options(group, config_dirs))}"
        return _Rejected(override or "", problem=problem)
    if found := re.search(r"Error parsing override '([^']+)'", text):
        return _Rejected(found.group(1), problem="overrides: " + text[:300])
    return None


def option_file_problems(exc: Exception, config_dirs: list[str]) -> list[str]:
    """Every bad key of the group option file Hydra stopped at ("In 'data/bad': ..."), one line each: Hydra stops at
    the first, so each key of the file is merged into the group's schema on its own. Empty when the file is not a
    plain group option (a `# @package` file, a polymorphic group) or none of its keys is at fault."""
    from omegaconf import OmegaConf

    found = re.search(r"In '([^'/]+)/([^']+)': \w+ raised while composing config", " ".join(str(exc).split()))
    if not found or found.group(1) in POLYMORPHIC:
        return []
    group, option = found.groups()
    folders = [*(Path(d).expanduser() for d in reversed(config_dirs)), CONF_DIR]  # the user's first, as Hydra
    path = next((f / group / f"{option}.yaml" for f in folders if (f / group / f"{option}.yaml").is_file()), None)
    if path is None or "@package" in path.read_text():
        return []
    values = OmegaConf.load(path)
    schema = OmegaConf.structured(SweepConfig)[group]
    return [problem for key in values if (problem := _key_problem(schema, group, str(key), values[key], path))]


def _key_problem(schema: Any, group: str, key: str, value: Any, path: Path) -> str | None:
    """One key of an option file merged alone into its group's schema: None, or the problem on one line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    where = f"{path.parent.name}/{path.name}"
    try:
        OmegaConf.merge(schema, {key: value})
    except ConfigKeyError:
        return f"{group}.{key}: unknown key in {where}; accepted: keys shown by --cfg job"
    except OmegaConfBaseException as exc:
        return f"{group}.{key}: got {value!r} in {where}; accepted: {_type_name(str(exc))}"
    return None


def _compose_all(overrides: list[str], config_dirs: list[str]) -> tuple[dict[str, Any], list[_Rejected]]:
    """Compose, setting aside each override Hydra rejects; raise ConfigError when nothing composes."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    remaining, rejected = list(overrides), []
    while True:
        try:
            composed = _compose_once(remaining, config_dirs)
        except (HydraException, OmegaConfBaseException) as exc:
            found = _rejected(exc, remaining, config_dirs)
            if found is None or found.override not in remaining:
                problems = [describe(r, None) for r in rejected]
                own = [found.problem] if found else option_file_problems(exc, config_dirs) or [hydra_problem(exc)]
                raise ConfigError([*problems, *own]) from None
            rejected.append(found)
            remaining.remove(found.override)
            continue
        data = OmegaConf.to_container(composed, resolve=True)
        data.pop("hydra", None)
        return data, rejected


def describe(rejected: _Rejected, composed: dict[str, Any] | None) -> str:
    """The one-line problem: a wrong type is described by config.py's own check of that key when it has one."""
    if rejected.problem:
        return rejected.problem
    if composed is not None:
        trial = {**composed}
        set_dotted(trial, rejected.key, rejected.value)
        try:
            SweepConfig.from_dict(trial)
        except ConfigError as exc:
            own = [p for p in exc.problems if p.startswith(f"{rejected.key}:")]
            if own:
                return own[0]
    return f"{rejected.key}: got {rejected.value!r}; accepted: {rejected.expected}"


def hydra_problem(exc: Exception) -> str:
    """Any other Hydra error, on one line."""
    text = " ".join(str(exc).split())
    if match := re.search(r"Could not load '([^']+)'", text):
        return f"{match.group(1)}: cannot be loaded"
    return "overrides: " + text[:300]


def _pinning(overrides: list[str]) -> dict[str, str]:
    """config key -> override, for the plain overrides of dotted config keys (those that pin a searched key)."""
    pins = {}
    for override in overrides:
        key = override_key(override)
        if not override.startswith(("+", "~")) and "." in key and not key.startswith(("search_space.", "hydra.")):
            pins[key] = override
    return pins


def pin_searched_keys(data: dict[str, Any], overrides: list[str]) -> None:
    """A plain override of a searched key pins it: its dimension becomes that one value."""
    pins = _pinning(overrides)
    space = data.get("search_space") or {}
    for name, dim in space.items():
        if isinstance(dim, dict) and dim.get("key") in pins:
            space[name] = {"key": dim["key"], "type": "choice", "values": [get_dotted(data, dim["key"])]}


def pin_notes(cfg: SweepConfig, overrides: list[str]) -> list[str]:
    """One line per dimension the overrides pinned (what the sweep says when it starts)."""
    pins = _pinning(overrides)
    return [f"{pins[dim.key]} pins {name}: search_space.{name} is not searched in this sweep"
            for name, dim in cfg.search_space.items() if dim.key in pins]


def with_absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Local data and model paths made absolute: trials run in their own working directory."""
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path

    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=absolute(cfg.data.path)),
        model=dataclasses.replace(cfg.model, name_or_path=absolute(cfg.model.name_or_path)),
    )


def compose_config(overrides: list[str], config_dirs: list[str] | None = None) -> SweepConfig:
    """conf/ + the user's config dirs + overrides -> a validated SweepConfig, as the command line composes it.
    Every problem (Hydra's included) is one line of the ConfigError it raises; `pin_notes` says what was pinned."""
    config_dirs = [str(d) for d in config_dirs or []]
    problems = [f"--config-dir: {d} is not a folder; accepted: a folder of config groups such as "
                "search_space/<name>.yaml" for d in config_dirs if not Path(d).expanduser().is_dir()]
    if problems:
        raise ConfigError(problems)
    data, rejected = _compose_all(overrides, config_dirs)
    pin_searched_keys(data, overrides)
    problems = [describe(r, data) for r in rejected]
    try:
        cfg = SweepConfig.from_dict(data)
    except ConfigError as exc:
        problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    return with_absolute_paths(cfg)


def split_config_dirs(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the user's config dirs, the other arguments) from `--config-dir DIR`, `--config-dir=DIR`, `-cd DIR`."""
    dirs, rest, args = [], [], iter(argv)
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            dirs.append(value or next(args, ""))
        else:
            rest.append(arg)
    return dirs, rest


def hydra_main(argv: list[str], task: Callable[[SweepConfig, list[str]], None]) -> None:
    """Hydra's own entry, for its flags (--cfg job, --help, --info, ...); validated configs go to `task`."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def main(dcfg: Any) -> None:
        overrides = list(HydraConfig.get().overrides.task)
        data = OmegaConf.to_container(dcfg, resolve=True)
        data.pop("hydra", None)
        pin_searched_keys(data, overrides)
        try:
            task(with_absolute_paths(SweepConfig.from_dict(data)), overrides)
        except ConfigError as exc:
            fail(exc.problems)

    saved = sys.argv
    sys.argv = [saved[0], *argv]
    try:
        main()
    finally:
        sys.argv = saved


def composed_yaml(cfg: SweepConfig) -> str:
    """The config as YAML (what config.yaml of a sweep holds, before secrets are removed)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(to_dict(cfg))
