"""The control protocol between the main process and its gateway workers.

One Unix stream socket per worker, owned by the main process; each message is a 4-byte
big-endian length and a msgpack body (msgspec, tagged Structs). The main process keeps the
scheduler, the supervisor and systemd; a worker is a full gateway that asks the main process
for leases and is told what it must mirror (the routing state: engines, models, queue,
readiness, GPUs) whenever it changes.

Worker -> main: Hello, Listening, Acquire, Release, Unload, WantMetrics, Pong, MetricsData.
Main -> worker: Welcome, Configure, State, Granted, Refused, Unloaded, MetricsText, Ping,
DumpMetrics.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec

from vllama.config import Config, ModelConfig
from vllama.gpu import GpuSnapshot
from vllama.scheduler.state import Lease, SlotStatus
from vllama.supervisor.state import EngineStatus

_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024  # a State or a metrics dump is far smaller; a bug is not


class Hello(msgspec.Struct, tag=True):
    worker: int
    pid: int


class Configure(msgspec.Struct, tag=True):
    """The config the worker must serve with (at start and after every reload)."""

    config: Config
    hf_token: str = ""
    hf_endpoint: str = ""


class State(msgspec.Struct, tag=True):
    """What the worker mirrors for /health, /api/ps and its views of the scheduler."""

    engines: list[EngineStatus]
    slots: list[SlotStatus]
    queued: dict[str, int]
    ready: bool
    reasons: list[str]
    gpu: GpuSnapshot


class Welcome(msgspec.Struct, tag=True):
    engine_key: str  # the engines' private key: sent here, never in argv or the environment
    configure: Configure
    state: State


class Listening(msgspec.Struct, tag=True):
    """The worker's socket is bound and serving."""


class Acquire(msgspec.Struct, tag=True):
    id: int
    model: ModelConfig
    keep_alive: float | None = None


class Granted(msgspec.Struct, tag=True):
    id: int
    lease: Lease


class Refused(msgspec.Struct, tag=True):
    """A vllama error instead of a lease (or an unload): status, text and headers."""

    id: int
    status: int
    message: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class Release(msgspec.Struct, tag=True):
    lease: Lease


class Unload(msgspec.Struct, tag=True):
    id: int
    key: str


class Unloaded(msgspec.Struct, tag=True):
    id: int
    done: bool


class WantMetrics(msgspec.Struct, tag=True):
    """A worker was asked for /metrics: the main process answers for the whole daemon."""

    id: int


class MetricsText(msgspec.Struct, tag=True):
    id: int
    text: str


class DumpMetrics(msgspec.Struct, tag=True):
    """The main process collects every worker's request counters for one /metrics."""

    id: int


class MetricsData(msgspec.Struct, tag=True):
    id: int
    data: dict[str, Any]  # gateway.metrics.Metrics.dump()


class Ping(msgspec.Struct, tag=True):
    id: int


class Pong(msgspec.Struct, tag=True):
    id: int


Message = (Hello | Configure | State | Welcome | Listening | Acquire | Granted | Refused
           | Release | Unload | Unloaded | WantMetrics | MetricsText | DumpMetrics
           | MetricsData | Ping | Pong)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def frame(message: Message) -> bytes:
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


def decode(body: bytes) -> Message:
    return _decoder.decode(body)


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at the end of the stream (the other side is gone)."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(head)
        if length > MAX_MESSAGE:
            raise ValueError(f"control message of {length} bytes")
        return decode(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
