"""What the host offers, for the tuned defaults: GPUs from an NVML snapshot, free memory, CPUs."""

from __future__ import annotations

import os
from collections.abc import Iterable

from vllama.gpu import GpuSnapshot
from vllama.supervisor.argv import HardwareInfo


def read_mem_available(meminfo: str = "/proc/meminfo") -> int:
    """MemAvailable in bytes (0 when unreadable: the CPU KV size then falls to its minimum)."""
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def hardware_info(
    snapshot: GpuSnapshot, mem_available: int, cpus: Iterable[int] | None = None
) -> HardwareInfo:
    """Build HardwareInfo; `cpus` defaults to this process's CPU affinity."""
    cpu_set = tuple(sorted(os.sched_getaffinity(0) if cpus is None else cpus))
    gpus = [g for g in snapshot.gpus if g.memory_total] if snapshot.available else []
    if not gpus:
        return HardwareInfo(mem_available=mem_available, cpus=cpu_set)
    # Tensor parallel shards across equal GPUs; the smallest one bounds what fits.
    smallest = min(gpus, key=lambda g: g.memory_total or 0)
    return HardwareInfo(
        gpu_count=len(gpus),
        gpu_name=smallest.name,
        gpu_memory_total=smallest.memory_total or 0,
        mem_available=mem_available,
        cpus=cpu_set,
    )
