"""Task data: load a split (JSONL/parquet folder or hub dataset), check rows, tokenize with the chat template.

Each row has a prompt and an answer (field names from `data.*`). Training examples are the chat-formatted
prompt followed by the answer and EOS, with the loss only on the answer tokens. Batches are drawn by step
from a seeded permutation per epoch, so a resumed trial continues at exactly the same data position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_tune.config import DataConfig

IGNORE_INDEX = -100
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def split_file(cfg: DataConfig, split: str) -> Path | None:
    """The local file holding `split`, or None when `data.path` is not a local folder (a hub id)."""
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        return None
    for suffix in DATA_SUFFIXES:
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    raise FileNotFoundError(f"data.path: {folder} has no {split} split; accepted: {split}.jsonl or {split}.parquet")


def check_jsonl(path: Path, fields: tuple[str, ...]) -> list[str]:
    """Problems in a JSONL file, each naming the file and line; empty when every row is usable."""
    problems = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"data.path: {path}:{number}: not valid JSON ({exc.msg})")
                continue
            missing = [f for f in fields if not isinstance(row, dict) or not isinstance(row.get(f), str)]
            if missing:
                problems.append(f"data.path: {path}:{number}: missing text field(s) {', '.join(missing)}")
    if not problems and path.stat().st_size == 0:
        problems.append(f"data.path: {path} is empty")
    return problems[:5]


def check_data(cfg: DataConfig) -> list[str]:
    """Validation pass for local data: every split exists and every JSONL row has the fields."""
    if not Path(cfg.path).expanduser().exists():
        if "/" in cfg.path and not cfg.path.startswith((".", "/", "~")) and cfg.path.count("/") == 1:
            return []  # looks like a hub dataset id: checked where it is loaded
        return [f"data.path: {cfg.path} does not exist; accepted: a folder with train/validation/test .jsonl files"]
    problems = []
    for split in (cfg.train_split, cfg.eval_split, cfg.test_split):
        try:
            path = split_file(cfg, split)
        except FileNotFoundError as exc:
            problems.append(str(exc))
            continue
        if path is not None and path.suffix in (".jsonl", ".json"):
            problems.extend(check_jsonl(path, (cfg.prompt_field, cfg.answer_field)))
    return problems


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines as dicts. Read with `json` rather than datasets' JSON builder, which turns "2024-03-15"
    into a timestamp and back into "2024-03-15 00:00:00"."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_rows(cfg: DataConfig, split: str, limit: int | None = None) -> list[dict[str, str]]:
    """Rows of one split as {"prompt", "answer"} dicts: local JSONL, local parquet, or a hub dataset."""
    path = split_file(cfg, split)
    if path is not None and path.suffix in (".jsonl", ".json"):
        records = read_jsonl(path)[:limit]
    else:
        import datasets

        if path is None:
            dataset = datasets.load_dataset(cfg.path, split=split)
        else:
            dataset = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
        records = dataset.select(range(min(limit or len(dataset), len(dataset))))
    return [{"prompt": str(r[cfg.prompt_field]), "answer": str(r[cfg.answer_field])} for r in records]


def chat_prompt(tokenizer: Any, prompt: str, system_prompt: str | None) -> str:
    """The prompt as the model sees it, ending where the assistant's answer starts."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_row(tokenizer: Any, row: dict[str, str], cfg: DataConfig) -> dict[str, list[int]]:
    """input_ids = prompt + answer + EOS; labels mask the prompt so the loss is on the answer only."""
    prompt_ids = tokenizer(chat_prompt(tokenizer, row["prompt"], cfg.system_prompt), add_special_tokens=False)
    answer_ids = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt_ids = prompt_ids["input_ids"][-(cfg.max_seq_len - len(answer_ids)):]  # keep the prompt's end
    input_ids = (prompt_ids + answer_ids)[: cfg.max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[: cfg.max_seq_len]
    return {"input_ids": input_ids, "labels": labels}


@dataclass
class TaskData:
    """Tokenized train/eval examples plus the raw rows exact match generates from."""

    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    exact_match_rows: list[dict[str, str]]


def prepare_task_data(tokenizer: Any, cfg: DataConfig) -> TaskData:
    train_rows = load_rows(cfg, cfg.train_split, cfg.max_train_examples)
    eval_rows = load_rows(cfg, cfg.eval_split, max(cfg.eval_examples, cfg.exact_match_examples))
    return TaskData(
        train=[tokenize_row(tokenizer, r, cfg) for r in train_rows],
        eval=[tokenize_row(tokenizer, r, cfg) for r in eval_rows[: cfg.eval_examples]],
        exact_match_rows=eval_rows[: cfg.exact_match_examples],
    )


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> list[int]:
    """Example indices for 1-based `step`: epoch-wise seeded permutations, so any step is reproducible."""
    import numpy as np

    first = (step - 1) * batch_size
    indices = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, num_examples)
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
        indices.append(int(order[offset]))
    return indices


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a list of examples into tensors (labels padded with IGNORE_INDEX)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    def pad(seq: list[int], value: int) -> list[int]:
        return seq + [value] * (width - len(seq))
    return {
        "input_ids": torch.tensor([pad(e["input_ids"], pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples]),
        "labels": torch.tensor([pad(e["labels"], IGNORE_INDEX) for e in examples]),
    }
