"""Tests for scripts/make_data.py and the shipped data/dates dataset."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "make_data.py"
SHIPPED = REPO_ROOT / "data" / "dates"
SPLITS = ("train", "validation", "test")
EXPECTED_SIZES = {"train": 3000, "validation": 300, "test": 300}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_data() -> ModuleType:
    return load_script()


@pytest.fixture(scope="module")
def generated(make_data: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dates")
    make_data.main(["--out", str(out)])
    return out


def read_jsonl(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_split_sizes_and_fields(generated: Path) -> None:
    for split in SPLITS:
        rows = read_jsonl(generated / f"{split}.jsonl")
        assert len(rows) == EXPECTED_SIZES[split]
        for i, row in enumerate(rows):
            assert set(row) == {"id", "prompt", "answer"}
            assert row["id"] == f"dates-{split}-{i:05d}"


def test_no_prompt_overlap_between_splits(generated: Path) -> None:
    prompts = {split: [r["prompt"] for r in read_jsonl(generated / f"{split}.jsonl")] for split in SPLITS}
    for split in SPLITS:
        assert len(set(prompts[split])) == len(prompts[split])
    assert not set(prompts["train"]) & set(prompts["validation"])
    assert not set(prompts["train"]) & set(prompts["test"])
    assert not set(prompts["validation"]) & set(prompts["test"])


def test_answers_are_iso_and_consistent_with_prompt(make_data: ModuleType, generated: Path) -> None:
    for split in SPLITS:
        for row in read_jsonl(generated / f"{split}.jsonl"):
            date = dt.date.fromisoformat(row["answer"])
            assert row["answer"] == date.isoformat()
            assert dt.date(1950, 1, 1) <= date <= dt.date(2049, 12, 31)
            prompt = row["prompt"]
            assert str(date.year) in prompt
            assert str(date.day) in prompt
            for i, weekday in enumerate(make_data.WEEKDAYS):
                if weekday[:3] in prompt:
                    assert i == date.weekday(), row


def test_generation_is_deterministic(make_data: ModuleType, tmp_path: Path) -> None:
    make_data.main(["--seed", "7", "--out", str(tmp_path / "a")])
    make_data.main(["--seed", "7", "--out", str(tmp_path / "b")])
    for split in SPLITS:
        a = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        b = (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert a == b
    assert make_data.generate(7) != make_data.generate(8)


def test_shipped_data_matches_default_seed(generated: Path) -> None:
    for split in SPLITS:
        shipped = SHIPPED / f"{split}.jsonl"
        assert shipped.read_bytes() == (generated / f"{split}.jsonl").read_bytes(), (
            f"{shipped} is stale; regenerate with `python scripts/make_data.py`"
        )
