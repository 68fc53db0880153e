"""Held-out evaluation: mean answer-token loss and exact match of greedy answers.

Trials call `eval_loss` and `exact_match` on validation rows; after a sweep, `compare_on_test` scores the
base model and the winner on the test split.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_tune.data import IGNORE_INDEX, chat_prompt, collate


@torch.no_grad()
def eval_loss(model: Any, examples: list[dict], pad_id: int, batch_size: int = 16) -> float:
    """Mean loss over all answer tokens of `examples` (token-weighted, padding ignored)."""
    model.eval()
    total, tokens = 0.0, 0
    on = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(on) for k, v in collate(examples[start:start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        total += losses.item()
        tokens += int((labels != IGNORE_INDEX).sum())
    model.train()
    return total / max(tokens, 1)


def normalize(answer: str) -> str:
    return answer.strip()


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: list[str], system_prompt: str | None,
                     max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers for chat prompts, batched with left padding."""
    model.eval()
    on = next(model.parameters()).device
    answers = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [chat_prompt(tokenizer, p, system_prompt) for p in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(on)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
    model.train()
    return answers


def exact_match(model: Any, tokenizer: Any, rows: list[dict[str, str]], system_prompt: str | None,
                max_new_tokens: int) -> float:
    """Fraction of rows whose greedy answer equals the reference after stripping whitespace."""
    if not rows:
        return float("nan")
    answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows], system_prompt, max_new_tokens)
    hits = sum(normalize(a) == normalize(r["answer"]) for a, r in zip(answers, rows))
    return hits / len(rows)


def compare_on_test(cfg: Any, adapter_dir: str, num_threads: int = 1) -> dict[str, Any]:
    """Exact match on the test split for the base model and base + adapter, in the winner's precision."""
    from peft import PeftModel

    from lora_tune import model as models
    from lora_tune.data import load_rows

    torch.set_num_threads(num_threads)
    rows = load_rows(cfg.data, cfg.data.test_split, cfg.data.test_examples)
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    base = models.load_base(cfg.model.name_or_path, cfg.quant, cfg.model.trust_remote_code)

    def score(model: Any) -> float:
        return exact_match(model, tokenizer, rows, cfg.data.system_prompt, cfg.data.max_new_tokens)

    base_score = score(base)
    tuned = PeftModel.from_pretrained(base, adapter_dir)
    return {"split": cfg.data.test_split, "examples": len(rows), "base_exact_match": base_score,
            "winner_exact_match": score(tuned)}
