"""Memory of one trial: its peak since it started (not the process's lifetime maximum: Ray reuses trial
processes), on every device it uses, and a cap for trials that share a GPU.

On a GPU the peak is torch's allocator peak, reset when the trial starts; on CPU it is the process's peak
resident set (VmHWM), which Linux resets through /proc/self/clear_refs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from pathlib import Path

import torch

MB = 2**20


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


def cap_gpu_share(share: float, device: torch.device) -> None:
    """A trial given a fraction of a GPU (resources.gpus_per_trial < 1) may allocate at most that fraction."""
    if device.type == "cuda" and 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, device)


def release(device: torch.device) -> None:
    """Hand freed memory back (the C heap's free pages and the CUDA cache included), so what comes next starts
    empty."""
    gc.collect()
    trim_heap()
    if device.type == "cuda":
        torch.cuda.empty_cache()
