"""The scheduler's lifecycle over real fake-vLLM children: on-demand loads, the bounded queue,
keep_alive, memory-aware eviction (least recently used, never busy or pinned), waiting without
blocking others, failed loads failing every waiter at once, and unloads that leave no process.
"""

from __future__ import annotations

import asyncio
import math

import aiohttp
import msgspec
import pytest

from tests.scheduler.conftest import WAIT, MakeBed, MiB
from vllama.errors import ServerBusy, Unavailable
from vllama.scheduler.state import SlotState
from vllama.supervisor import BackoffPolicy, EngineState

pytestmark = pytest.mark.timeout(120)


async def _models(base_url: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(base_url + "/models") as resp:
        assert resp.status == 200
        return [m["id"] for m in (await resp.json())["data"]]


async def test_first_request_loads_and_the_lease_reaches_the_engine(make_bed: MakeBed) -> None:
    bed = await make_bed("a")
    assert bed.scheduler.slot_state("a") is None
    async with asyncio.timeout(WAIT), bed.scheduler.lease(bed.model("a")) as lease:
        assert await _models(lease.base_url) == ["a"]
        assert bed.scheduler.slot_state("a") is SlotState.LOADED
        [status] = bed.scheduler.snapshot()
        assert status.in_flight == 1 and status.expires_at is None
    [status] = bed.scheduler.snapshot()
    assert status.in_flight == 0 and status.expires_at is not None  # the clock runs now
    assert [e[0] for e in bed.events] == ["load", "loaded"]


async def test_requests_during_a_load_wait_and_are_released_together(make_bed: MakeBed) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-startup-delay", "1.5")})
    async with asyncio.timeout(WAIT):
        leases = await asyncio.gather(*(bed.scheduler.acquire(bed.model("a"))
                                        for _ in range(6)))
    assert len({lease.base_url for lease in leases}) == 1  # one engine served them all
    assert [e[0] for e in bed.events].count("load") == 1
    assert bed.scheduler.snapshot()[0].in_flight == 6
    for lease in leases:
        bed.scheduler.release(lease)
    assert bed.scheduler.snapshot()[0].in_flight == 0


async def test_a_full_queue_answers_server_busy(make_bed: MakeBed) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-startup-delay", "1.5")}, max_queue=2)
    waiting = [asyncio.ensure_future(bed.scheduler.acquire(bed.model("a"))) for _ in range(2)]
    await asyncio.sleep(0.1)
    assert bed.scheduler.queued == {"a": 2}
    with pytest.raises(ServerBusy) as info:
        await bed.scheduler.acquire(bed.model("a"))
    assert info.value.status == 503
    assert info.value.message == ("server busy, please try again.  maximum pending requests "
                                  "exceeded")
    async with asyncio.timeout(WAIT):
        for lease in await asyncio.gather(*waiting):
            bed.scheduler.release(lease)
    # a loaded model bypasses the queue: never busy, whatever waits for other models
    async with bed.scheduler.lease(bed.model("a")):
        pass


async def test_a_failing_load_fails_every_waiter_at_once(make_bed: MakeBed) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-fail-at-start", "config")})
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(*(bed.scheduler.acquire(bed.model("a"))
                                         for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    messages = {r.message for r in results if isinstance(r, Unavailable)}
    assert len(messages) == 1
    assert "failed" in next(iter(messages))  # the supervisor's classified reason
    assert bed.scheduler.snapshot() == []  # nothing left behind: the next request tries anew
    assert bed.supervisor.get("a") is None


async def test_keep_alive_zero_unloads_when_the_last_request_ends(make_bed: MakeBed) -> None:
    bed = await make_bed("a")
    async with asyncio.timeout(WAIT):
        first = await bed.scheduler.acquire(bed.model("a"))
        second = await bed.scheduler.acquire(bed.model("a"), keep_alive=0.0)
    pid = bed.pid("a")
    bed.scheduler.release(second)
    await asyncio.sleep(0.3)
    assert bed.scheduler.slot_state("a") is SlotState.LOADED  # one request still runs
    bed.scheduler.release(first)
    await bed.gone(pid)
    async with asyncio.timeout(WAIT):
        while bed.scheduler.snapshot():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert ("unload", "a", "keep_alive 0") in bed.events


async def test_a_short_keep_alive_expires_after_the_last_request(make_bed: MakeBed) -> None:
    bed = await make_bed("a")
    async with asyncio.timeout(WAIT), bed.scheduler.lease(bed.model("a"), keep_alive=0.5):
        await asyncio.sleep(1.0)  # longer than keep_alive, but busy: not a second of idle yet
        assert bed.scheduler.slot_state("a") is SlotState.LOADED
    pid = bed.pid("a")
    await bed.gone(pid)
    assert ("unload", "a", "idle") in bed.events


async def test_negative_keep_alive_keeps_it_loaded(make_bed: MakeBed) -> None:
    bed = await make_bed("a")
    async with asyncio.timeout(WAIT), bed.scheduler.lease(bed.model("a"), keep_alive=math.inf):
        pass
    [status] = bed.scheduler.snapshot()
    assert status.keep_alive is None and status.expires_at is None


async def test_lru_eviction_never_takes_a_busy_or_pinned_model(make_bed: MakeBed) -> None:
    bed = await make_bed("a", "b", "c", "d", budget=400 * MiB)  # two fit
    async with asyncio.timeout(WAIT):
        async with bed.scheduler.lease(bed.model("a")):
            pass
        async with bed.scheduler.lease(bed.model("b")):
            pass
        async with bed.scheduler.lease(bed.model("a")):  # a is now the most recently used
            pass
        pid_b = bed.pid("b")
        async with bed.scheduler.lease(bed.model("c")):
            assert bed.scheduler.slot_state("b") is None  # the least recently used went
            assert bed.scheduler.slot_state("a") is SlotState.LOADED
        await bed.gone(pid_b)
        assert ("evict", "c", "b") in bed.events
        # a busy model stays even when least recently used; a pinned one too
        busy = await bed.scheduler.acquire(bed.model("a"))
        async with bed.scheduler.lease(bed.model("d"), keep_alive=math.inf):
            pass
        assert bed.scheduler.slot_state("c") is None and bed.scheduler.slot_state("a") is \
            SlotState.LOADED
        bed.scheduler.release(busy)


async def test_nothing_evictable_waits_then_fails_with_why(make_bed: MakeBed) -> None:
    bed = await make_bed("a", "b", "c", budget=400 * MiB, load_timeout=1.5)
    async with asyncio.timeout(WAIT):
        busy_a = await bed.scheduler.acquire(bed.model("a"))
        pinned_b = await bed.scheduler.acquire(bed.model("b"), keep_alive=math.inf)
        bed.scheduler.release(pinned_b)
        with pytest.raises(Unavailable) as info:
            await bed.scheduler.acquire(bed.model("c"))
    message = info.value.message
    assert "does not fit" in message and "host memory" in message
    assert "a, b" in message and "vllama stop" in message
    bed.scheduler.release(busy_a)


async def test_waiting_for_memory_blocks_no_one_else(make_bed: MakeBed) -> None:
    """Ollama's head-of-line blocking (ollama#14578): a load that waits for memory must not
    hold up requests to loaded models, and goes on as soon as memory frees."""
    bed = await make_bed("a", "b", "c", budget=400 * MiB, load_timeout=20.0)
    async with asyncio.timeout(WAIT):
        busy_a = await bed.scheduler.acquire(bed.model("a"))
        busy_b = await bed.scheduler.acquire(bed.model("b"))
        waiting_c = asyncio.ensure_future(bed.scheduler.acquire(bed.model("c")))
        await asyncio.sleep(0.5)
        assert not waiting_c.done()
        async with bed.scheduler.lease(bed.model("a")):  # loaded: answers at once
            pass
        bed.scheduler.release(busy_b)  # b idles: c evicts it and loads
        lease_c = await waiting_c
        assert bed.scheduler.slot_state("b") is None
        bed.scheduler.release(lease_c)
        bed.scheduler.release(busy_a)


async def test_requests_for_a_model_being_evicted_are_served_after(make_bed: MakeBed) -> None:
    """Ollama's eviction deadlock (ollama#17408): requests that arrive for the model being
    evicted wait for it to come back instead of hanging the eviction."""
    bed = await make_bed("a", "b", budget=200 * MiB, load_timeout=20.0)  # one fits
    async with asyncio.timeout(WAIT):
        async with bed.scheduler.lease(bed.model("a")):
            pass
        loading_b = asyncio.ensure_future(bed.scheduler.acquire(bed.model("b")))
        while bed.scheduler.slot_state("a") is SlotState.LOADED:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        back_to_a = asyncio.ensure_future(bed.scheduler.acquire(bed.model("a")))
        lease_b = await loading_b
        await asyncio.sleep(0.3)
        assert not back_to_a.done()  # b is busy: a waits for memory, it does not hang b
        bed.scheduler.release(lease_b)
        lease_a = await back_to_a
        bed.scheduler.release(lease_a)
    assert bed.scheduler.slot_state("a") is SlotState.LOADED


async def test_max_loaded_models_evicts_the_least_recently_used(make_bed: MakeBed) -> None:
    bed = await make_bed("a", "b", budget=4000 * MiB, max_loaded=1)
    async with asyncio.timeout(WAIT):
        async with bed.scheduler.lease(bed.model("a")):
            pass
        async with bed.scheduler.lease(bed.model("b")):
            pass
    assert bed.scheduler.slot_state("a") is None
    assert bed.scheduler.slot_state("b") is SlotState.LOADED


async def test_unload_waits_for_in_flight_requests(make_bed: MakeBed) -> None:
    bed = await make_bed("a")
    async with asyncio.timeout(WAIT):
        lease = await bed.scheduler.acquire(bed.model("a"))
        pid = bed.pid("a")
        assert await bed.scheduler.unload("a")
        await asyncio.sleep(0.2)
        assert bed.scheduler.slot_state("a") is SlotState.LOADED  # its request finishes first
        bed.scheduler.release(lease)
        await bed.gone(pid)
        assert not await bed.scheduler.unload("a")  # nothing loaded: nothing to do


async def test_a_crashed_engine_is_waited_for_not_failed(make_bed: MakeBed) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-exit-after", "1.0")})
    async with asyncio.timeout(WAIT):
        async with bed.scheduler.lease(bed.model("a")):
            pass
        engine = bed.supervisor.get("a")
        assert engine is not None
        while engine.restarts == 0:  # noqa: ASYNC110 - it exits after a second, then restarts
            await asyncio.sleep(0.05)
        async with bed.scheduler.lease(bed.model("a")) as lease:  # waits for the restart
            assert await _models(lease.base_url) == ["a"]


async def test_a_model_whose_engine_gave_up_cools_down_then_loads_again(
        make_bed: MakeBed) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-fail-at-start", "config")},
                         retry_after=1.5)
    async with asyncio.timeout(WAIT):
        with pytest.raises(Unavailable) as first:
            await bed.scheduler.acquire(bed.model("a"))
        # At once, without starting an engine: the same load would fail the same way.
        with pytest.raises(Unavailable) as cooling:
            await bed.scheduler.acquire(bed.model("a"))
    assert cooling.value.message.startswith(first.value.message)
    assert "tries to load it again in" in cooling.value.message
    assert int(cooling.value.headers["Retry-After"]) >= 1
    assert [e[0] for e in bed.events].count("load") == 1 and bed.supervisor.get("a") is None
    await asyncio.sleep(1.5)  # the cool-down is over: the next request loads it again
    async with asyncio.timeout(WAIT):
        with pytest.raises(Unavailable) as again:
            await bed.scheduler.acquire(bed.model("a"))
    assert again.value.message == first.value.message
    assert [e[0] for e in bed.events].count("load") == 2


async def test_a_changed_model_is_not_held_by_the_cool_down(make_bed: MakeBed) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-fail-at-start", "config")},
                         retry_after=600.0)
    async with asyncio.timeout(WAIT):
        with pytest.raises(Unavailable):
            await bed.scheduler.acquire(bed.model("a"))
        fixed = msgspec.structs.replace(bed.model("a"), vllm_args=())  # a reload fixed it
        async with bed.scheduler.lease(fixed) as lease:
            assert await _models(lease.base_url) == ["a"]


async def test_status_says_backing_off_not_loading(make_bed: MakeBed) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-exit-after", "0.5")})
    slow = BackoffPolicy(initial=30.0, maximum=30.0, jitter=0.0)
    bed.supervisor.settings = msgspec.structs.replace(bed.supervisor.settings, backoff=slow)
    async with asyncio.timeout(WAIT):
        async with bed.scheduler.lease(bed.model("a")):
            pass
        engine = bed.supervisor.get("a")
        assert engine is not None
        while engine.state is not EngineState.BACKOFF:  # noqa: ASYNC110 - exits after 0.5 s
            await asyncio.sleep(0.05)
    text = bed.scheduler.status_text()  # the model is not pinned: only STATUS= tells
    assert text.startswith("model 'a' crashed (exit 0); backing off, restart in ")
    assert "loading" not in text and "ready" not in text
