"""Which modules get adapters: symbolic sets resolved against a model's own module names, and validation.

    qv          PEFT's default targets for the architecture within its attention blocks (Llama's q_proj+v_proj,
                GPT-2's c_attn, Falcon's query_key_value, ...); for an architecture PEFT does not know, the query
                and value projections
    attention   every linear layer of the attention blocks
    mlp         every linear layer of the MLP / feed-forward blocks
    all-linear  every linear layer but the output layer (PEFT's own rule)

So one search space sweeps a Llama, GPT-2, Qwen, Mistral or Phi base without edits. An explicit list of names
keeps working: each name must match a linear module (its last name part, or a dotted suffix such as attn.c_proj).
"""

from __future__ import annotations

import re
from typing import Any

ATTENTION_BLOCK = re.compile(r"attn|attention", re.IGNORECASE)
MLP_BLOCK = re.compile(r"mlp|feed_forward|ffn|moe|experts", re.IGNORECASE)
QUERY_VALUE = re.compile(r"^(q|v)(_proj)?$|^(query|value)$|q_proj|v_proj")


def linear_modules(model: Any) -> list[str]:
    """Qualified names of the model's linear layers (nn.Linear and its quantized subclasses, transformers'
    Conv1D), without the output layer."""
    import torch
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output
            and name.rsplit(".", 1)[-1] != "lm_head"]


def _block(name: str) -> str:
    """The block a layer belongs to: the name part before its own (self_attn in ...layers.0.self_attn.q_proj)."""
    parts = name.split(".")
    return parts[-2] if len(parts) > 1 else ""


def _short_names(names: list[str], all_names: list[str]) -> list[str]:
    """Target names PEFT matches by suffix: the leaf when no other linear layer shares it, else block.leaf."""
    leaves = {}
    for name in all_names:
        leaves.setdefault(name.rsplit(".", 1)[-1], set()).add(_block(name))
    out = []
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        short = leaf if len(leaves[leaf]) == 1 else f"{_block(name)}.{leaf}"
        if short not in out:
            out.append(short)
    return out


def _peft_default(model_type: str | None) -> list[str] | None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    found = DEFAULTS.get(model_type or "")
    return list(found) if found else None


def resolve(spec: Any, names: list[str], model_type: str | None = None) -> list[str] | str:
    """A target spec (symbolic set or list) as what PEFT's LoraConfig takes; raises ValueError (one line)."""
    if spec == "all-linear":
        return "all-linear"
    if isinstance(spec, (list, tuple)):
        return list(spec)
    attention = [n for n in names if ATTENTION_BLOCK.search(_block(n))]
    if spec == "qv":  # PEFT's default for the architecture, kept to the attention blocks (Phi's adds its MLP)
        default = [t for t in _peft_default(model_type) or [] if matches(t, attention)]
        if default:
            return default
        chosen = [n for n in attention if QUERY_VALUE.search(n.rsplit(".", 1)[-1])]
    elif spec == "attention":
        chosen = attention
    elif spec == "mlp":
        chosen = [n for n in names if MLP_BLOCK.search(_block(n)) and not ATTENTION_BLOCK.search(_block(n))]
    else:
        raise ValueError(f"unknown target set {spec!r}")
    if not chosen:
        raise ValueError(f"{spec} finds no linear layer in this {model_type or 'model'}; accepted: "
                         f"all-linear or a list of {', '.join(_short_names(names, names))}")
    return _short_names(chosen, names)


def matches(target: str, names: list[str]) -> bool:
    """PEFT's rule: a target matches a module whose name equals it or ends with '.' + target."""
    return any(name == target or name.endswith(f".{target}") for name in names)


def check(spec: Any, names: list[str], model_type: str | None, key: str = "peft.target_modules") -> list[str]:
    """Problems with a target spec for this model: an unknown name, or a set that finds nothing."""
    try:
        resolved = resolve(spec, names, model_type)
    except ValueError as exc:
        return [f"{key}: {exc}"]
    if resolved == "all-linear":
        return []
    unknown = [t for t in resolved if not matches(t, names)]
    if not unknown:
        return []
    return [f"{key}: the model has no module(s) {', '.join(unknown)}; accepted: qv, attention, mlp, all-linear or a "
            f"list of {', '.join(_short_names(names, names))}"]
