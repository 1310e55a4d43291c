"""GPU state through NVML: a snapshot that never raises, refreshed on a timer.

NVML calls can block (a busy or wedged driver), so they run in a worker thread and the gateway
only ever reads the latest snapshot; /health never calls NVML per request. The nvml module is
passed in, so tests use a fake module object (there is no GPU in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

import msgspec

log = logging.getLogger("vllama.gpu")

T = TypeVar("T")


class GpuProcess(msgspec.Struct, frozen=True):
    pid: int
    used_memory: int | None  # bytes; None when NVML cannot tell (e.g. under MIG)


class GpuInfo(msgspec.Struct, frozen=True):
    index: int
    name: str
    uuid: str | None = None
    memory_total: int | None = None  # bytes
    memory_used: int | None = None
    memory_free: int | None = None
    utilization_gpu: int | None = None  # percent
    temperature_c: int | None = None
    power_w: float | None = None
    processes: tuple[GpuProcess, ...] = ()


class GpuSnapshot(msgspec.Struct, frozen=True):
    available: bool
    reason: str = ""  # why no GPU is available; "" when available
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None


def import_nvml() -> ModuleType | None:
    """The NVML binding (module `pynvml`, shipped by nvidia-ml-py), or None.

    The deprecated `pynvml` *package* installs an import hook that warns with FutureWarning on
    `import pynvml`; under -W error that would raise, so the warning is silenced here only.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except ImportError:
        return None
    return pynvml  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _field(fn: Callable[[], T]) -> T | None:
    """One NVML field: NotSupported (or anything else) leaves it None rather than losing
    the whole snapshot."""
    try:
        return fn()
    except Exception:
        return None


def _processes(nvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
    procs = _field(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
    out: list[GpuProcess] = []
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        out.append(GpuProcess(pid=int(p.pid), used_memory=int(used) if used is not None else None))
    return tuple(out)


def _device(nvml: Any, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = _field(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    util = _field(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    power_mw = _field(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    temp_sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    return GpuInfo(
        index=index,
        name=_field(lambda: _text(nvml.nvmlDeviceGetName(handle))) or f"GPU {index}",
        uuid=_field(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
        memory_total=int(mem.total) if mem is not None else None,
        memory_used=int(mem.used) if mem is not None else None,
        memory_free=int(mem.free) if mem is not None else None,
        utilization_gpu=int(util.gpu) if util is not None else None,
        temperature_c=_field(lambda: int(nvml.nvmlDeviceGetTemperature(handle, temp_sensor))),
        power_w=power_mw / 1000.0 if power_mw is not None else None,
        processes=_processes(nvml, handle),
    )


def _read_devices(nvml: Any) -> GpuSnapshot:
    """Read every device; NVML must be initialised."""
    count = int(nvml.nvmlDeviceGetCount())
    if count == 0:
        return GpuSnapshot(False, "no NVIDIA GPU: NVML found no devices")
    driver = _field(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
    return GpuSnapshot(True, "", tuple(_device(nvml, i) for i in range(count)), driver)


def _failure(exc: BaseException) -> GpuSnapshot:
    return GpuSnapshot(False, f"no NVIDIA GPU: {exc}" if str(exc) else "no NVIDIA GPU")


def read_snapshot(nvml: Any | None) -> GpuSnapshot:
    """One snapshot with its own nvmlInit/nvmlShutdown (for the CLI); never raises."""
    if nvml is None:
        return GpuSnapshot(False, "no NVIDIA GPU: pynvml not installed")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError: library not found, driver not loaded, ...
        return _failure(exc)
    try:
        return _read_devices(nvml)
    except Exception as exc:
        return _failure(exc)
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def memory_freed_for(snapshot: GpuSnapshot, pids: Iterable[int]) -> bool:
    """True when no GPU lists any of `pids` as a compute process (their memory is released)."""
    wanted = set(pids)
    return not any(p.pid in wanted for gpu in snapshot.gpus for p in gpu.processes)


class GpuMonitor:
    """Holds the latest snapshot, refreshed every `interval` s in a worker thread.

    NVML is initialised once for the monitor's life: nvmlInit can take seconds without
    persistence mode, far too slow per read.
    """

    def __init__(self, nvml: Any | None, interval: float) -> None:
        self._nvml = nvml
        self._interval = interval
        self._initialised = False
        self._snapshot = GpuSnapshot(False, "no NVIDIA GPU: not read yet")
        self._task: asyncio.Task[None] | None = None

    @property
    def snapshot(self) -> GpuSnapshot:
        return self._snapshot

    def memory_freed_for(self, pids: Iterable[int]) -> bool:
        return memory_freed_for(self._snapshot, pids)

    def _init(self) -> GpuSnapshot | None:
        if self._nvml is None:
            return GpuSnapshot(False, "no NVIDIA GPU: pynvml not installed")
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            return _failure(exc)
        self._initialised = True
        return None

    def _read(self) -> GpuSnapshot:
        if not self._initialised:
            failed = self._init()
            if failed is not None:
                return failed
        try:
            return _read_devices(self._nvml)
        except Exception as exc:
            return _failure(exc)

    async def refresh(self) -> GpuSnapshot:
        self._snapshot = await asyncio.to_thread(self._read)
        return self._snapshot

    async def start(self) -> GpuSnapshot:
        """First read now (the tuned defaults need it), then on the timer."""
        snapshot = await self.refresh()
        if not snapshot.available:
            log.info("%s", snapshot.reason, extra={"component": "gpu"})
        if self._nvml is not None and self._initialised:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="gpu-monitor")
        return snapshot

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:  # never let the timer die; the old snapshot stays
                log.exception("NVML refresh failed", extra={"component": "gpu"})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._initialised:
            nvml: Any = self._nvml
            self._initialised = False
            with contextlib.suppress(Exception):
                await asyncio.to_thread(nvml.nvmlShutdown)
