"""Held-out evaluation: mean answer-token loss and generation metrics of greedy answers.

Trials call `eval_loss` and `generation_scores` on validation data at their evaluations (each worker takes its
share, results are combined); `score_model` scores a model on the test split: the winner after the sweep
(`score_on_test`), the base and the default-LoRA baseline while the trials run (baseline.py). Memory is
bounded: evaluation batches are train.eval_batch_size examples and the loss never materialises
full-vocabulary logits (loss.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lora_tune import metrics as scoring
from lora_tune import prefill
from lora_tune.data import IGNORE_INDEX, Generation, collate, encode_prompt
from lora_tune.distributed import Workers
from lora_tune.prefill import length_batches, padded


def eval_loss(loss_module: torch.nn.Module, examples: list[dict], pad_id: int, batch_size: int,
              workers: Workers | None = None) -> float:
    """Mean loss over all answer tokens of `examples` (token-weighted, padding ignored)."""
    return eval_loss_stats(loss_module, examples, pad_id, batch_size, workers)[0]


@torch.no_grad()
def eval_loss_stats(loss_module: torch.nn.Module, examples: list[dict], pad_id: int, batch_size: int,
                    workers: Workers | None = None) -> tuple[float, float | None]:
    """(mean loss over all answer tokens of `examples`, its standard error over the examples); the examples are
    shared out among the workers. The mean is a ratio (sum of the examples' losses L_i over their tokens T_i), so
    its standard error is the ratio estimator's: sqrt(n/(n-1) * sum (L_i - mean*T_i)^2) / sum T_i (None for one
    example). It says how far another draw of as many eval rows could move the loss: differences between trials
    below it are noise."""
    workers = workers or Workers()
    indices, real = workers.shard(len(examples))
    device = next(p for p in loss_module.parameters()).device
    sums = torch.zeros(6, dtype=torch.float64)  # n, sum L, sum T, sum L^2, sum T^2, sum L*T
    was_training = loss_module.training
    loss_module.eval()
    # a worker's padding rows (its share topped up to an equal size) count no token
    shard = [examples[i] if n < real else _unsupervised(examples[i]) for n, i in enumerate(indices)]
    shard.sort(key=lambda e: len(e["input_ids"]))  # length-sorted batches: little padding, same token sum
    for start in range(0, len(shard), batch_size):
        batch = {k: v.to(device) for k, v in collate(shard[start:start + batch_size], pad_id).items()}
        losses = loss_module(**batch, per_row=True).double().cpu()
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).double().cpu()
        counted = tokens > 0
        losses, tokens = losses[counted], tokens[counted]
        sums += torch.stack([counted.sum().double(), losses.sum(), tokens.sum(), (losses ** 2).sum(),
                             (tokens ** 2).sum(), (losses * tokens).sum()])
    loss_module.train(was_training)
    n, total, tokens, l2, t2, lt = (workers.all_sum(float(v)) for v in sums)
    if not tokens:
        raise ValueError("the evaluation examples have no supervised token")
    mean = total / tokens
    spread = max(l2 - 2 * mean * lt + mean * mean * t2, 0.0)  # sum (L_i - mean*T_i)^2
    return mean, (math.sqrt(n / (n - 1) * spread) / tokens if n > 1 else None)


def _unsupervised(example: dict) -> dict:
    return {**example, "labels": [IGNORE_INDEX] * len(example["labels"])}


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, precision: Any = None,
             batch_size: int = 16, synced: bool = False) -> list[str]:
    """Greedy answers to tokenized prompts (in their order), batched by length with left padding (`synced`:
    every worker of an FSDP trial runs the same number of decoding steps)."""
    import contextlib

    model_was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    with autocast:
        for rows in length_batches([len(p) for p in prompts], batch_size):
            ids, mask = padded([prompts[i] for i in rows], tokenizer.pad_token_id, left=True, device=device)
            width = ids.shape[1]
            output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id, synced_gpus=synced)
            for i, answer in zip(rows, tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)):
                answers[i] = answer
    model.train(model_was_training)
    return answers


def generation_scores(model: Any, tokenizer: Any, items: list[Generation], names: list[str], cfg: Any,
                      precision: Any = None, workers: Workers | None = None) -> dict[str, float]:
    """{eval_<metric>: value} of greedy answers to `items` (and eval_<metric>_se, its standard error over them,
    for the built-in metrics), the rows shared out among the workers."""
    workers = workers or Workers()
    indices, real = workers.shard(len(items))
    answers = generate(model, tokenizer, [items[i].prompt_ids for i in indices], cfg.data.max_new_tokens,
                       precision, cfg.train.eval_batch_size, synced=workers.strategy == "fsdp" and workers.distributed)
    pairs = workers.gather([(answer, items[i].reference) for answer, i in zip(answers[:real], indices[:real])])
    return scored(names, [a for a, _ in pairs], [r for _, r in pairs], cfg.eval.answer_regex)


def scored(names: list[str], answers: list[str], references: list[str], answer_regex: str | None) -> dict[str, float]:
    """{eval_<metric>: value, eval_<metric>_se: its standard error over the rows (built-in metrics)}."""
    return (scoring.score(names, answers, references, answer_regex)
            | scoring.standard_errors(names, answers, references, answer_regex))


def answer_messages(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]],
                    max_new_tokens: int) -> list[str]:
    """Greedy answers to chat conversations (the tokenizer's chat template, generation prompt added)."""
    return generate(model, tokenizer, [encode_prompt(tokenizer, c) for c in conversations], max_new_tokens)


def score_model(model: Any, tokenizer: Any, cfg: Any, examples: list[dict], items: list[Generation],
                precision: Any) -> dict[str, float]:
    """{loss, <metric>...} of one model on the test split; each prompt runs once for the loss and the answer
    where the rows allow it (prefill.py)."""
    from lora_tune.loss import SupervisedLoss

    names = cfg.generation_metrics()
    if names and prefill.shares_prompts(examples, items):
        loss, answers = prefill.loss_and_answers(model, tokenizer, examples, items, cfg.data.max_new_tokens,
                                                 precision, cfg.train.eval_batch_size)
        scores = scored(names, answers, [item.reference for item in items], cfg.eval.answer_regex)
    else:
        loss = eval_loss(SupervisedLoss(model, precision), examples, tokenizer.pad_token_id,
                         cfg.train.eval_batch_size)
        scores = generation_scores(model, tokenizer, items, names, cfg, precision) if names and items else {}
    return {"loss": loss, **{name.removeprefix("eval_"): value for name, value in scores.items()}}


def score_on_test(cfg: Any, adapter_location: str, num_threads: int = 1) -> dict[str, Any]:
    """The winner's scores on the test split (its base quantized as it trained, its precision, one base in
    memory). `adapter_location`: a complete adapter folder, local or in object storage."""
    from lora_tune import model as models
    from lora_tune import precision as precisions
    from lora_tune.data import test_items
    from lora_tune.storage import Store

    torch.set_num_threads(num_threads)
    adapter = Store.at(adapter_location).local_dir("")
    model, tokenizer = models.load_with_adapter(cfg, str(adapter))
    precision = precisions.resolve(cfg.train.precision, next(model.parameters()).device)
    examples, items = test_items(tokenizer, cfg.data, cfg.seed)
    scores = score_model(model, tokenizer, cfg, examples, items, precision)
    return {"split": cfg.data.test_split, "examples": len(examples), "headline": headline(cfg),
            **{f"winner_{k}": v for k, v in scores.items()}}


def headline(cfg: Any) -> str:
    """The score the summary line shows: the first generation metric, else the loss."""
    names = cfg.generation_metrics()
    return scoring.metric_name(names[0]).removeprefix("eval_") if names else "loss"
