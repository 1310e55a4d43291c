"""The main process's end of the control sockets: leases for the workers' requests, the state
they mirror, /metrics for the whole daemon, and the liveness pings the watchdog depends on.

Every lease a worker holds is kept per connection: a worker that dies (kill -9) releases
everything it held when its socket closes, so keep_alive clocks start and nothing stays busy
forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vllama.errors import VllamaError
from vllama.scheduler.scheduler import Scheduler
from vllama.scheduler.state import Lease
from vllama.workers.protocol import (
    Acquire,
    Configure,
    DumpMetrics,
    Granted,
    Hello,
    Listening,
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

METRICS_TIMEOUT = 2.0  # a worker that does not answer in time is left out of one scrape


@dataclass(eq=False)
class WorkerLink:
    """One connected worker."""

    worker: int
    pid: int
    writer: asyncio.StreamWriter
    leases: dict[int, Lease] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    listening: bool = False
    last_pong: float = field(default_factory=time.monotonic)

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))


class ControlServer:
    """Serves the control socket at `path` (in a private directory of the main process)."""

    def __init__(self, path: str, scheduler: Scheduler, engine_key: str, *,
                 configure: Callable[[], Configure], state: Callable[[], State],
                 render_metrics: Callable[[Sequence[dict[str, Any]]], str]) -> None:
        self.path = path
        self.scheduler = scheduler
        self.engine_key = engine_key
        self._configure = configure
        self._state = state
        self._render_metrics = render_metrics
        self.links: dict[int, WorkerLink] = {}
        self.changed = asyncio.Event()  # a worker connected, started listening or left
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._dumps: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._state_pending = False

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links.values()):
            link.writer.close()
            for task in list(link.tasks):
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # ---- what the daemon asks -----------------------------------------------------------

    def listening(self, expected: int) -> bool:
        return sum(1 for link in self.links.values() if link.listening) >= expected

    def push_state(self) -> None:
        """Tell every worker what changed, once per loop iteration however many changes."""
        if self._state_pending:
            return
        self._state_pending = True
        asyncio.get_running_loop().call_soon(self._send_state)

    def _send_state(self) -> None:
        self._state_pending = False
        if not self.links:
            return
        state = self._state()
        for link in self.links.values():
            link.send(state)

    def push_configure(self) -> None:
        configure = self._configure()
        for link in self.links.values():
            link.send(configure)

    async def all_answer(self, timeout: float) -> bool:
        """Ping every worker; True when all answered within `timeout` (the watchdog pings
        systemd only then: a wedged worker loop stops the pings)."""
        if not self.links:
            return True
        waits = []
        for link in self.links.values():
            ping = next(self._ids)
            self._pongs[ping] = asyncio.get_running_loop().create_future()
            waits.append(self._pongs[ping])
            link.send(Ping(ping))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
            return True
        except TimeoutError:
            return False
        finally:
            for fut in waits:
                fut.cancel()

    async def metrics_text(self) -> str:
        """/metrics for the whole daemon: every worker's request counts, added up."""
        futures: list[asyncio.Future[dict[str, Any]]] = []
        for link in self.links.values():
            ask = next(self._ids)
            self._dumps[ask] = asyncio.get_running_loop().create_future()
            futures.append(self._dumps[ask])
            link.send(DumpMetrics(ask))
        dumps: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(METRICS_TIMEOUT):
                await asyncio.wait(futures)
        for fut in futures:
            if fut.done() and not fut.cancelled():
                dumps.append(fut.result())
            fut.cancel()
        return self._render_metrics(dumps)

    # ---- one worker's connection --------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await read_message(reader)
        if not isinstance(hello, Hello):
            writer.close()
            return
        link = WorkerLink(hello.worker, hello.pid, writer)
        old = self.links.get(link.worker)
        if old is not None:  # a restarted worker replaces its predecessor's connection
            old.writer.close()
        self.links[link.worker] = link
        self.changed.set()
        link.send(Welcome(self.engine_key, self._configure(), self._state()))
        try:
            while True:
                message = await read_message(reader)
                if message is None:
                    break
                self._handle(link, message)
        finally:
            self._gone(link)
            writer.close()

    def _handle(self, link: WorkerLink, message: Message) -> None:
        if isinstance(message, Acquire):
            self._spawn(link, self._acquire(link, message))
        elif isinstance(message, Release):
            if link.leases.pop(message.lease.id, None) is not None:
                self.scheduler.release(message.lease)
        elif isinstance(message, Unload):
            self._spawn(link, self._unload(link, message))
        elif isinstance(message, Listening):
            link.listening = True
            self.changed.set()
        elif isinstance(message, Pong):
            link.last_pong = time.monotonic()
            pong = self._pongs.pop(message.id, None)
            if pong is not None and not pong.done():
                pong.set_result(None)
        elif isinstance(message, MetricsData):
            dump = self._dumps.pop(message.id, None)
            if dump is not None and not dump.done():
                dump.set_result(message.data)
        elif isinstance(message, WantMetrics):
            self._spawn(link, self._metrics(link, message.id))
        else:
            log.warning("worker %d sent an unexpected %s", link.worker, type(message).__name__,
                        extra={"component": "workers"})

    def _spawn(self, link: WorkerLink, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)

    async def _acquire(self, link: WorkerLink, ask: Acquire) -> None:
        try:
            lease = await self.scheduler.acquire(ask.model, ask.keep_alive)
        except VllamaError as exc:
            link.send(Refused(ask.id, exc.status, exc.message, dict(exc.headers)))
            return
        if self.links.get(link.worker) is not link or link.writer.is_closing():
            self.scheduler.release(lease)  # the worker left while it waited
            return
        link.leases[lease.id] = lease
        link.send(Granted(ask.id, lease))

    async def _unload(self, link: WorkerLink, ask: Unload) -> None:
        try:
            done = await self.scheduler.unload(ask.key)
        except VllamaError as exc:
            link.send(Refused(ask.id, exc.status, exc.message, dict(exc.headers)))
            return
        link.send(Unloaded(ask.id, done))

    async def _metrics(self, link: WorkerLink, ask: int) -> None:
        link.send(MetricsText(ask, await self.metrics_text()))

    def _gone(self, link: WorkerLink) -> None:
        """A worker's socket closed: everything it held is released."""
        for task in list(link.tasks):
            task.cancel()
        for lease in link.leases.values():
            self.scheduler.release(lease)
        if link.leases:
            log.warning("worker %d left with %d requests in flight; released", link.worker,
                        len(link.leases), extra={"component": "workers"})
        link.leases.clear()
        if self.links.get(link.worker) is link:
            del self.links[link.worker]
        self.changed.set()
