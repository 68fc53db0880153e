"""scripts/make_shopping.py and the shipped data/shopping dialogues: reproducible, multi-turn, answers right."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "shopping"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_shopping", REPO / "scripts" / "make_shopping.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (SHIPPED / f"{split}.jsonl").read_text().splitlines()]


def test_the_shipped_files_are_the_scripts_output(script: ModuleType, tmp_path: Path) -> None:
    script.main(["--out", str(tmp_path)])
    for split in ("train", "validation", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (SHIPPED / f"{split}.jsonl").read_bytes(), split
    assert script.generate(1)["test"] != script.generate(0)["test"]


def test_sizes_and_no_dialogue_twice() -> None:
    seen = [json.dumps(r["messages"]) for split in ("train", "validation", "test") for r in rows(split)]
    assert [len(rows(s)) for s in ("train", "validation", "test")] == [2000, 200, 200]
    assert len(set(seen)) == len(seen)


def replay(messages: list[dict]) -> list[str]:
    """The list as the user's turns leave it, read back from the assistant's confirmations."""
    items: list[str] = []
    for turn in messages[:-1]:
        if turn["role"] != "assistant":
            continue
        if turn["content"].startswith("Added "):
            items += re.split(r", | and ", turn["content"].removeprefix("Added ").removesuffix("."))
        else:
            items.remove(turn["content"].removeprefix("Removed ").removesuffix("."))
    return items


def test_every_dialogue_is_multi_turn_and_its_last_answer_is_the_list() -> None:
    removals = 0
    for row in rows("train") + rows("test"):
        messages = row["messages"]
        roles = [m["role"] for m in messages]
        assert roles == ["user", "assistant"] * (len(messages) // 2) and len(messages) >= 6
        assert messages[-1]["content"] == ", ".join(replay(messages))
        for user, assistant in zip(messages[:-2:2], messages[1:-2:2]):  # each change is in the user's turn
            for item in re.split(r", | and ", assistant["content"].split(" ", 1)[1].rstrip(".")):
                assert item in user["content"]
        removals += any(m["content"].startswith("Removed ") for m in messages)
    assert 0.2 < removals / 2200 < 0.5


def test_it_reads_as_messages_with_the_configs_system_prompt() -> None:
    from lora_tune.compose import compose_config
    from lora_tune.data import load_splits

    cfg = compose_config(["data=shopping"])
    splits = load_splits(cfg.data)
    assert splits.format == "messages" and len(splits.train) == 2000
    example = splits.test[0]
    assert example.messages[0]["role"] == "system" and "shopping list" in example.messages[0]["content"]
    assert example.reference == rows("test")[0]["messages"][-1]["content"]
