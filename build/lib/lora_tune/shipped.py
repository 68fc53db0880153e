"""Where the files lora_tune ships live: the Hydra configs, the task data and the model architecture configs.

In a checkout, conf/ and data/ sit at the repository's top level; a wheel maps them into the package as
lora_tune/conf and lora_tune/task_data (pyproject.toml), so `pip install .` works from any directory.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _shipped(in_wheel: str, in_checkout: str) -> Path:
    inside = PACKAGE_DIR / in_wheel
    return inside if inside.is_dir() else PACKAGE_DIR.parent / in_checkout


CONF_DIR = _shipped("conf", "conf")  # Hydra config groups
DATA_DIR = _shipped("task_data", "data")  # embedded:<task> datasets
MODEL_CONFIGS_DIR = PACKAGE_DIR / "model_configs"  # architectures for dry runs without a hub
IN_CHECKOUT = CONF_DIR.parent == PACKAGE_DIR.parent  # False when running from an installed wheel
