"""Task data: every format and layout loads, carves and checks; the loss mask covers the answers only; batches
are reproducible, grouped by length or packed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_tune import data as task_data
from lora_tune.config import DataConfig
from lora_tune.data import IGNORE_INDEX, DataError
from lora_tune.embedded import TINY
from lora_tune.model import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def supervised(example: dict) -> list[int]:
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]


def test_shipped_dates_load_as_text() -> None:
    splits = task_data.load_splits(DataConfig())
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (3000, 300, 300)
    assert splits.format == "prompt_answer" and splits.notes[0].endswith("reads as prompt_answer")
    assert all(len(e.reference) == 10 for e in splits.eval[:5])  # "2024-03-15", not a parsed timestamp


def test_loss_is_masked_to_the_answer_tokens(tokenizer) -> None:
    row = {"prompt": "Convert this date to ISO format (YYYY-MM-DD): March 15, 2024", "answer": "2024-03-15"}
    example = task_data.formats.to_example(row, "prompt_answer", DataConfig())
    (encoded,) = task_data.encode(tokenizer, example, 80)
    assert tokenizer.decode(supervised(encoded)) == "2024-03-15" + tokenizer.eos_token
    prompt = tokenizer.decode(encoded["input_ids"][: len(encoded["input_ids"]) - len(supervised(encoded))])
    assert prompt.endswith("<|im_start|>assistant\n") and "March 15, 2024" in prompt
    assert "Answer with the date only." in prompt  # data.system_prompt


def test_every_assistant_turn_of_a_conversation_is_supervised_and_nothing_else(tokenizer) -> None:
    messages = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."},
                {"role": "user", "content": "What is my name?"}, {"role": "assistant", "content": "Ada."}]
    example = task_data.formats.to_example({"messages": messages}, "messages", DataConfig(system_prompt=None))
    (encoded,) = task_data.encode(tokenizer, example, 200)
    spans, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    spans.append(tokenizer.decode(current))
    assert spans == ["Hello Ada.<|im_end|>", "Ada.<|im_end|>"]
    assert example.reference == "Ada." and example.prompt[-1]["content"] == "What is my name?"


def test_long_prompts_are_cut_from_the_left_and_long_answers_dropped(tokenizer) -> None:
    cfg = DataConfig(system_prompt=None)
    long_prompt = task_data.formats.to_example({"prompt": "word " * 200, "answer": "1999-01-02"}, "prompt_answer", cfg)
    (kept,) = task_data.encode(tokenizer, long_prompt, 32)
    assert len(kept["input_ids"]) == 32
    assert tokenizer.decode(supervised(kept)) == "1999-01-02" + tokenizer.eos_token
    long_answer = task_data.formats.to_example({"prompt": "p", "answer": "word " * 100}, "prompt_answer", cfg)
    assert task_data.encode(tokenizer, long_answer, 32) == []


def test_text_is_supervised_everywhere_in_blocks(tokenizer) -> None:
    example = task_data.formats.to_example({"text": "one two three " * 40}, "text", DataConfig())
    blocks = task_data.encode(tokenizer, example, 32)
    assert len(blocks) > 2 and all(len(b["input_ids"]) <= 32 for b in blocks)
    assert all(b["labels"] == b["input_ids"] for b in blocks)
    assert blocks[-1]["input_ids"][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("fmt,row", [
    ("prompt_answer", {"prompt": "2+2?", "answer": 4}),
    ("messages", {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
    ("alpaca", {"instruction": "Add.", "input": "2+2", "output": "4"}),
    ("text", {"text": "2+2=4"}),
])
def test_formats_are_detected_and_read(tmp_path: Path, fmt: str, row: dict) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [row] * 40)
    splits = task_data.load_splits(DataConfig(path=str(path), system_prompt=None))
    assert splits.format == fmt and f"reads as {fmt}" in splits.notes[0]
    example = splits.train[0]
    if fmt == "text":
        assert example.text == "2+2=4"
    else:
        assert example.reference == "4" and "2+2" in example.prompt[-1]["content"]


def test_alpaca_joins_instruction_and_input() -> None:
    example = task_data.formats.to_example({"instruction": "Add.", "input": "2+2", "output": "4"}, "alpaca",
                                           DataConfig(system_prompt=None))
    assert example.messages[0] == {"role": "user", "content": "Add.\n\n2+2"}
    no_input = task_data.formats.to_example({"instruction": "Say hi.", "output": "hi"}, "alpaca", DataConfig())
    assert no_input.messages[1] == {"role": "user", "content": "Say hi."}


def test_a_single_file_is_carved_into_validation_and_test(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(100)]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    cfg = DataConfig(path=str(path), eval_size=0.1, test_size=15)
    splits = task_data.load_splits(cfg, seed=3)
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (75, 10, 15)
    seen = [e.reference for e in splits.train + splits.eval + splits.test]
    assert sorted(seen) == sorted(r["answer"] for r in rows)  # a partition: nothing lost, nothing twice
    assert [e.reference for e in task_data.load_splits(cfg, seed=3).test] == [e.reference for e in splits.test]
    assert [e.reference for e in task_data.load_splits(cfg, seed=4).test] != [e.reference for e in splits.test]
    assert any("no test split" in n and "carved 15 rows" in n for n in splits.notes)
    assert any("no validation split" in n and "carved 10 rows" in n for n in splits.notes)


def test_a_folder_with_train_only_and_other_split_names(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "fit.jsonl", [{"prompt": "q", "answer": "a"}] * 20)
    write_jsonl(tmp_path / "d" / "dev.jsonl", [{"prompt": "q", "answer": "b"}] * 3)
    cfg = DataConfig(path=str(tmp_path / "d"), train_split="fit", eval_split="dev", test_split="exam", test_size=5)
    splits = task_data.load_splits(cfg)
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (15, 3, 5)
    assert splits.eval[0].reference == "b"


def test_parquet_and_json_arrays_read_too(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"i{n}", "output": f"o{n}"} for n in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    (tmp_path / "validation.json").write_text(json.dumps(rows[:4]))
    (tmp_path / "test.json").write_text(json.dumps(rows[:2]))
    splits = task_data.load_splits(DataConfig(path=str(tmp_path)))
    assert splits.format == "alpaca" and (len(splits.train), len(splits.eval), len(splits.test)) == (30, 4, 2)


BAD = [
    ("train.jsonl", '{"prompt": "a", "answer": "b"}\n{oops\n', "train.jsonl:2: not valid JSON"),
    ("train.jsonl", '{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n', "train.jsonl:2: missing field(s) answer"),
    ("train.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', "train.jsonl:1: a messages row has no "
                                                                            "assistant turn"),
    ("train.jsonl", '{"question": "q", "solution": "s"}\n', "data.format: cannot tell the format of"),
    ("train.jsonl", "", "the train split"),
    ("train.csv", "prompt,answer\n", "accepted: .jsonl, .json, .parquet"),
]


@pytest.mark.parametrize("name,content,expected", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_data_is_one_line_naming_the_file_and_line(tmp_path: Path, name: str, content: str, expected: str) -> None:
    target = tmp_path / name
    target.write_text(content)
    problems = task_data.check_data(DataConfig(path=str(target)))
    assert problems and all("\n" not in p for p in problems)
    assert any(expected in p for p in problems), problems
    assert all(p.split(":")[0].startswith("data.") for p in problems)


def test_a_split_too_small_to_carve_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "few.jsonl", [{"prompt": "q", "answer": "a"}] * 4)
    (problem,) = task_data.check_data(DataConfig(path=str(path), eval_size=2, test_size=2))
    assert problem.startswith("data.test_size: ") and "4 training rows, too few to carve 2 + 2" in problem


def test_the_shipped_data_is_clean() -> None:
    assert task_data.check_data(DataConfig()) == []
    assert "no shipped task" in task_data.check_data(DataConfig(path="embedded:nope"))[0]
    assert "does not exist" in task_data.check_data(DataConfig(path="/nonexistent/x.jsonl"))[0]


def test_an_eval_set_with_nothing_supervised_is_an_error(tmp_path: Path, tokenizer) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "q", "answer": "a"}] * 8)
    write_jsonl(tmp_path / "validation.jsonl", [{"prompt": "q", "answer": "word " * 100}] * 2)
    write_jsonl(tmp_path / "test.jsonl", [{"prompt": "q", "answer": "a"}] * 2)
    with pytest.raises(DataError, match="data.eval_split: the validation examples have no supervised token"):
        task_data.prepare_task_data(tokenizer, DataConfig(path=str(tmp_path), max_seq_len=32))


def test_a_tokenizer_without_a_chat_template_gets_the_plain_one(tokenizer) -> None:
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    task_data.with_chat_template(bare, DataConfig())
    text = bare.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "### User:\nhi\n\n### Assistant:\n"
    own = copy.deepcopy(tokenizer)
    task_data.with_chat_template(own, DataConfig(chat_template="{{ messages[0]['content'] }}"))
    assert own.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"


def test_batches_are_reproducible_and_cover_each_epoch() -> None:
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10]
    first = [task_data.batch_indices(step, 4, lengths, seed=1, group_by_length=False) for step in range(1, 6)]
    again = [task_data.batch_indices(step, 4, lengths, seed=1, group_by_length=False) for step in range(1, 6)]
    assert first == again
    epoch0 = [i for batch in first for i in batch][:10]
    assert sorted(epoch0) == list(range(10))
    assert task_data.batch_indices(1, 4, lengths, seed=2, group_by_length=False) != first[0]


def test_length_grouping_pads_less_and_still_covers_each_epoch() -> None:
    import random

    lengths = [random.Random(i).randint(5, 80) for i in range(256)]
    batches = {g: [task_data.batch_indices(s, 4, lengths, seed=0, group_by_length=g) for s in range(1, 65)]
               for g in (False, True)}
    padding = {g: sum(max(lengths[i] for i in b) * 4 - sum(lengths[i] for i in b) for b in batches[g])
               for g in batches}
    assert padding[True] < padding[False] / 3
    assert sorted(i for b in batches[True] for i in b) == list(range(256))  # one epoch, every example once


def test_collate_pads_inputs_and_labels() -> None:
    batch = task_data.collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                               {"input_ids": [4], "labels": [4]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def test_pack_puts_examples_side_by_side_with_restarting_positions() -> None:
    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]},
                {"input_ids": [6, 7, 8, 9], "labels": [6, 7, 8, 9]}]
    batch = task_data.pack(examples, capacity=6, pad_id=0)
    assert batch["input_ids"].tolist() == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 7, 8, 9, -100, 5], [-100, 2, 3, -100, -100, -100]]
    assert "attention_mask" not in batch
