"""Placement on fake GPUs and on the host, and the eviction planner."""

from __future__ import annotations

from typing import Any

import pytest

from vllama.gpu import GpuInfo, GpuSnapshot
from vllama.models.memory import (
    CPU_OVERHEAD_BYTES,
    GiB,
    MemoryNeed,
    device_bytes,
    kv_bytes,
    memory_need,
)
from vllama.models.weights import WeightsInfo
from vllama.scheduler.placement import (
    GPU_SHARE_CAP,
    HOST,
    START_MARGIN_BYTES,
    Claim,
    Device,
    LoadedModel,
    NoFit,
    Placement,
    gpu_devices,
    host_device,
    parse_meminfo,
    place,
    plan_eviction,
    room,
)

H100 = 80 * GiB

LLAMA_8B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072}
LLAMA_70B: dict[str, Any] = {**LLAMA_8B, "hidden_size": 8192, "num_hidden_layers": 80,
                             "num_attention_heads": 64}
LLAMA_405B: dict[str, Any] = {**LLAMA_8B, "hidden_size": 16384, "num_hidden_layers": 126,
                              "num_attention_heads": 128}


def bf16(parameters: int) -> WeightsInfo:
    return WeightsInfo(parameters, 2 * parameters, parameters, 2 * parameters, "BF16")


def llama_8b(context: int = 8192) -> MemoryNeed:
    return memory_need(bf16(8_030_261_248), LLAMA_8B, max_model_len=context)


def llama_70b(context: int = 8192) -> MemoryNeed:
    return memory_need(bf16(70_553_706_496), LLAMA_70B, max_model_len=context)


def llama_405b() -> MemoryNeed:
    return memory_need(bf16(405_853_388_800), LLAMA_405B, max_model_len=8192)


def flat(weights_gib: float, heads: int = 0, kv_heads: int = 0) -> MemoryNeed:
    """A need of `weights_gib` of weights plus 2 GiB overhead and no KV."""
    return MemoryNeed(int(weights_gib * GiB), None, 4096, 4096, 4096, 2 * GiB, heads, kv_heads)


def gpu(index: int, total: int = H100, free: int | None = None) -> Device:
    return Device(index, total, total if free is None else free, "gpu", "fake")


def gpus(n: int, total: int = H100) -> list[Device]:
    return [gpu(i, total) for i in range(n)]


# --- the reference arithmetic end to end ------------------------------------------------------


def test_llama_8b_on_one_empty_h100() -> None:
    need = llama_8b()
    assert device_bytes(need) == 16_060_522_496 + GiB + 2 * GiB  # 17.96 GiB
    fit = place(need, [gpu(0)])
    assert fit == Placement(
        devices=(0,), tensor_parallel=1, gpu_memory_utilization=0.2245,
        kv_cache_memory_bytes=None,
        reserved={0: 19_284_403_160},  # ceil(80 GiB x 0.2245): vLLM's own rounding
        args=("--gpu-memory-utilization", "0.2245", "--max-model-len", "8192"),
        env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"},
        why="GPU 0: 18.0 GiB each (0.2245 of total)")


SCENARIOS: list[tuple[str, MemoryNeed, list[Device], list[Claim], tuple[int, ...] | None]] = [
    # (name, need, GPUs, claims, GPUs chosen or None for NoFit)
    ("1 GPU", llama_8b(), [gpu(0)], [], (0,)),
    ("2 GPUs, one nearly full", llama_8b(), [gpu(0, free=5 * GiB), gpu(1)], [], (1,)),
    ("most room first", llama_8b(),
     [gpu(0, free=40 * GiB), gpu(1, free=60 * GiB), gpu(2, free=50 * GiB)], [], (1,)),
    ("8 equal GPUs: the lowest index", llama_8b(), gpus(8), [], (0,)),
    ("8B at 128k on a 24 GiB GPU", llama_8b(131072), [gpu(0, 24 * GiB)], [], None),
    ("70B at 8k: TP 2", llama_70b(), gpus(8), [], (0, 1)),
    ("70B at 128k: TP 4", llama_70b(131072), gpus(8), [], (0, 1, 2, 3)),
    ("70B at 128k, GPUs 0-3 busy", llama_70b(131072),
     [gpu(i, free=10 * GiB) for i in range(4)] + [gpu(i) for i in range(4, 8)], [],
     (4, 5, 6, 7)),
    ("70B on one GPU", llama_70b(), [gpu(0)], [], None),
    ("70B at 128k on 2 GPUs", llama_70b(131072), gpus(2), [], None),
    ("405B on 8 H100s", llama_405b(), gpus(8), [], None),
    ("mixed 24/48: the larger", llama_8b(), [gpu(0, 24 * GiB), gpu(1, 48 * GiB)], [], (1,)),
    ("mixed 24/48: only the larger holds 30 GiB", flat(28),
     [gpu(0, 24 * GiB), gpu(1, 48 * GiB), gpu(2, 24 * GiB)], [], (1,)),
    ("mixed: TP over the two 48s", flat(60),
     [gpu(0, 24 * GiB), gpu(1, 48 * GiB), gpu(2, 24 * GiB), gpu(3, 48 * GiB)], [], (1, 3)),
    # One fraction for every rank: 20 GiB of a 24 GiB GPU is 0.8334, which on the 48 GiB
    # GPU is 40 GiB, more than its 30 GiB free.
    ("mixed TP bound by the smallest", flat(36),
     [gpu(0, 24 * GiB), gpu(1, 48 * GiB, free=30 * GiB)], [], None),
    ("shared GPU under the cap", llama_8b(), [gpu(0, free=H100 - 20 * GiB)],
     [Claim(0, 20 * GiB)], (0,)),
    ("shared GPU over the cap", llama_8b(), [gpu(0, free=H100 - 60 * GiB)],
     [Claim(0, 60 * GiB)], None),
    ("another process holds most of it", llama_8b(), [gpu(0, free=10 * GiB)], [], None),
    ("a loading engine not yet in NVML", llama_8b(), [gpu(0, free=H100 - 35 * GiB)],
     [Claim(0, 30 * GiB, loading=True)], None),
    ("the same engine once loaded", llama_8b(), [gpu(0, free=H100 - 65 * GiB)],
     [Claim(0, 30 * GiB)], None),
    ("loaded elsewhere, room here", llama_8b(), [gpu(0, free=H100 - 35 * GiB), gpu(1)],
     [Claim(0, 30 * GiB, loading=True)], (1,)),
]


@pytest.mark.parametrize(("need", "devices", "claims", "chosen"),
                         [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_placement(need: MemoryNeed, devices: list[Device], claims: list[Claim],
                   chosen: tuple[int, ...] | None) -> None:
    fit = place(need, devices, claims)
    if chosen is None:
        assert isinstance(fit, NoFit), fit
        assert fit.short_bytes > 0 and fit.need_bytes == device_bytes(
            need, fit.tensor_parallel)
        return
    assert isinstance(fit, Placement), fit
    assert fit.devices == chosen and fit.tensor_parallel == len(chosen)
    by_index = {d.index: d for d in devices}
    per_device = device_bytes(need, fit.tensor_parallel)
    for index in chosen:
        device = by_index[index]
        given = fit.reserved[index]
        assert given >= per_device  # enough for the need
        assert given <= room(device, claims)  # never more than is free or under the cap
        held = sum(c.bytes for c in claims if c.device == index)
        assert held + given <= GPU_SHARE_CAP * device.total_bytes
        assert given <= device.free_bytes - START_MARGIN_BYTES
    assert fit.env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, chosen))
    assert ("--tensor-parallel-size" in fit.args) == (len(chosen) > 1)


def test_tensor_parallel_flags() -> None:
    fit = place(llama_70b(131072), gpus(8))
    assert isinstance(fit, Placement)
    per_device = device_bytes(llama_70b(131072), 4)  # 32.9 + 10 + 2 GiB
    assert fit.args == ("--gpu-memory-utilization", f"{-(-per_device * 10_000 // H100) / 1e4}",
                        "--max-model-len", "131072", "--tensor-parallel-size", "4")
    assert fit.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert len(set(fit.reserved.values())) == 1 and set(fit.reserved) == {0, 1, 2, 3}


def test_a_shared_gpu_fixes_the_kv_cache() -> None:
    need = llama_8b()
    alone = place(need, [gpu(0)])
    shared = place(need, [gpu(0, free=H100 - 20 * GiB)], [Claim(0, 20 * GiB)])
    assert isinstance(alone, Placement) and isinstance(shared, Placement)
    assert alone.kv_cache_memory_bytes is None
    assert shared.kv_cache_memory_bytes == kv_bytes(need) == GiB
    assert shared.args[-2:] == ("--kv-cache-memory-bytes", str(GiB))
    assert "shared" in shared.why
    assert shared.gpu_memory_utilization == alone.gpu_memory_utilization


def test_room() -> None:
    assert room(gpu(0), []) == int(H100 * GPU_SHARE_CAP)
    assert room(gpu(0, free=10 * GiB), []) == 9 * GiB  # free less the start margin
    assert room(gpu(0, free=50 * GiB), [Claim(0, 30 * GiB)]) == int(H100 * 0.95) - 30 * GiB
    assert room(gpu(0, free=50 * GiB), [Claim(0, 30 * GiB, True)]) == 19 * GiB
    assert room(gpu(0, free=50 * GiB), [Claim(1, 30 * GiB, True)]) == 49 * GiB
    assert room(gpu(0, free=GiB // 2), []) == 0
    assert room(gpu(0), [], cap=0.5, margin=0) == 40 * GiB


def test_no_fit_says_why_and_by_how_much() -> None:
    fit = place(llama_8b(131072), [gpu(0, 24 * GiB)])
    assert isinstance(fit, NoFit)
    # 14.96 GiB weights + 16 GiB KV + 2 GiB overhead on a 24 GiB GPU (22.8 GiB under the cap)
    assert fit.need_bytes == device_bytes(llama_8b(131072))
    assert fit.short_bytes == pytest.approx(33 * GiB - int(24 * GiB * 0.95), abs=GiB // 10)
    assert not fit.fits_when_empty
    assert 40_000 < fit.largest_context < 50_000
    assert fit.message.startswith("needs 33.0 GiB on one GPU (weights 15.0 GiB, KV cache "
                                  "16.0 GiB for 131072 tokens, overhead 2.0 GiB); the closest "
                                  "choice, GPU 0, has 22.8 GiB it may use: 10.2 GiB short")
    assert "too large for this GPU even when empty" in fit.message
    assert f"a context of {fit.largest_context} tokens would fit now" in fit.message
    small = place(llama_8b(), [gpu(0, 24 * GiB)])
    assert isinstance(small, Placement)  # the hint is right: a shorter context fits


def test_no_fit_while_others_hold_memory() -> None:
    fit = place(llama_8b(), [gpu(0, free=H100 - 60 * GiB)], [Claim(0, 60 * GiB)])
    assert isinstance(fit, NoFit) and fit.fits_when_empty
    assert "fits once other models unload" in fit.message


def test_too_large_for_the_machine() -> None:
    fit = place(llama_405b(), gpus(8))
    assert isinstance(fit, NoFit)
    assert (fit.tensor_parallel, fit.fits_when_empty, fit.largest_context) == (8, False, 0)
    assert fit.message.startswith(
        "needs 97.0 GiB on each of 8 GPUs (weights 94.5 GiB, KV cache 504 MiB for 8192 tokens, "
        "overhead 2.0 GiB); the closest choice, GPUs 0,1,2,3,4,5,6,7, has 76.0 GiB it may "
        "use: 21.0 GiB short")
    assert fit.message.endswith("too large for these 8 GPUs even when empty")


def test_tensor_parallel_sizes_must_divide_the_heads() -> None:
    need = flat(200, heads=14, kv_heads=2)  # TP 4 would fit, but 14 heads do not split 4 ways
    fit = place(need, gpus(4))
    assert isinstance(fit, NoFit) and fit.tensor_parallel == 2
    assert isinstance(place(flat(100, heads=14, kv_heads=2), gpus(4)), Placement)


def test_forced_and_restricted() -> None:
    fit = place(llama_8b(), gpus(4), tensor_parallel=2)
    assert isinstance(fit, Placement) and fit.devices == (0, 1)
    fit = place(llama_8b(), gpus(4), only=[3])
    assert isinstance(fit, Placement) and fit.devices == (3,)
    fit = place(llama_8b(), gpus(2), tensor_parallel=4)
    assert isinstance(fit, NoFit) and "no way to split" in fit.message


def test_many_gpus_stay_cheap() -> None:
    devices = [gpu(i, free=(10 + i) * GiB) for i in range(64)]
    fit = place(llama_70b(131072), devices)
    assert isinstance(fit, Placement) and fit.devices == (60, 61, 62, 63)  # most free


def test_nothing_to_place_on() -> None:
    fit = place(llama_8b(), [])
    assert isinstance(fit, NoFit) and fit.message.startswith("no GPU and no host memory")


# --- the host ---------------------------------------------------------------------------------

TINY = MemoryNeed(10 * 2**20, None, 2048, 2048, 2048, CPU_OVERHEAD_BYTES)


def tiny_with_kv() -> MemoryNeed:
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "hidden_size": 128, "max_position_embeddings": 2048}
    return memory_need(WeightsInfo(0, 10 * 2**20), config, dtype="float32",
                       overhead_bytes=CPU_OVERHEAD_BYTES)


def test_cpu_host_with_a_budget() -> None:
    need = tiny_with_kv()
    kv = 2048 * 2 * 2 * 2 * 32 * 4  # tokens x layers x K,V x KV heads x head_dim x f32
    host = host_device(mem_available=100 * GiB, mem_total=128 * GiB, memory_budget=6 * GiB)
    assert host == Device(HOST, 6 * GiB, 100 * GiB, "cpu", "host")
    fit = place(need, [host])
    assert fit == Placement(
        devices=(), tensor_parallel=1, gpu_memory_utilization=None, kv_cache_memory_bytes=kv,
        reserved={HOST: 10 * 2**20 + kv + CPU_OVERHEAD_BYTES},
        args=("--max-model-len", "2048", "--kv-cache-memory-bytes", str(kv)), env={},
        why="host memory: 2.0 GiB, KV cache fixed at 2 MiB")


def test_a_budget_holds_only_some_models() -> None:
    host = host_device(100 * GiB, 128 * GiB, memory_budget=5 * GiB)
    held = [Claim(HOST, device_bytes(TINY))]
    assert isinstance(place(TINY, [host], held), Placement)
    fit = place(TINY, [host], held * 2)
    assert isinstance(fit, NoFit) and fit.fits_when_empty
    assert fit.message.startswith("needs 2.0 GiB of host memory")


def test_host_without_a_budget_is_bound_by_mem_available() -> None:
    host = host_device(mem_available=GiB, mem_total=64 * GiB)
    fit = place(TINY, [host])
    assert isinstance(fit, NoFit) and fit.fits_when_empty
    assert fit.short_bytes == device_bytes(TINY) - GiB


def test_gpus_come_first_when_both_are_given() -> None:
    fit = place(llama_8b(), [host_device(GiB, GiB), gpu(0)])
    assert isinstance(fit, Placement) and fit.devices == (0,)


@pytest.mark.parametrize(("text", "expected"), [
    ("MemTotal:       16316412 kB\nMemFree:  1 kB\nMemAvailable:   12345678 kB\n",
     (16316412 * 1024, 12345678 * 1024)),
    ("MemTotal: 100\n", (100, 0)),
    ("", (0, 0)),
    ("garbage\nMemAvailable: lots kB\n", (0, 0)),
])
def test_parse_meminfo(text: str, expected: tuple[int, int]) -> None:
    assert parse_meminfo(text) == expected


def test_gpu_devices_from_an_nvml_snapshot() -> None:
    snapshot = GpuSnapshot(True, "", (
        GpuInfo(0, "H100", memory_total=H100, memory_free=70 * GiB),
        GpuInfo(1, "MIG slice"),  # no memory reading: not a place to run
    ))
    assert gpu_devices(snapshot) == (Device(0, H100, 70 * GiB, "gpu", "H100"),)
    assert gpu_devices(GpuSnapshot(False, "no NVIDIA GPU")) == ()


# --- eviction ---------------------------------------------------------------------------------


def model(name: str, gib: float, last_used: float, *, device: int = 0, in_flight: int = 0,
          pinned: bool = False, loading: bool = False) -> LoadedModel:
    return LoadedModel(name, {device: int(gib * GiB)}, last_used, in_flight, pinned, loading)


def one_gpu(loaded: list[LoadedModel], total: int = H100) -> list[Device]:
    """A GPU whose NVML free memory shows what the loaded (not loading) models hold."""
    used = sum(b for m in loaded if not m.loading for b in m.bytes_per_device.values())
    return [gpu(0, total, free=total - used)]


FOUR = [model("a", 18, 10), model("b", 18, 30), model("c", 18, 20), model("d", 18, 40)]


@pytest.mark.parametrize(("need", "loaded", "expected"), [
    (llama_8b(), FOUR, ["a"]),  # least recently used first
    (flat(28), FOUR, ["a", "c"]),  # only as many as needed
    (llama_8b(), [model("a", 18, 10, in_flight=1), *FOUR[1:]], ["c"]),  # busy: never
    (llama_8b(), [model("a", 18, 10, pinned=True), *FOUR[1:]], ["c"]),  # pinned: never
    (llama_8b(), [model("a", 18, 10, pinned=True), model("b", 18, 30, in_flight=2),
                  model("c", 18, 20, in_flight=1), model("d", 18, 40)], ["d"]),
    (llama_8b(), [model("a", 18, 10, loading=True), *FOUR[1:]], ["c"]),  # loading: never
    (llama_8b(), [model("a", 18, 10, pinned=True), model("b", 18, 30, in_flight=1),
                  model("c", 18, 20, in_flight=1), model("d", 18, 40, pinned=True)], None),
    (flat(70), [model("a", 18, 10, pinned=True), *FOUR[1:]], None),  # not even with all
    (llama_70b(), FOUR, None),  # too large for this GPU whatever goes
    (llama_8b(), FOUR[:2], []),  # fits already
    (llama_8b(), [], []),
    (llama_8b(), [model("x", 42, 5), model("y", 18, 5)], ["x"]),  # equal times: by name
])
def test_plan_eviction(need: MemoryNeed, loaded: list[LoadedModel],
                       expected: list[str] | None) -> None:
    assert plan_eviction(need, one_gpu(loaded), loaded) == expected


def test_eviction_frees_memory_another_process_does_not_hold() -> None:
    """NVML free (not the cap) binds here: an outside process holds 30 GiB."""
    loaded = [model("a", 40, 1)]
    devices = [gpu(0, free=H100 - 30 * GiB - 40 * GiB)]
    assert isinstance(place(llama_8b(), devices, [Claim(0, 40 * GiB)]), NoFit)
    assert plan_eviction(llama_8b(), devices, loaded) == ["a"]


def test_eviction_keeps_models_whose_memory_does_not_help() -> None:
    """The least recently used model sits on a GPU too small for the need even when empty;
    stopping it would cost a reload and gain nothing."""
    loaded = [model("old", 20, 10, device=1), model("newer", 60, 20, device=0)]
    devices = [gpu(0, free=H100 - 60 * GiB), gpu(1, 24 * GiB, free=4 * GiB)]
    assert plan_eviction(flat(28), devices, loaded) == ["newer"]


def test_eviction_on_a_cpu_budget() -> None:
    loaded = [model("a", 2.1, 3, device=HOST), model("b", 2.1, 1, device=HOST)]
    host = host_device(mem_available=100 * GiB, mem_total=128 * GiB, memory_budget=5 * GiB)
    assert plan_eviction(TINY, [host], loaded) == ["b"]


def test_eviction_honours_a_forced_tensor_parallel_size() -> None:
    loaded = [model("a", 70, 1, device=0), model("b", 70, 2, device=1)]
    devices = [gpu(0, free=10 * GiB), gpu(1, free=10 * GiB)]
    assert plan_eviction(llama_8b(), devices, loaded) == ["a"]
    assert plan_eviction(llama_8b(), devices, loaded, tensor_parallel=2) == ["a", "b"]
    assert plan_eviction(llama_8b(), devices, loaded, only=[1]) == ["b"]
