"""NVML snapshots with a fake nvml module (the one fake allowed: there is no GPU here)."""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest

from vllama.gpu import (
    GpuMonitor,
    GpuProcess,
    GpuSnapshot,
    import_nvml,
    memory_freed_for,
    read_snapshot,
)
from vllama.supervisor.hardware import hardware_info, read_mem_available

GiB = 1 << 30


class NVMLError(Exception):
    pass


@dataclass
class Mem:
    total: int
    used: int
    free: int


@dataclass
class Util:
    gpu: int
    memory: int = 0


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int | None  # NVML's spelling


@dataclass
class Device:
    name: Any = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-1234"
    mem: Mem = field(default_factory=lambda: Mem(80 * GiB, 10 * GiB, 70 * GiB))
    util: int = 37
    temp: int = 41
    power_mw: int | None = 123_456
    procs: list[Proc] = field(default_factory=lambda: [Proc(4242, 9 * GiB)])


class FakeNvml:
    """The slice of pynvml's API gpu.py uses, with NVML's error behaviour."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, devices: list[Device], init_error: str = "") -> None:
        self.devices = devices
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Device:
        return self.devices[i]

    def nvmlDeviceGetName(self, d: Device) -> Any:
        return d.name

    def nvmlDeviceGetUUID(self, d: Device) -> str:
        return d.uuid

    def nvmlDeviceGetMemoryInfo(self, d: Device) -> Mem:
        return d.mem

    def nvmlDeviceGetUtilizationRates(self, d: Device) -> Util:
        return Util(d.util)

    def nvmlDeviceGetTemperature(self, d: Device, sensor: int) -> int:
        assert sensor == 0
        return d.temp

    def nvmlDeviceGetPowerUsage(self, d: Device) -> int:
        if d.power_mw is None:
            raise NVMLError("Not Supported")
        return d.power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, d: Device) -> list[Proc]:
        return d.procs


def test_all_fields() -> None:
    nvml = FakeNvml([Device(), Device(name=b"NVIDIA L4", uuid="GPU-2", procs=[])])
    snap = read_snapshot(nvml)
    assert snap.available and snap.reason == "" and snap.driver_version == "570.86.15"
    first, second = snap.gpus
    assert first.index == 0 and first.name == "NVIDIA H100 80GB HBM3" and first.uuid == "GPU-1234"
    assert (first.memory_total, first.memory_used, first.memory_free) == (
        80 * GiB,
        10 * GiB,
        70 * GiB,
    )
    assert (first.utilization_gpu, first.temperature_c, first.power_w) == (37, 41, 123.456)
    assert first.processes == (GpuProcess(4242, 9 * GiB),)
    assert second.name == "NVIDIA L4" and second.index == 1  # bytes names are decoded
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_unsupported_fields_are_none() -> None:
    class Partial(FakeNvml):
        def nvmlDeviceGetUtilizationRates(self, d: Device) -> Util:
            raise NVMLError("Not Supported")

        def nvmlDeviceGetTemperature(self, d: Device, sensor: int) -> int:
            raise NVMLError("Not Supported")

    snap = read_snapshot(Partial([Device(power_mw=None, procs=[Proc(1, None)])]))
    gpu = snap.gpus[0]
    assert snap.available
    assert (gpu.utilization_gpu, gpu.temperature_c, gpu.power_w) == (None, None, None)
    assert gpu.memory_total == 80 * GiB
    assert gpu.processes == (GpuProcess(1, None),)


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (None, "no NVIDIA GPU: pynvml not installed"),
        (
            FakeNvml([], "NVML Shared Library Not Found"),
            "no NVIDIA GPU: NVML Shared Library Not Found",
        ),
        (FakeNvml([], "Driver Not Loaded"), "no NVIDIA GPU: Driver Not Loaded"),
        (FakeNvml([]), "no NVIDIA GPU: NVML found no devices"),
    ],
)
def test_no_gpu_reasons(nvml: FakeNvml | None, reason: str) -> None:
    snap = read_snapshot(nvml)
    assert snap == GpuSnapshot(False, reason)


def test_a_failing_device_read_does_not_raise() -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetHandleByIndex(self, i: int) -> Device:
            raise NVMLError("GPU is lost")

    assert read_snapshot(Broken([Device()])) == GpuSnapshot(False, "no NVIDIA GPU: GPU is lost")


def test_import_nvml_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = import_nvml()
    # nvidia-ml-py is installed here; its module is `pynvml` (no GPU, so only import is checked)
    assert module is None or hasattr(module, "nvmlInit")


def test_real_nvml_without_gpu_reports_a_reason() -> None:
    snap = read_snapshot(import_nvml())
    if snap.available:  # on a GPU machine
        assert snap.gpus and snap.gpus[0].memory_total
    else:
        assert snap.reason.startswith("no NVIDIA GPU")


def test_memory_freed_for() -> None:
    snap = read_snapshot(FakeNvml([Device(procs=[Proc(10, 1), Proc(11, 2)])]))
    assert not memory_freed_for(snap, {11, 99})
    assert memory_freed_for(snap, {12})
    assert memory_freed_for(GpuSnapshot(False, "x"), {11})


async def test_monitor_refreshes_and_shuts_down() -> None:
    device = Device()
    nvml = FakeNvml([device])
    monitor = GpuMonitor(nvml, interval=0.01)
    first = await monitor.start()
    try:
        assert first.gpus[0].memory_used == 10 * GiB
        assert not monitor.memory_freed_for([4242])
        device.mem = Mem(80 * GiB, 1 * GiB, 79 * GiB)
        device.procs = []
        async with asyncio.timeout(5):
            while monitor.snapshot.gpus[0].memory_used != 1 * GiB:  # noqa: ASYNC110 - timer
                await asyncio.sleep(0.01)
        assert monitor.memory_freed_for([4242])
    finally:
        await monitor.stop()
    assert nvml.inits == 1 and nvml.shutdowns == 1  # initialised once for the monitor's life


async def test_monitor_without_gpu() -> None:
    monitor = GpuMonitor(FakeNvml([], "Driver Not Loaded"), interval=0.01)
    snap = await monitor.start()
    await monitor.stop()
    assert snap.reason == "no NVIDIA GPU: Driver Not Loaded"


def test_hardware_info_from_snapshot() -> None:
    snap = read_snapshot(FakeNvml([Device(), Device(mem=Mem(40 * GiB, 0, 40 * GiB), name="A")]))
    hw = hardware_info(snap, mem_available=GiB, cpus=[1, 0])
    assert (hw.gpu_count, hw.gpu_name, hw.gpu_memory_total) == (2, "A", 40 * GiB)
    assert hw.cpus == (0, 1) and hw.on_gpu
    cpu = hardware_info(GpuSnapshot(False, "none"), mem_available=GiB)
    assert not cpu.on_gpu and cpu.cpus and cpu.mem_available == GiB


def test_read_mem_available(tmp_path: Any) -> None:
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       24000000 kB\nMemAvailable:    1000 kB\n")
    assert read_mem_available(str(path)) == 1_024_000
    assert read_mem_available(str(tmp_path / "missing")) == 0
    assert read_mem_available() > 0
