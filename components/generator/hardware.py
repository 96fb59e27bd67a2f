"""What the machine offers the trainer: CPU threads this process may use, native bf16 support, and
this process's place in a multi-process (DDP) job.

``threads(0)`` = the cores in this process's CPU affinity mask (containers and ``taskset`` are
honoured), shared out among the processes of a torchrun job on this node (``LOCAL_WORLD_SIZE``).
``bf16_supported(device)``: CUDA asks the driver; a CPU counts only with native bf16 instructions
(AMX-BF16 or AVX512-BF16, read from ``/proc/cpuinfo`` flags), because elsewhere PyTorch emulates
bf16 matmuls in software and autocast makes training slower, not faster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def threads(requested: int) -> int:
    """Torch CPU threads to use: ``requested``, or every available core when it is 0 (divided among
    the processes a torchrun job starts on this node, at least 1 each)."""
    if requested > 0:
        return requested
    return max(1, available_cores() // max(1, dist_env().local_world))


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


# ---- processes (DDP under torchrun) ---------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``); a plain process is rank 0 of 1."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistEnv()
    local_world = int(env.get("LOCAL_WORLD_SIZE", "0") or 0) or world
    return DistEnv(world, int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), local_world)


def init_distributed(device: torch.device) -> DistEnv:
    """Join the job's process group (gloo on CPU, NCCL on CUDA) once; a no-op for one process.
    ``GENREC_DIST_TIMEOUT`` (seconds, default 3600) bounds how long ranks wait for each other, e.g.
    while rank 0 validates."""
    d = dist_env()
    if not d.enabled:
        return d
    import torch.distributed as td

    if not td.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get("GENREC_DIST_TIMEOUT", "3600")))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        td.init_process_group(backend, timeout=timeout)
    if td.get_world_size() != d.world or td.get_rank() != d.rank:
        raise RuntimeError(f"process group (rank {td.get_rank()} of {td.get_world_size()}) disagrees with WORLD_SIZE={d.world} RANK={d.rank}")
    return d
