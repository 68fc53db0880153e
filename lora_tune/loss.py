"""The training objective: the mean cross-entropy of the answer tokens, computed without full-vocabulary logits.

`SupervisedLoss` wraps the PEFT model and returns the *sum* of token losses (fp32) of a batch, so callers can
normalise over a whole global batch (train.py) or an evaluation set. The model's own forward is asked for the
logits at the supervised positions only (transformers' `logits_to_keep` with a boolean mask, which the model
applies before its lm_head and any logit soft-capping or scaling), so an evaluation or training batch never holds
a (batch x sequence x vocabulary) logits tensor. Models whose forward takes no `logits_to_keep` get the full
logits, sliced. It is an nn.Module so that DDP / FSDP wrap it and see its forward.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from lora_tune.data import IGNORE_INDEX


def takes_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class SupervisedLoss(torch.nn.Module):
    def __init__(self, model: Any, precision: Any):
        super().__init__()
        self.model = model
        self.precision = precision
        self.sliced = takes_logits_to_keep(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, per_row: bool = False) -> torch.Tensor:
        """Sum of the token losses of the supervised positions (position t predicts labels[t + 1]); `per_row`:
        one sum per row instead (the evaluation's standard error needs them).

        Packed rows come with position_ids and no attention mask: transformers then keeps attention inside each
        packed example (use_cache=False, or it would not look for packed sequences)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "use_cache": False}
        with self.precision.autocast():
            return supervised_loss_sum(self.model, labels, inputs, self.sliced, per_row)


def supervised_loss_sum(model: Any, labels: torch.Tensor, inputs: dict[str, Any], sliced: bool,
                        per_row: bool = False) -> torch.Tensor:
    """Sum (fp32) of the cross-entropy of `model(**inputs)` at the supervised positions of `labels`, which line up
    with `inputs["input_ids"]` (position t predicts labels[t + 1]); `sliced`: the forward takes `logits_to_keep`;
    `per_row`: a sum per row of `labels`."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = keep
    logits = model(**inputs, logits_to_keep=positions).logits if sliced else model(**inputs).logits[positions]
    if not per_row:
        return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
    token_losses = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]  # the row of each supervised token, in the order of targets[keep]
    return torch.zeros(labels.shape[0], device=token_losses.device).index_add_(0, rows, token_losses)
