"""Dataset row formats, brought to one shape: a conversation (chat messages) or a plain text.

    prompt_answer  {"prompt": ..., "answer": ...}                      one user turn, one assistant turn
    messages       {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}   multi-turn
    alpaca         {"instruction": ..., "input": ..., "output": ...}   input optional
    text           {"text": ...}                                      plain completion, loss on every token

Field names come from `data.*_field`. `auto` picks the format whose fields the first rows have. The loss of a
conversation covers every assistant turn and nothing else; generation metrics answer the last user turn and
compare with the last assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_tune.config import DataConfig

ROLES = ("system", "user", "assistant")
DETECT_ROWS = 20  # rows `auto` looks at


@dataclass
class Example:
    """One row in the common shape: `messages` for the conversational formats, `text` for plain text."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The conversation up to its last assistant turn (what a model answers at evaluation)."""
        last = max(i for i, m in enumerate(self.messages or []) if m["role"] == "assistant")
        return (self.messages or [])[:last]

    @property
    def reference(self) -> str:
        """The last assistant turn (what a generated answer is scored against)."""
        return [m for m in self.messages or [] if m["role"] == "assistant"][-1]["content"]


def fields_of(fmt: str, cfg: DataConfig) -> tuple[str, ...]:
    """The fields a row of `fmt` must have (alpaca's input is optional)."""
    return {"prompt_answer": (cfg.prompt_field, cfg.answer_field), "messages": (cfg.messages_field,),
            "alpaca": (cfg.instruction_field, cfg.output_field), "text": (cfg.text_field,)}[fmt]


def detect(rows: list[dict[str, Any]], cfg: DataConfig) -> str | None:
    """The format whose fields most of the first rows have (row checks then name the others); None when no row
    has the fields of any format."""
    sample = [r for r in rows[:DETECT_ROWS] if isinstance(r, dict)]
    fits = {fmt: sum(all(f in row for f in fields_of(fmt, cfg)) for row in sample)
            for fmt in ("messages", "prompt_answer", "alpaca", "text")}
    best = max(fits, key=lambda fmt: fits[fmt])  # the first of equals, in the order above
    return best if fits[best] else None


def row_problem(row: Any, fmt: str, cfg: DataConfig) -> str | None:
    """What is wrong with one row for `fmt` (None when it is usable)."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    missing = [f for f in fields_of(fmt, cfg) if f not in row or row[f] is None]
    if missing:
        return f"missing field(s) {', '.join(missing)} for data.format={fmt}"
    if fmt == "messages":
        return messages_problem(row[cfg.messages_field])
    checked = [*fields_of(fmt, cfg), *([cfg.input_field] if fmt == "alpaca" and row.get(cfg.input_field) else [])]
    wrong = [f for f in checked if not _is_text(row[f], allow_numbers=fmt != "text")]
    return f"field(s) {', '.join(wrong)} must be text" if wrong else None


def _is_text(value: Any, allow_numbers: bool) -> bool:
    """Text, or (a prompt/answer/output) a number, which is read as its text (GSM8K-style answers)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str) or (allow_numbers and number)


def messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content}"
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            return f"each message needs role ({', '.join(ROLES)}) and text content; got {str(turn)[:80]}"
    if not any(turn["role"] == "assistant" for turn in messages):
        return "a messages row has no assistant turn (nothing to learn or to score)"
    return None


def to_example(row: dict[str, Any], fmt: str, cfg: DataConfig) -> Example:
    """A checked row in the common shape; the system prompt (data.system_prompt) leads conversations that have
    none of their own."""
    if fmt == "text":
        return Example(text=row[cfg.text_field])
    if fmt == "messages":
        messages = [{"role": m["role"], "content": m["content"]} for m in row[cfg.messages_field]]
    elif fmt == "alpaca":
        extra = row.get(cfg.input_field)
        user = f"{row[cfg.instruction_field]}\n\n{extra}" if extra else str(row[cfg.instruction_field])
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": str(row[cfg.output_field])}]
    else:
        messages = [{"role": "user", "content": str(row[cfg.prompt_field])},
                    {"role": "assistant", "content": str(row[cfg.answer_field])}]
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return Example(messages=messages)
