"""`pip install .` (not editable) works anywhere: conf/, the shipped tasks and the model configs are package data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

from tests.conftest import REPO
from tests.procs import run_bounded


def listed_packages() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_config_group_and_task_folder_is_in_the_wheel() -> None:
    expected = {"lora_tune", "lora_tune.model_configs", "lora_tune.conf", "lora_tune.task_data"}
    expected |= {f"lora_tune.conf.{p.name}" for p in (REPO / "conf").iterdir() if p.is_dir()}
    expected |= {f"lora_tune.task_data.{p.name}" for p in (REPO / "data").iterdir() if p.is_dir()}
    assert listed_packages() == expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("dist")
    done = run_bounded([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("lora_tune-*.whl")
    return built, done.stdout + done.stderr


@pytest.mark.slow
def test_the_build_prints_no_warnings_of_the_projects_own(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    # byte-compiling is switched off by this environment's PYTHONDONTWRITEBYTECODE, not by the project
    warnings = [line for line in log.splitlines() if re.search(r"warn|deprecat", line, re.I)
                and "byte-compiling is disabled" not in line]
    assert warnings == []


@pytest.mark.slow
def test_an_installed_wheel_runs_a_sweep_from_any_directory(wheel: tuple[Path, str], tmp_path: Path) -> None:
    built, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies come from this environment (a path line, so its editable lora_tune finder is not loaded)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(built)], check=True,
                   timeout=300)
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    found = subprocess.run([str(python), "-c", "import lora_tune.shipped as s; print(s.CONF_DIR, s.DATA_DIR)"],
                           cwd=where, capture_output=True, text=True, env=env, check=True).stdout.split()
    assert found == [f"{site}/lora_tune/conf", f"{site}/lora_tune/task_data"]
    done = run_bounded([str(python), "-m", "lora_tune.sweep", "experiment=tiny", "num_samples=2", "max_steps=4",
                        "wandb.mode=disabled", "sweep_name=installed", "verbose=0", "data.test_examples=4"],
                       cwd=where, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("lora_tune: winner ")
    assert (where / "runs" / "installed" / "best" / "adapter" / "adapter_model.safetensors").is_file()
    plan = run_bounded([str(python), "-m", "lora_tune.plan", "model=llama3_8b", "resources=gpu",
                        "resources.gpu_memory_gb=24"], cwd=where, capture_output=True, text=True, env=env,
                       timeout=300)
    assert plan.returncode == 0 and "architecture from" in plan.stdout and "llama3_8b.json" in plan.stdout
