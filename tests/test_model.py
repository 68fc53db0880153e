"""Quantization per bits, PEFT config building, and module-name validation on the tiny model."""

from __future__ import annotations

import pytest
import torch

from lora_tune import model as models
from lora_tune.config import PeftConfig, QuantConfig
from lora_tune.embedded import TINY
from lora_tune.precision import compute_dtype, resolve


@pytest.fixture(scope="module")
def loaded() -> dict[int, torch.nn.Module]:
    return {bits: models.load_base(TINY, QuantConfig(bits=bits)) for bits in (4, 8, 16)}


def test_bits_choose_the_layer_type(loaded: dict[int, torch.nn.Module]) -> None:
    import bitsandbytes as bnb

    layer = {bits: m.model.layers[0].self_attn.q_proj for bits, m in loaded.items()}
    assert isinstance(layer[4], bnb.nn.Linear4bit)
    assert layer[4].weight.quant_type == "nf4"
    assert layer[4].weight.quant_state.nested  # double quantization
    assert isinstance(layer[8], bnb.nn.Linear8bitLt)
    auto = resolve("auto", torch.device("cpu")).dtype  # bf16 on a CPU with native bf16, else fp32
    assert type(layer[16]) is torch.nn.Linear and layer[16].weight.dtype == auto


def test_memory_footprint_ranks_by_bits(loaded: dict[int, torch.nn.Module]) -> None:
    footprint = {bits: m.get_memory_footprint() for bits, m in loaded.items()}
    assert footprint[4] < footprint[8] < footprint[16]


def test_compute_dtype_follows_the_precision_unless_asked() -> None:
    cpu = torch.device("cpu")
    assert compute_dtype("auto", resolve("fp32", cpu)) == torch.float32
    assert compute_dtype("auto", resolve("bf16", cpu)) == torch.bfloat16
    assert compute_dtype("fp16", resolve("auto", cpu)) == torch.float16


def test_quantization_config_per_bits() -> None:
    nf4 = models.quantization_config(QuantConfig(bits=4), torch.bfloat16)
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16
    assert models.quantization_config(QuantConfig(bits=8), torch.float32).load_in_8bit
    assert models.quantization_config(QuantConfig(bits=16), torch.float32) is None


@pytest.fixture(scope="module")
def meta_tiny() -> torch.nn.Module:
    return models.meta_model(models.architecture(TINY))


def test_lora_config_from_peft_keys(meta_tiny: torch.nn.Module) -> None:
    cfg = models.peft_config(PeftConfig(r=16, alpha=32, dropout=0.1, target_modules=["q_proj", "v_proj"],
                                        use_dora=True, use_rslora=True), 10, meta_tiny)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert cfg.use_dora and cfg.use_rslora and cfg.task_type == "CAUSAL_LM"
    assert models.peft_config(PeftConfig(target_modules="all-linear"), 10, meta_tiny).target_modules == "all-linear"
    assert set(models.peft_config(PeftConfig(target_modules="mlp"), 10, meta_tiny).target_modules) == {
        "gate_proj", "up_proj", "down_proj"}


def test_adalora_config_gets_a_rank_budget(meta_tiny: torch.nn.Module) -> None:
    cfg = models.peft_config(PeftConfig(method="adalora", r=4, adalora_init_r=8), 100, meta_tiny)
    assert type(cfg).__name__ == "AdaLoraConfig"
    assert (cfg.init_r, cfg.target_r, cfg.total_step) == (8, 4, 100)


@pytest.mark.parametrize("targets,adapted", [
    (["q_proj", "v_proj"], {"q_proj", "v_proj"}),
    ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_adapter_attaches_to_the_requested_modules(bits: int, targets, adapted: set[str]) -> None:
    base = models.load_base(TINY, QuantConfig(bits=bits))
    model = models.attach_adapter(base, PeftConfig(r=4, target_modules=targets), 10)
    names = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert names == adapted
    trainable, total = models.count_parameters(model)
    assert 0 < trainable < total
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_module_names_come_from_the_meta_device(meta_tiny: torch.nn.Module) -> None:
    assert all(p.device.type == "meta" for p in meta_tiny.parameters())
    problems = models.check_targets(meta_tiny, PeftConfig(target_modules=["q_proj", "attn_qkv"]), {})
    assert problems[0].startswith("peft.target_modules: the model has no module(s) attn_qkv")
    assert models.check_targets(meta_tiny, PeftConfig(target_modules="all-linear"), {}) == []


def test_a_cached_base_checkpoints_only_for_trials_that_ask() -> None:
    """The base cache hands the next trial the same base: a trial without gradient checkpointing after one with
    it must not checkpoint (its step time, tokens/s and peak memory would be another configuration's)."""
    base = models.load_base(TINY, QuantConfig(bits=16))
    models.attach_adapter(base, PeftConfig(r=4), 10, gradient_checkpointing=True).unload()
    assert base.is_gradient_checkpointing
    models.attach_adapter(base, PeftConfig(r=4), 10, gradient_checkpointing=False).unload()
    assert not base.is_gradient_checkpointing


@pytest.fixture(scope="module")
def biased_tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Llama with biases on its projections (as Qwen2's attention and GPT-2 have)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_tune.embedded import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(TINY))
    config.attention_bias = config.mlp_bias = True
    out = tmp_path_factory.mktemp("biased-tiny")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_every_trainable_parameter_is_an_fp32_master_under_fp16(bias: str, biased_tiny: str) -> None:
    """Trainable biases of a 16-bit base would stay fp16, and GradScaler.unscale_ refuses fp16 gradients
    ("Attempting to unscale FP16 gradients"); under FSDP a bf16 bias beside fp32 LoRA weights is refused too."""
    precision = resolve("fp16", torch.device("cpu"))
    base = models.load_base(biased_tiny, QuantConfig(bits=16), precision)
    model = models.attach_adapter(base, PeftConfig(r=4, bias=bias), 10)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("bias" in n for n in trainable) and {p.dtype for p in trainable.values()} == {torch.float32}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3)
    scaler = precision.scaler()
    with precision.autocast():
        loss = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    scaler.scale(loss.float()).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    assert all(torch.isfinite(p).all() for p in trainable.values())
