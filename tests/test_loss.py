"""The training objective: equal to transformers' own loss, without full logits; packed rows give the same loss;
evaluation batched by length gives the per-example loss and answers."""

from __future__ import annotations

import pytest
import torch

from lora_tune import data as task_data
from lora_tune.config import DataConfig, PeftConfig, QuantConfig
from lora_tune.embedded import TINY
from lora_tune.loss import SupervisedLoss
from lora_tune.model import attach_adapter, load_base, load_tokenizer
from lora_tune.precision import resolve


@pytest.fixture(scope="module")
def setup() -> tuple:
    tokenizer = load_tokenizer(TINY)
    torch.manual_seed(0)
    base = load_base(TINY, QuantConfig(bits=16), resolve("fp32", torch.device("cpu")))
    model = attach_adapter(base, PeftConfig(r=4, target_modules="all-linear"), 10)
    for name, param in model.named_parameters():  # a trained-looking adapter, not zeros
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    splits = task_data.load_splits(DataConfig())
    examples = task_data.encode_all(tokenizer, splits.eval[:12], 80)[0]
    return model.eval(), tokenizer, examples


def test_the_sliced_loss_equals_transformers_loss(setup) -> None:
    model, tokenizer, examples = setup
    loss = SupervisedLoss(model, resolve("fp32", torch.device("cpu")))
    batch = task_data.collate(examples[:4], tokenizer.pad_token_id)
    with torch.no_grad():
        ours = loss(**batch) / int((batch["labels"][:, 1:] != -100).sum())
        theirs = model(**batch).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_packed_rows_give_the_unpacked_loss(setup) -> None:
    model, tokenizer, examples = setup
    loss = SupervisedLoss(model, resolve("fp32", torch.device("cpu")))
    unpacked = task_data.collate(examples, tokenizer.pad_token_id)
    packed = task_data.pack(examples, capacity=256, pad_id=tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < len(examples) // 2  # several examples per row
    assert int((packed["labels"] != -100).sum()) == int((unpacked["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        a, b = float(loss(**unpacked)), float(loss(**packed))
    assert b == pytest.approx(a, rel=1e-4)  # fp32 sums in another order: float rounding only
    model.train()
    loss(**packed).backward()  # and it trains: gradients reach the adapter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    model.zero_grad()
    model.eval()


def test_length_sorted_evaluation_keeps_the_mean_loss_and_each_prompts_answer(setup) -> None:
    """eval_loss and generate batch rows by length: the token-mean loss is the per-example one, and each answer
    comes back at its own prompt's position (generated alone, it is the same)."""
    from lora_tune.evaluate import eval_loss, generate

    model, tokenizer, examples = setup
    fp32 = resolve("fp32", torch.device("cpu"))
    loss = SupervisedLoss(model, fp32)
    shuffled = sorted(examples, key=lambda e: -len(e["input_ids"]) * (1 if len(e["input_ids"]) % 2 else -1))
    assert len({len(e["input_ids"]) for e in shuffled}) > 2  # lengths differ, so sorting regroups the batches
    with torch.no_grad():
        alone = [(float(loss(**task_data.collate([e], tokenizer.pad_token_id))),
                  sum(label != -100 for label in e["labels"][1:])) for e in shuffled]
    expected = sum(total for total, _ in alone) / sum(tokens for _, tokens in alone)
    assert eval_loss(loss, shuffled, tokenizer.pad_token_id, batch_size=4) == pytest.approx(expected, rel=1e-5)
    prompts = [e["input_ids"][:len(e["input_ids"]) - 4] for e in shuffled]
    batched = generate(model, tokenizer, prompts, max_new_tokens=4, precision=fp32, batch_size=4)
    one_by_one = [generate(model, tokenizer, [p], max_new_tokens=4, precision=fp32, batch_size=1)[0] for p in prompts]
    assert batched == one_by_one and len(set(batched)) > 1  # distinct answers, each at its prompt's position


def test_one_pass_over_each_prompt_scores_like_separate_loss_and_generation(setup) -> None:
    """prefill.py: the prompt's cache serves the teacher-forced answer and generation; the same loss and answers
    as eval_loss and generate, and rows that supervise tokens inside their prompt are left to the separate way."""
    from lora_tune import prefill
    from lora_tune.evaluate import eval_loss, generate

    model, tokenizer, _ = setup
    fp32 = resolve("fp32", torch.device("cpu"))
    examples, items = task_data.test_items(tokenizer, DataConfig(test_examples=10))
    assert prefill.shares_prompts(examples, items)
    loss, answers = prefill.loss_and_answers(model, tokenizer, examples, items, 6, fp32, batch_size=4)
    separate = eval_loss(SupervisedLoss(model, fp32), examples, tokenizer.pad_token_id, batch_size=4)
    assert loss == pytest.approx(separate, rel=1e-5)
    assert answers == generate(model, tokenizer, [i.prompt_ids for i in items], 6, fp32, batch_size=4)
    assert len(set(answers)) > 1
    multi_turn = [{**examples[0], "labels": list(examples[0]["input_ids"])}, *examples[1:]]
    assert not prefill.shares_prompts(multi_turn, items)


def test_the_eval_loss_and_its_standard_error_come_from_each_rows_own_loss(setup) -> None:
    """Batched and padded, the per-row sums are each row's loss alone; the standard error is the ratio estimator's
    over the rows (computed here from one-row forwards)."""
    import math

    from lora_tune.evaluate import eval_loss_stats

    model, tokenizer, examples = setup
    loss = SupervisedLoss(model, resolve("fp32", torch.device("cpu"))).eval()  # no LoRA dropout
    rows = []
    with torch.no_grad():
        for example in examples:
            batch = task_data.collate([example], tokenizer.pad_token_id)
            rows.append((float(loss(**batch)), int((batch["labels"][:, 1:] != -100).sum())))
    n, tokens = len(rows), sum(t for _, t in rows)
    mean = sum(row_loss for row_loss, _ in rows) / tokens
    se = math.sqrt(n / (n - 1) * sum((row_loss - mean * t) ** 2 for row_loss, t in rows)) / tokens
    found_mean, found_se = eval_loss_stats(loss, examples, tokenizer.pad_token_id, batch_size=5)
    assert found_mean == pytest.approx(mean, rel=1e-5) and found_se == pytest.approx(se, rel=1e-4)
    assert 0 < found_se < found_mean


def test_evaluation_builds_no_autograd_graph(setup) -> None:
    """A trial evaluates between optimizer steps: its forwards must not keep activations for a backward."""
    from lora_tune.evaluate import eval_loss_stats

    model, tokenizer, examples = setup
    seen = []
    hook = model.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    try:
        loss = SupervisedLoss(model, resolve("fp32", torch.device("cpu")))
        eval_loss_stats(loss, examples, tokenizer.pad_token_id, batch_size=5)
    finally:
        hook.remove()
    assert seen and not any(seen)
