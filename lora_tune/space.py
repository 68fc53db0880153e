"""Search-space entries (conf/search_space/*.yaml) -> ray.tune domains, and sampled values -> config overrides.

Each entry names the config key it sets (`key: peft.r`) and a domain (`type: choice`, `values: [...]`).
List values (target module lists) are encoded as "+"-joined strings, so every search algorithm
(Optuna included) sees plain categorical values and results stay readable: `q_proj+v_proj`.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from lora_tune.config import ConfigError, Dimension

LIST_SEPARATOR = "+"


def encode_value(value: Any) -> Any:
    return LIST_SEPARATOR.join(value) if isinstance(value, (list, tuple)) else value


def decode_value(value: Any) -> Any:
    return value.split(LIST_SEPARATOR) if isinstance(value, str) and LIST_SEPARATOR in value else value


def to_domain(dim: Dimension, grid: bool = False) -> Any:
    """One dimension as a ray.tune domain; `grid` turns categorical choices into grid_search."""
    if dim.type in ("choice", "grid"):
        values = [encode_value(v) for v in dim.values]
        return tune.grid_search(values) if grid or dim.type == "grid" else tune.choice(values)
    if grid:
        raise ConfigError([f"search_space: {dim.key} is {dim.type}; search_alg=grid accepts only choice/grid entries"])
    low, high, q = dim.low, dim.high, dim.q
    makers = {
        "uniform": lambda: tune.uniform(low, high),
        "quniform": lambda: tune.quniform(low, high, q),
        "loguniform": lambda: tune.loguniform(low, high),
        "qloguniform": lambda: tune.qloguniform(low, high, q),
        "randint": lambda: tune.randint(int(low), int(high)),
        "qrandint": lambda: tune.qrandint(int(low), int(high), int(q)),
        "lograndint": lambda: tune.lograndint(int(low), int(high)),
    }
    return makers[dim.type]()


def param_space(dims: dict[str, Dimension], grid: bool = False) -> dict[str, Any]:
    """The Tuner's param_space: {config key: domain}, e.g. {"peft.r": tune.choice([4, 8])}."""
    if not dims:
        raise ConfigError(["search_space: empty; accepted: at least one entry such as r: {key: peft.r, ...}"])
    return {dim.key: to_domain(dim, grid) for dim in dims.values()}


def overrides_from_params(params: dict[str, Any], dims: dict[str, Dimension]) -> dict[str, Any]:
    """A trial's sampled params -> dotted-key overrides for `SweepConfig.trial_config`."""
    keys = {dim.key for dim in dims.values()}
    return {key: decode_value(value) for key, value in params.items() if key in keys}


def column_names(dims: dict[str, Dimension]) -> dict[str, str]:
    """Config key -> results column (the entry's name): {"peft.r": "r"}."""
    return {dim.key: name for name, dim in dims.items()}


def space_size(dims: dict[str, Dimension]) -> int | None:
    """Distinct configurations in the space; None when a dimension is continuous."""
    size = 1
    for dim in dims.values():
        if dim.type not in ("choice", "grid"):
            return None
        size *= len(dim.values)
    return size
