"""Test scoring with one pass over each prompt: its KV cache serves the answer's loss and the greedy answer.

Scoring a model on the test split needs the loss of each reference answer and a generated answer, and both start
by running the prompt through the model; separately, the prompt (most of each row) runs twice. Here each batch of
prompts (left-padded, of similar length) is run once, up to its last token, with a cache. A copy of that cache
continues with the last prompt token and the reference answer (teacher forcing: the loss), and the cache itself
continues into `generate`, which decodes from the last prompt token. The results are those of the two separate
passes, up to floating-point rounding; rows where this does not hold (a row whose tokens do not start with its
prompt, or that supervises tokens inside it, as multi-turn conversations do) are scored the separate way.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from lora_tune.data import IGNORE_INDEX, Generation
from lora_tune.loss import supervised_loss_sum, takes_logits_to_keep


def shares_prompts(examples: list[dict], items: list[Generation]) -> bool:
    """Whether each test row's tokens start with its generation prompt (2+ tokens) and supervise only after it."""
    return len(examples) == len(items) > 0 and all(
        1 < len(item.prompt_ids) < len(example["input_ids"])
        and example["input_ids"][:len(item.prompt_ids)] == item.prompt_ids
        and all(label == IGNORE_INDEX for label in example["labels"][:len(item.prompt_ids)])
        for example, item in zip(examples, items))


@torch.no_grad()
def loss_and_answers(model: Any, tokenizer: Any, examples: list[dict], items: list[Generation],
                     max_new_tokens: int, precision: Any, batch_size: int) -> tuple[float, list[str]]:
    """(mean answer-token loss, greedy answers in the items' order); rows must satisfy `shares_prompts`."""
    was_training = model.training
    model.eval()
    total, tokens, answers = 0.0, 0, [""] * len(items)
    with precision.autocast():
        for rows in length_batches([len(item.prompt_ids) for item in items], batch_size):
            batch_total, batch_tokens, texts = _score_batch(
                model, tokenizer, [examples[i] for i in rows], [items[i].prompt_ids for i in rows], max_new_tokens)
            total, tokens = total + batch_total, tokens + batch_tokens
            for i, text in zip(rows, texts):
                answers[i] = text
    model.train(was_training)
    if not tokens:
        raise ValueError("the evaluation examples have no supervised token")
    return total / tokens, answers


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left- or right-padded rows: each row's real tokens count from 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length (shortest first): little padding; callers put results back."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def padded(rows: list[list[int]], value: int, left: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of rows padded with `value` to the longest, on the left or the right."""
    width = max(len(r) for r in rows)
    pads = [[value] * (width - len(r)) for r in rows]
    ids = [p + r if left else r + p for r, p in zip(rows, pads)]
    mask = [[0] * len(p) + [1] * len(r) if left else [1] * len(r) + [0] * len(p) for r, p in zip(rows, pads)]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def _score_batch(model: Any, tokenizer: Any, examples: list[dict], prompts: list[list[int]],
                 max_new_tokens: int) -> tuple[float, int, list[str]]:
    """(sum of answer-token losses, supervised tokens, greedy answers) of one batch."""
    device = next(p for p in model.parameters()).device
    pad, sliced = tokenizer.pad_token_id, takes_logits_to_keep(model)
    prompt_ids, prompt_mask = padded(prompts, pad, left=True, device=device)
    # the teacher-forced tail: the last prompt token, then the reference answer (and what follows it)
    tail_ids, tail_mask = padded([e["input_ids"][len(p) - 1:] for e, p in zip(examples, prompts)], pad, False, device)
    tail_labels, _ = padded([e["labels"][len(p) - 1:] for e, p in zip(examples, prompts)], IGNORE_INDEX, False, device)
    prefix_inputs = {"input_ids": prompt_ids[:, :-1], "attention_mask": prompt_mask[:, :-1],
                     "position_ids": _positions(prompt_mask)[:, :-1], "use_cache": True}
    # only the cache is wanted: no vocabulary-sized logits for every prompt token
    prefix = model(**prefix_inputs, **({"logits_to_keep": 1} if sliced else {})).past_key_values
    mask = torch.cat([prompt_mask[:, :-1], tail_mask], dim=1)
    inputs = {"input_ids": tail_ids, "attention_mask": mask, "position_ids": _positions(mask)[:, -tail_ids.shape[1]:],
              "past_key_values": copy.deepcopy(prefix), "use_cache": True}
    loss = supervised_loss_sum(model, tail_labels, inputs, sliced)
    output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, past_key_values=prefix,
                            max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, pad_token_id=pad,
                            eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(output[:, prompt_ids.shape[1]:], skip_special_tokens=True)
    return float(loss), int((tail_labels[:, 1:] != IGNORE_INDEX).sum()), texts
