"""Upstream streams that misbehave (issue 12 items 10 and 16): a line that never ends is cut
at MAX_EVENT_LINE, a stream that goes silent is given up after stream_idle_timeout, and a slow
stream that keeps sending is never cut. Each failing request ends with an error line."""

from __future__ import annotations

import asyncio

import pytest

from tests.fake_vllm import FakeScript
from tests.gateway.conftest import MakeBed
from vllama.translate.stream import MAX_EVENT_LINE

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


async def test_an_endless_event_line_is_cut_with_an_error_line(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=50, endless_line_after=3))
    status, _, lines = await bed.lines("/api/chat", CHAT)
    assert status == 200
    assert lines[-1] == {"error": f"the upstream sent an event line longer than "
                                  f"{MAX_EVENT_LINE} bytes; the stream was stopped"}
    assert all("error" not in line for line in lines[:-1]) and len(lines) >= 2
    # The gateway hung up: the upstream saw its client leave, long before its 256 MiB.
    async with asyncio.timeout(10):
        while bed.state.streams_closed_early < 1:  # noqa: ASYNC110 - the fake's bookkeeping
            await asyncio.sleep(0.05)
    resp = await bed.client.get("/api/version")
    assert resp.status == 200


async def test_a_silent_stream_is_given_up(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=50, stall_after=3),
                         config={"stream_idle_timeout": 0.5})
    status, _, lines = await bed.lines("/api/chat", CHAT)
    assert status == 200 and len(lines) >= 2
    assert lines[-1] == {"error": "the model sent nothing for 0.5 s (stream_idle_timeout); "
                                  "giving up"}
    async with asyncio.timeout(10):
        while bed.state.streams_closed_early < 1:  # noqa: ASYNC110 - the fake's bookkeeping
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_slow_stream_that_keeps_sending_is_never_cut(make_bed: MakeBed,
                                                             stream: bool) -> None:
    # 8 tokens 0.3 s apart: 2.4 s in all, longer than the timeout, no gap as long as it.
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=8, token_delay=0.3),
                         config={"stream_idle_timeout": 0.6})
    if stream:
        status, _, lines = await bed.lines("/api/chat", CHAT)
        last = lines[-1]
    else:  # aggregated by the gateway from a stream it reads from vLLM all the same
        resp = await bed.post("/api/chat", {**CHAT, "stream": False})
        status, last = resp.status, await resp.json()
    assert status == 200
    assert last["done"] is True and "error" not in last
