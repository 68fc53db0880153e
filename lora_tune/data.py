"""Task data: read the splits (a file, a folder of split files, a shipped task or a hub dataset), check every row,
carve missing splits from train, and tokenize with the chat template.

    data.path=my.jsonl                      one file: validation and test are carved from it (seeded)
    data.path=my_folder                     <split>.jsonl|json|parquet files (names: data.*_split)
    data.path=embedded:dates                a task shipped with lora_tune (data/<task>)
    data.path=org/dataset data.name=...     a hub dataset (a cluster with egress), data.revision pins it

A conversation's loss covers its assistant turns only (the tokens the chat template renders for them, up to
and including the end-of-turn token); plain text is supervised on every token. An example longer than
`data.max_seq_len` loses its beginning (the prompt is cut from the left) and keeps its last answer whole; one
whose last answer alone does not fit is dropped and counted. Batches are drawn by step from seeded
permutations (grouped by length, or packed several examples to a row), so a resumed trial continues at
exactly the same data position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_tune import formats
from lora_tune.config import DataConfig
from lora_tune.shipped import DATA_DIR

IGNORE_INDEX = -100
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
EMBEDDED_PREFIX = "embedded:"
MAX_PROBLEMS_PER_FILE = 5
GROUP_FACTOR = 16  # length grouping: batches are formed inside windows of this many batches
# A documented plain template for base models without a chat template of their own (data.chat_template overrides).
PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### User:\n{{ m['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


class DataError(ValueError):
    """Data that cannot be used; every problem one line naming the file (and line) and what is accepted."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Rows:
    """One split's rows with where each came from (file:line)."""

    rows: list[Any] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    origin: str = ""


def local_path(path: str) -> Path:
    """`embedded:<task>` -> the task shipped with lora_tune (data/<task>); anything else as a local path."""
    if path.startswith(EMBEDDED_PREFIX):
        return DATA_DIR / path.removeprefix(EMBEDDED_PREFIX)
    return Path(path).expanduser()


def embedded_tasks() -> list[str]:
    return sorted(f"{EMBEDDED_PREFIX}{p.name}" for p in DATA_DIR.iterdir() if p.is_dir())


def looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and not Path(path).suffix


# --- reading ---------------------------------------------------------------------------------------------


def read_file(path: Path) -> Rows:
    """Rows of a .jsonl, .json (a list, or JSON lines) or .parquet file. JSON is read with `json` rather than
    datasets' builder, which turns "2024-03-15" into a timestamp."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            return Rows(rows, [f"{path}:{i}" for i in range(1, len(rows) + 1)], str(path))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError([f"data.path: cannot read {path} ({str(exc).splitlines()[0][:200]})"]) from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError([f"data.path: {path}: not valid JSON ({exc.msg} at line {exc.lineno})"]) from None
        return Rows(rows, [f"{path}:[{i}]" for i in range(len(rows))], str(path))
    out, problems = Rows(origin=str(path)), []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.rows.append(json.loads(line))
            out.where.append(f"{path}:{number}")
        except json.JSONDecodeError as exc:
            problems.append(f"data.path: {path}:{number}: not valid JSON ({exc.msg})")
    if problems:
        raise DataError(problems[:MAX_PROBLEMS_PER_FILE])
    return out


def split_files(folder: Path) -> dict[str, Path]:
    """<split name> -> file, for the data files of a folder."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in DATA_SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
    return found


def read_hub(cfg: DataConfig) -> dict[str, Rows]:
    """Every split of a hub dataset (downloaded into the datasets cache)."""
    import datasets

    try:
        loaded = datasets.load_dataset(cfg.path, name=cfg.name, revision=cfg.revision)
    except Exception as exc:  # noqa: BLE001 - no network, unknown id, bad subset: one line for the user
        reason = str(exc).splitlines()[0][:200]
        raise DataError([f"data.path: cannot load the hub dataset {cfg.path!r} ({reason}); accepted: a local file "
                         "or folder, embedded:<task>, or a hub id reachable from here"]) from None
    return {name: Rows(split.to_list(), [f"{cfg.path}[{name}]:{i}" for i in range(len(split))], f"{cfg.path}[{name}]")
            for name, split in loaded.items()}


def read_source(cfg: DataConfig) -> dict[str, Rows]:
    """split name -> rows, from wherever data.path points; a single file is all train."""
    path = local_path(cfg.path)
    if cfg.path.startswith(EMBEDDED_PREFIX) and not path.is_dir():
        raise DataError([f"data.path: no shipped task {cfg.path!r}; accepted: {', '.join(embedded_tasks())}, a "
                         "file, a folder or a hub dataset id"])
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise DataError([f"data.path: {path} is a {path.suffix or 'suffix-less'} file; accepted: "
                             f"{', '.join(DATA_SUFFIXES)}"])
        return {cfg.train_split: read_file(path)}
    if path.is_dir():
        files = split_files(path)
        if cfg.train_split not in files:
            raise DataError([f"data.path: {path} has no {cfg.train_split} split; accepted: a folder with "
                             f"{cfg.train_split}.jsonl (.json, .parquet) and optional {cfg.eval_split} and "
                             f"{cfg.test_split} files, or a single data file"])
        problems, splits = [], {}
        for split in {cfg.train_split, cfg.eval_split, cfg.test_split} & set(files):
            try:
                splits[split] = read_file(files[split])
            except DataError as exc:
                problems += exc.problems
        if problems:
            raise DataError(problems)
        return splits
    if looks_like_hub_id(cfg.path):
        return read_hub(cfg)
    raise DataError([f"data.path: {cfg.path} does not exist; accepted: a .jsonl/.json/.parquet file, a folder of "
                     "split files, embedded:<task> or a hub dataset id"])


# --- splits, formats and checks --------------------------------------------------------------------------


@dataclass
class Splits:
    """The three splits as checked Examples, the format found and what was done to get them (one line each)."""

    train: list[formats.Example]
    eval: list[formats.Example]
    test: list[formats.Example]
    format: str
    notes: list[str]


def carve_size(size: float, available: int) -> int:
    return int(size) if size >= 1 else max(1, round(size * available))


def carve(splits: dict[str, list[formats.Example]], origin: str, cfg: DataConfig,
          seed: int) -> tuple[dict[str, list[formats.Example]], list[str]]:
    """Missing eval/test splits are carved from train: a seeded permutation, test first, then eval."""
    import numpy as np

    missing = [(s, size, key) for s, size, key in ((cfg.test_split, cfg.test_size, "data.test_size"),
                                                   (cfg.eval_split, cfg.eval_size, "data.eval_size"))
               if s not in splits]
    if not missing:
        return splits, []
    train = splits[cfg.train_split]
    sizes = [carve_size(size, len(train)) for _, size, _ in missing]
    if sum(sizes) >= len(train):
        keys = ", ".join(f"{key}={size}" for (_, size, key) in missing)
        raise DataError([f"{missing[0][2]}: {origin} has {len(train)} training rows, too few to carve "
                         f"{' + '.join(map(str, sizes))} for {' and '.join(s for s, _, _ in missing)} ({keys}); "
                         "accepted: smaller sizes, or the splits as files of their own"])
    order = [int(i) for i in np.random.default_rng([seed, 7]).permutation(len(train))]
    out, start, notes = dict(splits), 0, []
    for (split, size, key), count in zip(missing, sizes):
        out[split] = [train[i] for i in order[start:start + count]]
        start += count
        notes.append(f"no {split} split in {origin}: carved {count} rows from {cfg.train_split} ({key}={size})")
    out[cfg.train_split] = [train[i] for i in order[start:]]
    return out, notes


def choose_format(train: Rows, cfg: DataConfig) -> tuple[str, list[str]]:
    if cfg.format != "auto":
        return cfg.format, []
    if not train.rows:
        raise DataError([f"data.path: the {cfg.train_split} split ({train.origin}) holds no rows; accepted: at least "
                         "one row"])
    found = formats.detect(train.rows, cfg)
    if found is None:
        keys = sorted({k for row in train.rows[:formats.DETECT_ROWS] if isinstance(row, dict) for k in row})
        raise DataError([f"data.format: cannot tell the format of {train.origin} from its first rows (fields: "
                         f"{', '.join(keys) or 'none'}); accepted: prompt_answer ({cfg.prompt_field}, "
                         f"{cfg.answer_field}), messages ({cfg.messages_field}), alpaca ({cfg.instruction_field}, "
                         f"{cfg.output_field}), text ({cfg.text_field}); set data.format and the *_field names"])
    return found, [f"data.format=auto: {train.origin} reads as {found}"]


def to_examples(rows: Rows, fmt: str, cfg: DataConfig, split: str) -> list[formats.Example]:
    """Every row checked (problems name file and line, at most a few per file) and converted."""
    problems = []
    for row, where in zip(rows.rows, rows.where):
        problem = formats.row_problem(row, fmt, cfg)
        if problem:
            problems.append(f"data.path: {where}: {problem}")
    if problems:
        raise DataError(problems[:MAX_PROBLEMS_PER_FILE])
    if not rows.rows:
        raise DataError([f"data.path: the {split} split ({rows.origin}) holds no rows; accepted: at least one row"])
    return [formats.to_example(row, fmt, cfg) for row in rows.rows]


def load_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """train / eval / test Examples; raises DataError with every problem found (rows first, then the carve)."""
    rows = read_source(cfg)
    fmt, detected = choose_format(rows[cfg.train_split], cfg)
    problems, examples = [], {}
    for split in sorted(set(rows), key=[cfg.train_split, cfg.eval_split, cfg.test_split].index):
        try:
            examples[split] = to_examples(rows[split], fmt, cfg, split)
        except DataError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise DataError(problems)
    examples, notes = carve(examples, rows[cfg.train_split].origin, cfg, seed)
    return Splits(examples[cfg.train_split], examples[cfg.eval_split], examples[cfg.test_split], fmt, detected + notes)


def check_data(cfg: DataConfig, seed: int = 0) -> list[str]:
    """Every problem with the data, one line each (empty when it is usable); nothing is tokenized."""
    try:
        load_splits(cfg, seed)
    except DataError as exc:
        return exc.problems
    return []


# --- tokenization -----------------------------------------------------------------------------------------


def with_chat_template(tokenizer: Any, cfg: DataConfig) -> Any:
    """data.chat_template, else the tokenizer's own, else the plain template (### User / ### Assistant)."""
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_TEMPLATE
    return tokenizer


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The conversation so far, ending where the assistant's answer starts (for generation)."""
    return _render(tokenizer, messages, generation_prompt=True)


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input_ids, labels): the rendered conversation, labels on each assistant turn's tokens up to and including
    its end-of-turn (EOS) token; what the template adds after EOS stays unsupervised."""
    ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if prompt[: len(ids)] != ids or full[: len(prompt)] != prompt:
            raise DataError(["data.chat_template: the chat template does not render a conversation's turns as "
                             "prefixes of each other; accepted: a template that appends each turn (ChatML-like)"])
        answer = full[len(prompt):]
        if tokenizer.eos_token_id in answer:
            answer = answer[: answer.index(tokenizer.eos_token_id) + 1]
        else:
            answer = answer + [tokenizer.eos_token_id]
        labels += [IGNORE_INDEX] * (len(prompt) - len(ids)) + answer
        ids = prompt + answer
    return ids, labels


def truncate(ids: list[int], labels: list[int], max_len: int) -> tuple[list[int], list[int]] | None:
    """Cut from the left to `max_len`; None when the last answer alone does not fit (the example is dropped)."""
    if len(ids) <= max_len:
        return ids, labels
    last_answer = len(labels) - next(i for i, label in enumerate(reversed(labels)) if label == IGNORE_INDEX)
    if len(ids) - last_answer > max_len - 1:  # keep at least one prompt token before the answer
        return None
    return ids[-max_len:], labels[-max_len:]


def encode_text(tokenizer: Any, text: str, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Plain text + EOS in blocks of `max_len` tokens, every token supervised."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [ids[i:i + max_len] for i in range(0, len(ids), max_len)]
    return [(block, block) for block in blocks if len(block) > 1]


def encode(tokenizer: Any, example: formats.Example, max_len: int) -> list[dict[str, list[int]]]:
    """Training examples from one Example: one per conversation (none if dropped), blocks for plain text."""
    if example.text is not None:
        pieces = encode_text(tokenizer, example.text, max_len)
    else:
        cut = truncate(*encode_conversation(tokenizer, example.messages), max_len)
        pieces = [cut] if cut else []
    return [{"input_ids": ids, "labels": labels} for ids, labels in pieces]


@dataclass
class Generation:
    """A prompt to answer at evaluation (tokenized once) and the reference to score the answer against."""

    prompt_ids: list[int]
    reference: str


@dataclass
class TaskData:
    """Tokenized train and eval examples, the generation prompts, and what was done to get them."""

    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    generation: list[Generation]
    format: str = "prompt_answer"
    dropped: int = 0
    notes: list[str] = field(default_factory=list)


def encode_all(tokenizer: Any, examples: list[formats.Example], max_len: int) -> tuple[list[dict], int]:
    out, dropped = [], 0
    for example in examples:
        pieces = encode(tokenizer, example, max_len)
        dropped += not pieces
        out += pieces
    return out, dropped


def generation_items(tokenizer: Any, examples: list[formats.Example], max_len: int) -> list[Generation]:
    """Prompts (cut from the left to max_seq_len) and references for the generation metrics."""
    return [Generation(encode_prompt(tokenizer, e.prompt)[-max_len:], e.reference)
            for e in examples if e.messages is not None]


def prepare_task_data(tokenizer: Any, cfg: DataConfig, seed: int = 0) -> TaskData:
    """Load, check and tokenize the train and eval splits; raises DataError (also when the eval examples that
    survive truncation have no supervised token)."""
    splits = load_splits(cfg, seed)
    notes = list(splits.notes)
    if splits.format != "text" and not cfg.chat_template and not getattr(tokenizer, "chat_template", None):
        notes.append("the model has no chat template: conversations use the plain one (### User: / ### Assistant:); "
                     "data.chat_template sets another")
    tokenizer = with_chat_template(tokenizer, cfg)
    train, dropped = encode_all(tokenizer, splits.train[: cfg.max_train_examples], cfg.max_seq_len)
    evaluation, dropped_eval = encode_all(tokenizer, splits.eval[: cfg.eval_examples], cfg.max_seq_len)
    if dropped + dropped_eval:
        notes.append(f"dropped {dropped} train and {dropped_eval} eval examples whose last answer alone exceeds "
                     f"data.max_seq_len={cfg.max_seq_len}")
    if not train:
        raise DataError([f"data.max_seq_len: no training example fits in {cfg.max_seq_len} tokens; accepted: a "
                         "larger max_seq_len"])
    if cfg.eval_examples and not any(label != IGNORE_INDEX for e in evaluation for label in e["labels"]):
        raise DataError([f"data.eval_split: the {cfg.eval_split} examples have no supervised token left (after "
                         f"truncation to data.max_seq_len={cfg.max_seq_len}): an eval loss of nothing; accepted: "
                         "rows with answers that fit max_seq_len"])
    generation = generation_items(tokenizer, splits.eval[: cfg.exact_match_examples], cfg.max_seq_len)
    return TaskData(train, evaluation, generation, splits.format, dropped + dropped_eval, notes)


def test_items(tokenizer: Any, cfg: DataConfig, seed: int = 0) -> tuple[list[dict], list[Generation]]:
    """The test split: tokenized examples (for the test loss) and generation items, capped at test_examples."""
    examples = load_splits(cfg, seed).test[: cfg.test_examples]
    tokenizer = with_chat_template(tokenizer, cfg)
    return encode_all(tokenizer, examples, cfg.max_seq_len)[0], generation_items(tokenizer, examples, cfg.max_seq_len)


# --- batches ------------------------------------------------------------------------------------------------


def batch_indices(step: int, batch_size: int, lengths: list[int], seed: int, group_by_length: bool = True) -> list[int]:
    """Example indices for 1-based `step`: epoch-wise seeded permutations, so any step is reproducible. With
    `group_by_length`, each window of GROUP_FACTOR batches is sorted by length before it is cut into batches
    (less padding), and the batches of a window are taken in a seeded order."""
    import numpy as np

    n = len(lengths)
    window = batch_size * GROUP_FACTOR if group_by_length else batch_size
    first = (step - 1) * batch_size
    indices = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        start = offset - offset % window
        block = [int(i) for i in order[start:start + window]]
        if group_by_length and len(block) > batch_size:
            block = _grouped(block, lengths, batch_size, [seed, epoch, start])
        indices.append(block[offset - start])
    return indices


def _grouped(block: list[int], lengths: list[int], batch_size: int, rng_seed: list[int]) -> list[int]:
    import numpy as np

    by_length = sorted(block, key=lambda i: (lengths[i], i))
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    order = np.random.default_rng(rng_seed).permutation(len(batches))
    return [i for b in order for i in batches[int(b)]]


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


def pack(examples: list[dict[str, list[int]]], capacity: int, pad_id: int) -> dict[str, Any]:
    """Several examples per row (first fit, at most `capacity` tokens a row), position ids restarting at 0 for
    each: the padding-free layout transformers turns into attention kept inside each example (no attention
    mask). A row's padding is a sequence of its own, after the last example, so it changes no real token."""
    import torch

    rows: list[list[dict[str, list[int]]]] = []
    for example in sorted(examples, key=lambda e: -len(e["input_ids"])):
        row = next((r for r in rows if sum(len(e["input_ids"]) for e in r) + len(example["input_ids"]) <= capacity),
                   None)
        if row is None:
            rows.append([example])
        else:
            row.append(example)
    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids, labels, positions = [], [], []
    for row in rows:
        flat_ids = [t for e in row for t in e["input_ids"]]
        flat_labels = []
        for e in row:  # an example's first token is never a target (as unpacked): not from the previous example
            flat_labels += [IGNORE_INDEX] + e["labels"][1:]
        pad = width - len(flat_ids)
        ids.append(flat_ids + [pad_id] * pad)
        labels.append(flat_labels + [IGNORE_INDEX] * pad)
        positions.append([p for e in row for p in range(len(e["input_ids"]))] + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}
