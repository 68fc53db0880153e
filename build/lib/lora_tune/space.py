"""Search-space entries (conf/search_space/*.yaml): sampled values -> config overrides, results columns, size.

Pure Python; tuner.py turns the entries into ray.tune domains. Each entry names the config key it sets
(`key: peft.r`) and a domain (`type: choice`, `values: [...]`). List values (target module lists) are encoded as
"+"-joined strings, so every search algorithm (Optuna included) sees plain categorical values and results stay
readable: `q_proj+v_proj`.
"""

from __future__ import annotations

from typing import Any

from lora_tune.config import Dimension

LIST_SEPARATOR = "+"


def encode_value(value: Any) -> Any:
    return LIST_SEPARATOR.join(value) if isinstance(value, (list, tuple)) else value


def decode_value(value: Any) -> Any:
    return value.split(LIST_SEPARATOR) if isinstance(value, str) and LIST_SEPARATOR in value else value


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
