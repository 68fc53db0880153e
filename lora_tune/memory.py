"""Memory of one trial: its peak since it started (not the process's lifetime maximum: Ray reuses trial
processes), on every device it uses, and a cap for trials that share a GPU.

On a GPU the peak is torch's allocator peak, reset when the trial starts; on CPU it is the process's peak
resident set (VmHWM), which Linux resets through /proc/self/clear_refs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
from pathlib import Path
from typing import Any

import torch

MB = 2**20
GB = 2**30


def trim_heap() -> None:
    """Return the C heap's free pages to the OS (glibc's malloc_trim; a no-op elsewhere). Without it a reused trial
    process kept every trial's freed buffers: +0.3-0.7 GB of resident memory per SmolLM2 trial on CPU."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak(device: torch.device) -> None:
    """Start counting this trial's peak now (after releasing what the previous trial left behind)."""
    release(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the peak then counts from the process start
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


def peak_report(device: torch.device) -> dict[str, Any]:
    """This trial's peak memory, named for what it measures (`peak_mem_measure`): on a GPU torch's allocator peak
    (`cuda_max_allocated`), with the allocator's reserved peak beside it (what nvidia-smi counts, less the CUDA
    context); on CPU the process's peak resident set (`process_peak_rss`). `device_mem_mb`: the device's total
    (the GPU's memory, or this machine's RAM)."""
    if device.type == "cuda":
        return {"peak_mem_mb": peak_mb(device), "peak_mem_measure": "cuda_max_allocated",
                "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / MB,
                "device_mem_mb": torch.cuda.get_device_properties(device).total_memory / MB}
    return {"peak_mem_mb": peak_mb(device), "peak_mem_measure": "process_peak_rss",
            "device_mem_mb": machine_memory_mb()}


def machine_memory_mb() -> float | None:
    try:
        found = re.search(r"MemTotal:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def peak_mb(device: torch.device) -> float:
    """This trial's peak on `device`, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    try:
        found = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        found = None
    if found:
        return int(found.group(1)) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CUDA_CONTEXT_GB = 0.5  # a process's CUDA context and kernels, outside torch's allocator (plan.py counts it)


def claim_gpu(gpus: float, device: torch.device) -> None:
    """The process was given `gpus` (resources.gpus_per_trial): it must see one, or it would train on the CPU
    unnoticed (a node whose driver is broken, a CPU-only torch in the image); a fraction of one GPU caps what
    torch may allocate so that the process, CUDA context included, stays within that fraction."""
    if gpus and device.type != "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise RuntimeError(f"resources.gpus_per_trial={gpus:g}: this process sees no CUDA device "
                           f"(CUDA_VISIBLE_DEVICES={visible}, torch {torch.__version__} built for CUDA "
                           f"{torch.version.cuda or 'none'}); refusing to train on the CPU")
    if device.type == "cuda" and 0 < gpus < 1:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(gpus, total), device)


def allocator_fraction(share: float, total_bytes: float) -> float:
    """The fraction of the GPU torch's allocator may use so that the whole process stays within `share`: the
    CUDA context lives outside the allocator (the memory plan counts it inside the trial's share)."""
    return max(0.01, share - CUDA_CONTEXT_GB * GB / total_bytes)


def release(device: torch.device) -> None:
    """Hand freed memory back (the C heap's free pages and the CUDA cache included), so what comes next starts
    empty."""
    gc.collect()
    trim_heap()
    if device.type == "cuda":
        torch.cuda.empty_cache()
