"""scripts/gpu_wheels.py (make gpu-wheels): what a bare GPU machine is given, and that its parts join back into
exactly the bundle (scripts/gpu_check.sh joins them with cat and checks the sha256 the same way)."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import tarfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def gpu_wheels() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_wheels", REPO / "scripts" / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_image_keeps_its_cuda_torch_and_the_model_stack_travels_at_the_tested_versions() -> None:
    module = gpu_wheels()
    image = module.image_packages()
    assert {"torch", "transformers", "numpy", "pyarrow"} <= image and "ray" not in image
    pins = {"torch": "2.13.0", "nvidia-nccl-cu13": "2.29.7", "triton": "3.6.0", "numpy": "2.4.0",
            "transformers": "5.25.0", "peft": "0.21.2", "ray": "2.60.0", "bitsandbytes": "0.50.2"}
    assert module.to_carry(pins, image) == {"bitsandbytes": "0.50.2", "peft": "0.21.2", "ray": "2.60.0",
                                            "transformers": "5.25.0"}


def test_the_parts_each_fit_a_device_call_and_join_into_the_bundle(tmp_path: Path, monkeypatch) -> None:
    module = gpu_wheels()
    monkeypatch.setattr(module, "PART_BYTES", 1000)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1.0-py3-none-any.whl").write_bytes(bytes(range(256)) * 9)
    parts = module.bundle(wheels, tmp_path)
    assert len(parts) > 2 and all(p.stat().st_size <= 1000 for p in parts)
    assert not (tmp_path / "bundle.tar").exists()
    joined = tmp_path / "joined.tar"
    subprocess.run(f"cat {tmp_path}/part-* > {joined}", shell=True, check=True)
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == (tmp_path / "bundle.sha256").read_text().strip()
    with tarfile.open(joined) as tar:
        assert tar.extractfile("wheels/a-1.0-py3-none-any.whl").read() == bytes(range(256)) * 9


def test_a_part_and_the_working_tree_fit_one_device_call() -> None:
    """A device call carries the working tree (tracked files) and the paths named in carry: 64 MiB in all."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tree = sum((REPO / name).stat().st_size for name in tracked.decode().split("\0") if (REPO / name).is_file())
    assert gpu_wheels().PART_BYTES + tree < 64 * 2**20, tree
