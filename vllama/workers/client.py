"""A worker's end of its control socket: the scheduler, supervisor and GPU views the gateway
needs (`gateway.seams`), backed by the main process.

Leases and unloads are requests to the main process; everything the gateway only reads (what
is loaded, the engines, the queue, readiness, the GPUs) is a mirror the main process pushes
whenever it changes, so reading it costs nothing and needs no await.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vllama.config import ModelConfig
from vllama.errors import VllamaError
from vllama.gpu import GpuSnapshot
from vllama.scheduler.state import Lease, SlotStatus
from vllama.supervisor.state import EngineState, EngineStatus
from vllama.workers.protocol import (
    Acquire,
    Configure,
    DumpMetrics,
    Granted,
    Hello,
    Message,
    MetricsData,
    MetricsText,
    Ping,
    Pong,
    Refused,
    Release,
    State,
    Unload,
    Unloaded,
    WantMetrics,
    Welcome,
    frame,
    read_message,
)

log = logging.getLogger("vllama.workers")


class ControlLost(VllamaError):
    """The main process is gone: this worker cannot lease models any more."""

    status = 503


@dataclass(frozen=True)
class MirroredEngine:
    """An engine as the last State described it (gateway.seams.EngineView)."""

    _status: EngineStatus

    @property
    def ready(self) -> bool:
        return self._status.state is EngineState.READY

    @property
    def port(self) -> int | None:
        return self._status.port

    def status(self) -> EngineStatus:
        return self._status

    def unavailable_reason(self) -> str:
        return self._status.reason


class ControlClient:
    """One worker's connection to the main process. Create with `connect`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 welcome: Welcome, dump_metrics: Callable[[], dict[str, Any]]) -> None:
        self._reader = reader
        self._writer = writer
        self.engine_key = welcome.engine_key
        self.configure = welcome.configure
        self.state = welcome.state
        self._dump_metrics = dump_metrics
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = asyncio.Event()
        self.on_configure: Callable[[Configure], None] = lambda c: None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: str, worker: int, dump_metrics: Callable[[], dict[str, Any]]
                      ) -> ControlClient:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(frame(Hello(worker, os.getpid())))
        welcome = await read_message(reader)
        if not isinstance(welcome, Welcome):
            writer.close()
            raise ControlLost("the main process did not welcome this worker")
        return cls(reader, writer, welcome, dump_metrics)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read(), name="control")

    async def close(self) -> None:
        self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def send(self, message: Message) -> None:
        if self.closed.is_set() or self._writer.is_closing():
            raise ControlLost("the main process is gone (vllama is stopping or restarting)")
        self._writer.write(frame(message))

    async def _read(self) -> None:
        try:
            while True:
                message = await read_message(self._reader)
                if message is None:
                    break
                self._handle(message)
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ControlLost("the main process is gone"))
            self._waiting.clear()

    def _handle(self, message: Message) -> None:
        if isinstance(message, State):
            self.state = message
        elif isinstance(message, Granted | Refused | Unloaded | MetricsText):
            fut = self._waiting.pop(message.id, None)
            if fut is not None and not fut.done():
                fut.set_result(message)
            elif isinstance(message, Granted):  # nobody waits any more: give it back
                self.send(Release(message.lease))
        elif isinstance(message, Ping):
            self.send(Pong(message.id))
        elif isinstance(message, DumpMetrics):
            self.send(MetricsData(message.id, self._dump_metrics()))
        elif isinstance(message, Configure):
            self.configure = message
            self.on_configure(message)

    async def _ask(self, make: Callable[[int], Message]) -> Any:
        ask = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ask] = fut
        try:
            self.send(make(ask))
            reply = await fut
        finally:
            self._waiting.pop(ask, None)
        if isinstance(reply, Refused):
            error = VllamaError(reply.message, status=reply.status)
            error.headers = dict(reply.headers)
            raise error
        return reply

    # ---- the scheduler, as the gateway sees it -----------------------------------------

    async def acquire(self, model: ModelConfig, keep_alive: float | None = None) -> Lease:
        reply = await self._ask(lambda ask: Acquire(ask, model, keep_alive))
        assert isinstance(reply, Granted)
        return reply.lease

    def release(self, lease: Lease) -> None:
        with contextlib.suppress(ControlLost):  # the main process released it when we left
            self.send(Release(lease))

    async def unload(self, key: str, reason: str = "asked") -> bool:
        reply = await self._ask(lambda ask: Unload(ask, key))
        return bool(isinstance(reply, Unloaded) and reply.done)

    def snapshot(self) -> list[SlotStatus]:
        return list(self.state.slots)

    @property
    def queued(self) -> Mapping[str, int]:
        return self.state.queued

    @property
    def ready(self) -> bool:
        return self.state.ready and not self.closed.is_set()

    def unready_reasons(self) -> list[str]:
        if self.closed.is_set():
            return ["this gateway worker lost its main process"]
        return list(self.state.reasons)

    async def metrics_text(self) -> str:
        reply = await self._ask(WantMetrics)
        return str(reply.text) if isinstance(reply, MetricsText) else ""


class MirroredSupervisor:
    """gateway.seams.SupervisorView over the mirrored engine statuses."""

    def __init__(self, client: ControlClient) -> None:
        self._client = client

    @property
    def ready(self) -> bool:
        return all(s.state is EngineState.READY for s in self._client.state.engines)

    def get(self, name: str) -> MirroredEngine | None:
        for status in self._client.state.engines:
            if status.model == name:
                return MirroredEngine(status)
        return None

    def snapshot(self) -> list[EngineStatus]:
        return list(self._client.state.engines)


class MirroredGpu:
    """gateway.seams.GpuView over the mirrored NVML snapshot."""

    def __init__(self, client: ControlClient) -> None:
        self._client = client

    @property
    def snapshot(self) -> GpuSnapshot:
        return self._client.state.gpu
