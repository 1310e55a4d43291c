"""The control protocol's framing: every message survives the wire, and a truncated stream
or an absurd length is the end of the conversation, not a hang or a crash."""

from __future__ import annotations

import asyncio
import math

import pytest

from vllama.config import Config, ModelConfig
from vllama.gpu import GpuSnapshot
from vllama.scheduler.state import Lease
from vllama.workers.protocol import (
    Acquire,
    Configure,
    Granted,
    Hello,
    Message,
    Refused,
    Release,
    State,
    Welcome,
    frame,
    read_message,
)

MESSAGES: list[Message] = [
    Hello(worker=2, pid=4242),
    Acquire(id=7, model=ModelConfig(name="m", source="/srv/m", vllm_args=("--x",)),
            keep_alive=math.inf),
    Granted(id=7, lease=Lease("m", "http://127.0.0.1:9/v1", 3)),
    Refused(id=8, status=503, message="server busy", headers={"Retry-After": "10"}),
    Release(lease=Lease("m", "http://127.0.0.1:9/v1", 3)),
    Welcome(engine_key="k", configure=Configure(Config(port=1234), "tok", "http://hub"),
            state=State(engines=[], slots=[], queued={"m": 2}, ready=True, reasons=[],
                        gpu=GpuSnapshot(False, "no GPU"))),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
async def test_round_trip(message: Message) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(frame(message))
    reader.feed_eof()
    assert await read_message(reader) == message
    assert await read_message(reader) is None  # the end of the stream: the other side left


async def test_a_cut_frame_and_a_huge_length_end_the_conversation() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(frame(MESSAGES[0])[:-2])
    reader.feed_eof()
    assert await read_message(reader) is None
    reader = asyncio.StreamReader()
    reader.feed_data((1 << 31).to_bytes(4, "big"))
    reader.feed_eof()
    with pytest.raises(ValueError, match="control message"):
        await read_message(reader)
