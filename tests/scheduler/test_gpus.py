"""Placement on GPUs, with NVML snapshots injected (there is no GPU in CI) and the fake vLLM
reporting how it was started: the GPUs it was given (CUDA_VISIBLE_DEVICES), its share
(--gpu-memory-utilization), tensor parallelism; and vLLM's sleep mode to park idle models."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.scheduler.conftest import WAIT, MakeBed, gpus
from vllama.scheduler.state import SlotState

pytestmark = pytest.mark.timeout(120)


async def test_one_gpu_each_with_the_most_room_first(make_bed: MakeBed) -> None:
    bed = await make_bed("a", "b", snapshot=gpus(80, 80), budget=0)
    async with (aiohttp.ClientSession() as session, asyncio.timeout(WAIT),
                bed.scheduler.lease(bed.model("a")), bed.scheduler.lease(bed.model("b"))):
        a, b = await bed.info("a", session), await bed.info("b", session)
    assert {a["cuda_visible_devices"], b["cuda_visible_devices"]} == {"0", "1"}
    for info in (a, b):
        assert 0 < info["gpu_memory_utilization"] < 0.01  # its need over 80 GiB, not 0.90
        assert info["tensor_parallel_size"] is None


async def test_engines_share_a_gpu_within_its_cap(make_bed: MakeBed) -> None:
    bed = await make_bed("a", "b", "c", snapshot=gpus(80), budget=0)
    async with (aiohttp.ClientSession() as session, asyncio.timeout(WAIT),
                bed.scheduler.lease(bed.model("a")), bed.scheduler.lease(bed.model("b")),
                bed.scheduler.lease(bed.model("c"))):
        infos = [await bed.info(n, session) for n in ("a", "b", "c")]
    assert {i["cuda_visible_devices"] for i in infos} == {"0"}
    assert sum(i["gpu_memory_utilization"] for i in infos) < 0.95


async def test_a_model_too_big_for_one_gpu_gets_tensor_parallel(make_bed: MakeBed) -> None:
    # 40 GiB of KV cache: more than one 24 GiB GPU holds, half of it fits on each of two.
    bed = await make_bed("big", snapshot=gpus(24, 24, 24, 24), budget=0,
                         model_args={"big": ("--kv-cache-memory-bytes", "40G")})
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT), \
            bed.scheduler.lease(bed.model("big")):
        info = await bed.info("big", session)
    assert info["tensor_parallel_size"] == 2
    assert sorted(info["cuda_visible_devices"].split(",")) == ["0", "1"]
    [status] = bed.scheduler.snapshot()
    assert status.devices == (0, 1)


async def test_idle_models_sleep_and_wake_on_the_next_request(make_bed: MakeBed) -> None:
    bed = await make_bed("a", snapshot=gpus(80), budget=0, sleep=True)
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT):
        async with bed.scheduler.lease(bed.model("a"), keep_alive=0.3):
            pid = bed.pid("a")
        while bed.scheduler.slot_state("a") is not SlotState.SLEEPING:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert (await bed.info("a", session))["sleeping"] is True
        [status] = bed.scheduler.snapshot()
        assert status.reserved == 0  # its GPU memory is given back
        async with bed.scheduler.lease(bed.model("a")) as lease:
            assert lease.base_url.endswith("/v1")
            assert (await bed.info("a", session))["sleeping"] is False
        assert bed.pid("a") == pid  # the same engine woke: no reload
    kinds = [e[0] for e in bed.events]
    assert kinds == ["load", "loaded", "sleep", "wake", "loaded"]


async def test_an_engine_that_refuses_sleep_is_stopped_instead(make_bed: MakeBed) -> None:
    # The user switched sleep mode off for this model (as the CPU build refuses it).
    bed = await make_bed("a", snapshot=gpus(80), budget=0, sleep=True,
                         model_args={"a": ("--no-enable-sleep-mode",)})
    async with asyncio.timeout(WAIT):
        async with bed.scheduler.lease(bed.model("a"), keep_alive=0.3):
            pid = bed.pid("a")
        await bed.gone(pid)
        while bed.scheduler.snapshot():  # noqa: ASYNC110 - the slot goes once retired
            await asyncio.sleep(0.05)
    assert ("unload", "a", "idle") in bed.events
