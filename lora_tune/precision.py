"""The precision a trial computes in: train.precision (auto | bf16 | fp16 | fp32) made concrete for its device.

auto = bf16 on GPUs with native bf16 (Ampere and newer), fp16 with loss scaling on GPUs without it (T4, V100); on a
CPU, bf16 where it has native bf16 instructions (AVX512-BF16 or AMX: 0.72-0.76x the time a step, the same mean eval
loss over 4 seeds, see benchmarks/results.md), else fp32 (bf16 emulated in software is slower). In bf16/fp16 the
frozen base keeps its non-quantized weights (embeddings, norms, lm_head, or the whole 16-bit base) in that dtype,
the forward runs under autocast, and 4/8-bit matmuls compute in it, so the residual stream, attention and logits are
half precision; the LoRA weights stay fp32 masters (PEFT keeps adapter weights in fp32) and the loss is computed in
fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    name: str  # bf16, fp16 or fp32
    device_type: str  # cuda or cpu

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Half-precision compute for the forward (a no-op in fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, on for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def native_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles), as torch's CPU kernels see it."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve(name: str, device: torch.device) -> Precision:
    """train.precision for this device; `auto` as the module docstring says."""
    if name == "auto" and device.type == "cuda":
        name = "bf16" if native_bf16() else "fp16"
    elif name == "auto":
        name = "bf16" if native_cpu_bf16() else "fp32"
    return Precision(name, device.type)


def compute_dtype(quant_compute_dtype: str, precision: Precision) -> torch.dtype:
    """quant.compute_dtype, or (auto) the precision's dtype: what 4/8-bit matmuls and a 16-bit base use."""
    return precision.dtype if quant_compute_dtype == "auto" else DTYPES[quant_compute_dtype]
