"""The model side of a trial: load the base (quantized by bitsandbytes when asked), attach a PEFT adapter.

One code path; `quant.bits` chooses: 4 = NF4 with double quantization, 8 = LLM.int8, 16 = plain LoRA
(bf16 on GPUs that support it, fp32 on CPU). Module names for validation come from the model's config
on the meta device, so no weights are loaded.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from lora_tune.config import PeftConfig, QuantConfig
from lora_tune.embedded import resolve_model_path

# bitsandbytes' int8 matmul announces a cast on every call; the cast is expected.
warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device() -> torch.device:
    """The trial's device: its first visible GPU (Ray sets CUDA_VISIBLE_DEVICES) or the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(quant: QuantConfig, on: torch.device | None = None) -> torch.dtype:
    """bf16 on GPUs that have it, fp32 on CPU (and on older GPUs), unless quant.compute_dtype says otherwise."""
    if quant.compute_dtype != "auto":
        return DTYPES[quant.compute_dtype]
    on = on or device()
    if on.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(quant: QuantConfig, dtype: torch.dtype) -> Any:
    """The BitsAndBytesConfig for 4/8 bits, None for 16."""
    from transformers import BitsAndBytesConfig

    if quant.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(name_or_path: str, quant: QuantConfig, trust_remote_code: bool = False) -> Any:
    """The frozen base model on the trial's device, quantized per `quant.bits`."""
    from transformers import AutoModelForCausalLM

    on = device()
    dtype = compute_dtype(quant, on)
    device_map: Any = {"": on.index or 0} if on.type == "cuda" else {"": "cpu"}
    if on.type == "cuda" and torch.cuda.device_count() > 1:
        device_map = "auto"  # multi-GPU trial: spread the layers over the trial's GPUs
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path),
        dtype=dtype,
        quantization_config=quantization_config(quant, dtype),
        device_map=device_map,
        trust_remote_code=trust_remote_code,
    )
    model.config.use_cache = False
    if quant.bits == 4 and on.type == "cpu":
        keep_4bit_layout(model)
    return model


def keep_4bit_layout(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, the first no-grad forward in eval mode repacks a Linear4bit's weights in place,
    and every later step, training included, then runs different kernels. Training would change numerics after
    the first evaluation, and a reused base would not match a fresh one. One layout for the whole trial.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def peft_config(cfg: PeftConfig, max_steps: int) -> Any:
    """LoraConfig (or AdaLoraConfig for peft.method=adalora) from the peft.* keys."""
    from peft import AdaLoraConfig, LoraConfig

    common = dict(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_list(),
        bias=cfg.bias,
        use_rslora=cfg.use_rslora,
        task_type="CAUSAL_LM",
    )
    if cfg.method == "adalora":
        common.pop("r")
        return AdaLoraConfig(
            init_r=cfg.adalora_init_r,
            target_r=cfg.r,
            tinit=int(cfg.adalora_tinit_frac * max_steps),
            tfinal=int(cfg.adalora_tfinal_frac * max_steps),
            total_step=max_steps,
            **common,
        )
    return LoraConfig(use_dora=cfg.use_dora, **common)


def attach_adapter(base: Any, cfg: PeftConfig, quant: QuantConfig, max_steps: int,
                   gradient_checkpointing: bool = False) -> Any:
    """Wrap the base with a fresh, trainable PEFT adapter (after k-bit preparation for 4/8 bits)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quant.bits in (4, 8):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    return get_peft_model(base, peft_config(cfg, max_steps))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as stored."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def linear_module_names(name_or_path: str, trust_remote_code: bool = False) -> set[str]:
    """Leaf names of the model's Linear layers (q_proj, v_proj, ...), read on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "lm_head" and not name.endswith(".lm_head")}


def check_target_modules(target_modules: Any, available: set[str], key: str = "peft.target_modules") -> list[str]:
    """Problems for target modules the model does not have."""
    if target_modules == "all-linear":
        return []
    unknown = [m for m in target_modules if m not in available]
    if not unknown:
        return []
    return [f"{key}: the model has no module(s) {', '.join(unknown)}; accepted: all-linear or a list of "
            f"{', '.join(sorted(available))}"]


class BaseModelCache:
    """The loaded (quantized) base of this process, kept for the next trial that needs the same one.

    Ray Tune reuses trial actors, so a worker process runs trial after trial: loading the base once per
    (model, bits, compute dtype) and giving each trial a fresh adapter on it saves the load. `release`
    removes the previous trial's adapter layers (PEFT `unload`, no merge), so the base is bit-for-bit the
    one that was loaded.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.base: Any = None
        self.adapted: Any = None
        self.hits = 0

    def acquire(self, name_or_path: str, quant: QuantConfig, trust_remote_code: bool = False) -> Any:
        """The base for these settings: the cached one when it matches, else freshly loaded."""
        self.release()
        key = (resolve_model_path(name_or_path), quant.bits, quant.quant_type, quant.double_quant,
               compute_dtype(quant), trust_remote_code)
        if key == self.key:
            self.hits += 1
            return self.base
        self.clear()
        self.base = load_base(name_or_path, quant, trust_remote_code)
        self.key = key
        return self.base

    def adapted_by(self, peft_model: Any) -> None:
        """Remember the adapter attached to the cached base, to strip it on the next acquire."""
        self.adapted = peft_model

    def release(self) -> None:
        if self.adapted is not None:
            self.base = self.adapted.unload()
            self.adapted = None

    def clear(self) -> None:
        """Forget the cached base and free its memory (GPU memory included)."""
        self.key = self.base = self.adapted = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


BASE_CACHE = BaseModelCache()
