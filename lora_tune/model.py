"""The model side of a trial: load the base (quantized by bitsandbytes when asked), attach a PEFT adapter.

One code path; `quant.bits` chooses: 4 = NF4 with double quantization, 8 = LLM.int8, 16 = plain LoRA; the
compute dtype follows train.precision (precision.py). Module names for validation come from the model's config
on the meta device, so no weights are loaded; symbolic target sets are resolved by targets.py.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from lora_tune import memory, targets
from lora_tune import precision as precisions
from lora_tune.config import PeftConfig, QuantConfig, TrialConfig
from lora_tune.embedded import resolve_model_path

# bitsandbytes' int8 matmul announces a cast on every call; the cast is expected.
warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")
# On CPUs with AVX512-BF16, importing bitsandbytes tries an optional 4-bit inference kernel from the HF hub (the
# `kernels` package) and warns when it cannot; lora_tune keeps bitsandbytes' own kernels (keep_4bit_layout).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

def default_device() -> torch.device:
    """A process's device when nothing else says: its first visible GPU (Ray sets CUDA_VISIBLE_DEVICES) or the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def quantization_config(quant: QuantConfig, dtype: torch.dtype) -> Any:
    """The BitsAndBytesConfig for 4/8 bits, None for 16 (validation keeps 4/8-bit bases away from FSDP)."""
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


def load_base(name_or_path: str, quant: QuantConfig, precision: precisions.Precision | None = None,
              device: torch.device | None = None, trust_remote_code: bool = False) -> Any:
    """The frozen base model on `device`, quantized per `quant.bits`; its non-quantized weights (or all of them, at
    16 bits) in the compute dtype (quant.compute_dtype, or the precision's: train.precision=auto by default)."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    precision = precision or precisions.resolve("auto", device)
    dtype = precisions.compute_dtype(quant.compute_dtype, precision)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path),
        dtype=dtype,
        quantization_config=quantization_config(quant, dtype),
        device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
        trust_remote_code=trust_remote_code,
    )
    model.config.use_cache = False
    if quant.bits == 4 and device.type == "cpu":
        keep_4bit_layout(model)
    return model


def empty_base(name_or_path: str, quant: QuantConfig, precision: precisions.Precision,
               trust_remote_code: bool = False) -> Any:
    """The 16-bit base of `name_or_path` with its weights on the meta device (no memory) and its buffers (rotary
    frequencies, computed from the config, in no checkpoint) real, on the CPU: the skeleton an FSDP worker shards
    before the weights arrive (distributed.load_from_rank0). Tied embeddings are tied, as from_pretrained ties them."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    dtype = precisions.compute_dtype(quant.compute_dtype, precision)  # as load_base's
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(architecture(name_or_path, trust_remote_code), dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    model.tie_weights()
    model.config.use_cache = False
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


def peft_config(cfg: PeftConfig, max_steps: int, model: Any) -> Any:
    """LoraConfig (or AdaLoraConfig for peft.method=adalora) from the peft.* keys, with the target modules
    resolved against `model`'s own module names (a loaded model or one on the meta device)."""
    from peft import AdaLoraConfig, LoraConfig

    common = dict(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets.resolve(cfg.target_modules, targets.linear_modules(model), model_type(model)),
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


def model_type(model: Any) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def attach_adapter(base: Any, cfg: PeftConfig, max_steps: int, gradient_checkpointing: bool = False) -> Any:
    """Freeze the base and wrap it with a fresh, trainable PEFT adapter (fp32 weights, PEFT's default).

    Unlike peft's prepare_model_for_kbit_training, the base's non-quantized weights keep their dtype: in bf16 /
    fp16 precision they stay half precision, so activations are too (precision.py)."""
    from peft import get_peft_model

    for param in base.parameters():
        param.requires_grad = False
    if gradient_checkpointing:  # non-reentrant: no need to make the inputs require grad
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif base.is_gradient_checkpointing:  # a cached base keeps what the previous trial of the process turned on
        base.gradient_checkpointing_disable()
    model = get_peft_model(base, peft_config(cfg, max_steps, base))
    fp32_masters(model)
    return model


def fp32_masters(model: torch.nn.Module) -> None:
    """Every trainable parameter in fp32. PEFT keeps LoRA weights fp32 but leaves the biases that peft.bias=all |
    lora_only trains in the base's dtype: fp16 ones make GradScaler.unscale_ refuse ("Attempting to unscale FP16
    gradients"), and FSDP refuses parameters of mixed original dtypes. Autocast casts them for the forward."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def load_with_adapter(cfg: TrialConfig, adapter_dir: str | None,
                      device: torch.device | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for scoring or generating: the base quantized as `cfg` says, in the precision the trial
    trained with on this device, plus the adapter in `adapter_dir` (frozen) unless it is None. The tokenizer has
    the chat template the data used."""
    from peft import PeftModel

    from lora_tune.data import with_chat_template

    device = device or default_device()
    tokenizer = with_chat_template(load_tokenizer(cfg.model.name_or_path), cfg.data)
    precision = precisions.resolve(cfg.train.precision, device)
    base = load_base(cfg.model.name_or_path, cfg.quant, precision, device, cfg.model.trust_remote_code)
    if adapter_dir is None:
        return base, tokenizer
    return PeftModel.from_pretrained(base, str(adapter_dir)), tokenizer


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as stored."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def architecture(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a checkpoint (no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)


def meta_model(config: Any, trust_remote_code: bool = False) -> Any:
    """The model with every tensor on the meta device: module names and shapes without memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_targets(model: Any, peft: PeftConfig, space: dict[str, Any]) -> list[str]:
    """Problems with peft.target_modules and every searched target value, for this model (meta is enough)."""
    names, kind = targets.linear_modules(model), model_type(model)
    problems = targets.check(peft.target_modules, names, kind)
    for name, dim in space.items():
        if dim.key == "peft.target_modules":
            for value in dim.values or []:
                if value != peft.target_modules:  # a pinned value is reported once, under peft.target_modules
                    problems += targets.check(value, names, kind, f"search_space.{name}.values")
    return problems


class BaseModelCache:
    """The loaded (quantized) base of this process, kept for the next trial that needs the same one.

    Ray Tune reuses trial actors, so a worker process runs trial after trial: loading the base once per
    (model, bits, compute dtype, device) and giving each trial a fresh adapter on it saves the load. `release`
    removes the previous trial's adapter layers (PEFT `unload`, no merge), so the base is bit-for-bit the one that
    was loaded. A process never holds two bases: the old one is freed (CUDA cache included) before another loads.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.base: Any = None
        self.adapted: Any = None
        self.hits = 0

    def acquire(self, name_or_path: str, quant: QuantConfig, precision: precisions.Precision, device: torch.device,
                trust_remote_code: bool = False) -> Any:
        """The base for these settings: the cached one when it matches, else freshly loaded."""
        self.release()
        key = (resolve_model_path(name_or_path), quant.bits, quant.quant_type, quant.double_quant,
               precisions.compute_dtype(quant.compute_dtype, precision), str(device), trust_remote_code)
        if key == self.key:
            self.hits += 1
            return self.base
        self.clear()
        self.base = load_base(name_or_path, quant, precision, device, trust_remote_code)
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
        memory.release(default_device())


BASE_CACHE = BaseModelCache()
