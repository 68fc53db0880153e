"""train.precision=bf16 on CPU (CPU autocast supports it): the base computes in bf16 end to end, the adapter
stays fp32 masters and saves in fp32, and the loss still goes down; auto picks bf16 on a CPU only with native bf16."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from lora_tune import precision as precisions
from lora_tune.compose import compose_config
from lora_tune.distributed import Workers
from lora_tune.train import build_state, run_trial, train_step


def bf16_trial(bits: int) -> object:
    return compose_config(["experiment=tiny", f"quant.bits={bits}", "train.precision=bf16", "max_steps=16",
                           "train.eval_every=8", "train.lr=0.01", "train.warmup_ratio=0",
                           "peft.target_modules=all-linear", "data.max_train_examples=16",
                           "data.exact_match_examples=0"]).trial_config()


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precisions, "native_cpu_bf16", lambda: native)
    assert precisions.resolve("auto", torch.device("cpu")).name == ("bf16" if native else "fp32")
    assert precisions.resolve("bf16", torch.device("cpu")).dtype == torch.bfloat16
    assert not precisions.resolve("bf16", torch.device("cpu")).scaler().is_enabled()
    assert precisions.resolve("fp16", torch.device("cpu")).scaler().is_enabled()


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_bf16_runs_the_base_in_bf16_and_keeps_fp32_adapter_masters(bits: int) -> None:
    import bitsandbytes as bnb

    cfg = bf16_trial(bits)
    state = build_state(cfg, Workers(), reuse_base=False)
    seen: dict[str, set] = {}

    def record(name: str):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            seen.setdefault(name, set()).add(out.dtype)
            if name == "base_linear":
                seen.setdefault("base_linear_input", set()).add(inputs[0].dtype)
        return hook

    base = state.model.get_base_model()
    hooks = [base.model.embed_tokens.register_forward_hook(record("embeddings"))]
    for layer in base.model.layers:
        hooks.append(layer.register_forward_hook(record("residual_stream")))
        hooks.append(layer.self_attn.register_forward_hook(record("attention")))
        hooks.append(layer.mlp.down_proj.register_forward_hook(record("lora_wrapped_down_proj")))
        linear = layer.self_attn.q_proj.base_layer
        hooks.append(linear.register_forward_hook(record("base_linear")))
        expected = {4: bnb.nn.Linear4bit, 8: bnb.nn.Linear8bitLt, 16: torch.nn.Linear}[bits]
        assert isinstance(linear, expected)
    hooks.append(base.lm_head.register_forward_hook(record("logits")))
    loss, _ = train_step(state, cfg, 1)
    for hook in hooks:
        hook.remove()
    assert seen["residual_stream"] == seen["attention"] == seen["lora_wrapped_down_proj"] == {torch.bfloat16}
    assert seen["base_linear"] == seen["base_linear_input"] == {torch.bfloat16}, seen
    assert seen["embeddings"] == seen["logits"] == {torch.bfloat16}
    lora = [p for n, p in state.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
    frozen_float = [p for n, p in base.named_parameters() if "lora_" not in n and p.is_floating_point()
                    and p.dtype != torch.uint8]
    assert frozen_float and all(p.dtype == torch.bfloat16 for p in frozen_float if p.ndim >= 1 and p.numel() > 1
                                and type(p).__name__ not in ("Params4bit", "Int8Params"))
    assert math.isfinite(float(loss))  # nan == nan is False, but inf == inf is True


def test_bf16_trial_learns_and_saves_an_fp32_adapter(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    reports: list[tuple[dict, str]] = []
    run_trial(bf16_trial(4), lambda m, c: reports.append((m, c)), checkpoint_root=str(tmp_path), reuse_base=False)
    assert reports[-1][0]["precision"] == "bf16"
    assert reports[-1][0]["eval_loss"] < reports[0][0]["eval_loss"]
    weights = load_file(str(Path(reports[-1][1]) / "adapter" / "adapter_model.safetensors"))
    assert weights and all(w.dtype == torch.float32 for w in weights.values())


def test_fp32_precision_keeps_the_base_in_fp32() -> None:
    cfg = dataclasses.replace(bf16_trial(16), train=dataclasses.replace(bf16_trial(16).train, precision="fp32"))
    state = build_state(cfg, Workers(), reuse_base=False)
    assert {p.dtype for p in state.model.parameters()} == {torch.float32}
