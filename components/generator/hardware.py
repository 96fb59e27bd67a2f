"""What the machine offers the trainer: CPU threads this process may use and native bf16 support.

``threads(0)`` = the cores in this process's CPU affinity mask (containers and ``taskset`` are
honoured). ``bf16_supported(device)``: CUDA asks the driver; a CPU counts only with native bf16
instructions (AMX-BF16 or AVX512-BF16, read from ``/proc/cpuinfo`` flags), because elsewhere
PyTorch emulates bf16 matmuls in software and autocast makes training slower, not faster.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def threads(requested: int) -> int:
    """Torch CPU threads to use: ``requested``, or every available core when it is 0."""
    return requested if requested > 0 else available_cores()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """Resolve ``train.bf16``: ``auto`` = where the device runs bf16 natively (CUDA with bf16, a CPU
    with AMX / AVX512-BF16), else fp32; ``true`` = bf16 autocast on any CPU or bf16-capable GPU (on
    a CPU without native bf16 it is emulated: slower, for checking numerics); ``false`` = fp32."""
    if setting is False or setting == "false":
        return False
    if setting is True or setting == "true":
        return device.type == "cpu" or bf16_supported(device)
    return bf16_supported(device)
