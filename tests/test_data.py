"""Task data: loading keeps text as text, the loss mask covers only the answer, batches are reproducible."""

from __future__ import annotations

from pathlib import Path

from lora_tune import data as task_data
from lora_tune.config import DataConfig
from lora_tune.embedded import TINY
from lora_tune.model import load_tokenizer


def test_rows_load_as_text() -> None:
    rows = task_data.load_rows(DataConfig(), "validation", limit=5)
    assert len(rows) == 5
    assert all(isinstance(r["answer"], str) and len(r["answer"]) == 10 for r in rows)  # not parsed as dates


def test_loss_is_masked_to_the_answer_tokens() -> None:
    tokenizer = load_tokenizer(TINY)
    row = {"prompt": "Convert this date to ISO format (YYYY-MM-DD): March 15, 2024", "answer": "2024-03-15"}
    example = task_data.tokenize_row(tokenizer, row, DataConfig())
    supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != task_data.IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "2024-03-15" + tokenizer.eos_token
    prompt = tokenizer.decode(example["input_ids"][: len(example["input_ids"]) - len(supervised)])
    assert prompt.endswith("<|im_start|>assistant\n") and "March 15, 2024" in prompt


def test_long_prompts_keep_the_answer() -> None:
    tokenizer = load_tokenizer(TINY)
    row = {"prompt": "word " * 200, "answer": "1999-01-02"}
    example = task_data.tokenize_row(tokenizer, row, DataConfig(max_seq_len=32))
    assert len(example["input_ids"]) == 32
    assert sum(label != task_data.IGNORE_INDEX for label in example["labels"]) > 0


def test_batches_are_reproducible_and_cover_each_epoch() -> None:
    first = [task_data.batch_indices(step, 4, 10, seed=1) for step in range(1, 6)]
    again = [task_data.batch_indices(step, 4, 10, seed=1) for step in range(1, 6)]
    assert first == again
    epoch0 = [i for batch in first for i in batch][:10]
    assert sorted(epoch0) == list(range(10))
    assert task_data.batch_indices(1, 4, 10, seed=2) != first[0]


def test_collate_pads_inputs_and_labels() -> None:
    batch = task_data.collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                               {"input_ids": [4], "labels": [4]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def test_malformed_rows_are_named_by_file_and_line(tmp_path: Path) -> None:
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "answer": "b"}\n{oops\n{"prompt": "a"}\n')
    problems = task_data.check_data(DataConfig(path=str(tmp_path)))
    assert problems == [f"data.path: {tmp_path}/train.jsonl:2: not valid JSON (Expecting property name enclosed "
                        "in double quotes)", f"data.path: {tmp_path}/train.jsonl:3: missing text field(s) answer"]
    assert "does not exist" in task_data.check_data(DataConfig(path=str(tmp_path / "missing")))[0]
    assert task_data.check_data(DataConfig()) == []  # the shipped data is clean
