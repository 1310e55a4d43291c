"""The gateway's HTTP server: aiohttp's, plus what it lacks against slow and greedy clients.

aiohttp closes idle keep-alive connections, but nothing bounds the time a request's head or body
may take, and nothing caps the connections: a client that trickles a header byte a second holds
a connection (and a file descriptor) forever, and a few hundred of them starve everyone. So, per
connection:

- a request's head must arrive within ``client_header_timeout``, counted from the connection
  (first request) or from the request's first byte (later ones); else 408 and close (a
  connection that sent nothing at all is just closed);
- a body may pause at most ``client_body_timeout`` between two reads; else the request fails
  with 408 through the gateway's error mapping;
- an idle keep-alive connection is closed after ``client_idle_timeout`` (aiohttp's own timer);
- no timer of ours runs while a handler works, so a long streamed generation is never cut;
- at most ``max_connections`` are open: at the limit the connection that has waited longest
  for a request head is closed to make room (as nginx reuses idle connections), and only when
  every connection is busy is the new one answered 503 and closed.

Whatever is answered here, outside any route (a malformed request, the timeouts, the
refusal), carries Ollama's JSON error body like every other error.

The daemon builds its runner with ``make_runner`` and binds a ``web.TCPSite`` to it as usual.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from vllama.config import Config
from vllama.errors import RequestTimeout
from vllama.gateway.keys import METRICS
from vllama.gateway.metrics import gauge
from vllama.gateway.middleware import as_error, error_response, payload_problem

logger = logging.getLogger("vllama.gateway")

# Seconds a connection answered here (refused, timed out) is kept to drain what the client still
# sends, so that closing it does not reset the connection before the client has read why.
LINGER = 1.0


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_connections: int


def connection_cap(configured: int, open_files: int) -> int:
    """``max_connections`` within half the open-file limit: the other half is for upstream
    connections, the engines' pipes and the model cache."""
    if open_files <= 0 or open_files == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, open_files // 2))


def limits_for(config: Config) -> Limits:
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = connection_cap(config.max_connections, open_files)
    if cap < config.max_connections:
        logger.info("max_connections %d lowered to %d: half the open-file limit (%d); raise "
                    "LimitNOFILE= or ulimit -n for more", config.max_connections, cap,
                    open_files, extra={"component": "gateway"})
    return Limits(config.client_header_timeout, config.client_body_timeout,
                  config.client_idle_timeout, cap)


@dataclass
class Stats:
    """Connection counts, owned by the server, read by /metrics."""

    open: int = 0
    refused: int = 0
    evicted: int = 0
    header_timeouts: int = 0
    body_timeouts: int = 0

    def lines(self) -> Iterable[str]:
        closed = (("refused", self.refused), ("evicted", self.evicted),
                  ("header_timeout", self.header_timeouts),
                  ("body_timeout", self.body_timeouts))
        return [
            *gauge("vllama_connections_open", "Client connections open now.",
                   [((), self.open)]),
            *gauge("vllama_connections_closed_total", "Client connections the gateway "
                   "refused or closed early, by reason.",
                   [((("reason", reason),), count) for reason, count in closed],
                   kind="counter"),
        ]


def raw_response(status: int, message: str) -> bytes:
    """A whole HTTP response with Ollama's error body, for a connection no route serves."""
    body = msgspec.json.encode({"error": message})
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    if status == 503:
        head += "Retry-After: 1\r\n"
    return (head + "\r\n").encode() + body


class _Refused(asyncio.Protocol):
    """A connection over the limit once its 503 is written: what the client still sends is
    discarded until it closes (or the linger ends), so the close is not a reset."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = loop.call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with the head and body clocks and the connection
    count. One timer per connection at most, re-armed only when it fires early."""

    __slots__ = (
        "_body",
        "_body_seen",
        "_busy",
        "_counted",
        "_head_bytes",
        "_head_since",
        "_server",
        "_timer",
    )

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager  # aiohttp drops its own reference when the connection is lost
        self._counted = False
        self._busy = False  # a head has arrived; its body or handler is not done
        self._head_since: float | None = None  # the head clock; None: idle, no byte yet
        self._head_bytes = False
        self._body: StreamReader | None = None  # a body still arriving
        self._body_seen = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if server.stats.open >= server.limits.max_connections and not server.make_room():
            server.refuse(transport)  # type: ignore[arg-type]
            return
        self._counted = True
        server.stats.open += 1
        super().connection_made(transport)
        self._await_head(self._loop.time())

    def connection_lost(self, exc: BaseException | None) -> None:
        self._uncount()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._server.stats.open -= 1
            self._server.waiting.pop(self, None)

    def _await_head(self, since: float | None) -> None:
        """Wait for the next request's head: from `since`, or (None) from its first byte."""
        self._busy = False
        self._head_since = since
        self._head_bytes = False
        if self._counted:
            waiting = self._server.waiting
            waiting.pop(self, None)
            waiting[self] = None  # to the end: the longest-waiting connection comes first
        if since is not None:
            self._arm(since + self._server.limits.header_timeout)

    # ------------------------------------------------------------------ reading a request

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        if not self._busy and data and not self._head_bytes:
            self._head_bytes = True
            if self._head_since is None:
                self._head_since = now
                self._arm(now + self._server.limits.header_timeout)
        parsed = self._request_count
        super().data_received(data)
        if self._body is not None:
            self._body_seen = now
        if self._request_count != parsed:  # a head (or a parse error) is complete
            self._head_done(now)

    def _head_done(self, now: float) -> None:
        self._busy = True
        self._head_since = None
        self._server.waiting.pop(self, None)
        body = self._messages[-1][1] if self._messages else None
        if body is not None and not body.is_eof():
            self._body = body
            self._body_seen = now
            self._arm(now + self._server.limits.body_timeout)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self._body is not None and self._body.is_eof():
            self._body = None  # an unread body stays on the clock while aiohttp drains it
        if not self._messages:  # pipelined requests already parsed keep the connection busy
            self._await_head(None)
        return result

    # ------------------------------------------------------------------ the clocks

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return  # it fires first and re-arms for what is still due
            timer.cancel()
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        now = self._loop.time()
        limits = self._server.limits
        if not self._busy and self._head_since is not None:
            due = self._head_since + limits.header_timeout
            if now >= due:
                self._head_timed_out()
                return
            self._arm(due)
        body = self._body
        if body is not None and not body.is_eof():
            due = self._body_seen + limits.body_timeout
            if now >= due:
                self._body = None
                self._server.stats.body_timeouts += 1
                # The handler reading the body gets this error (408 through the middleware);
                # aiohttp's drain of an unread body sees a TimeoutError and closes.
                body.set_exception(RequestTimeout(
                    f"request body timed out: no data for {limits.body_timeout:g} s "
                    "(client_body_timeout)"))
                return
            self._arm(due)

    def _head_timed_out(self) -> None:
        self._server.stats.header_timeouts += 1
        self._close_with(408, "request headers timed out: the request did not arrive within "
                         f"{self._server.limits.header_timeout:g} s (client_header_timeout)")

    def evict(self) -> None:
        """Close this connection, waiting for a head, to make room for a new one."""
        self._uncount()
        self._server.stats.evicted += 1
        self._close_with(503, "server busy: too many open connections (max_connections); "
                         "this idle one was closed for a new one")

    def _close_with(self, status: int, message: str) -> None:
        """Answer a half-sent request and close; a connection that sent nothing is just
        closed. The answer goes out with a half-close, and what the client still sends is
        discarded until it closes (or the linger ends): closing at once would reset the
        connection under the client's feet, before it could read why."""
        transport = self.transport
        if not self._head_bytes or transport is None:
            self.force_close()
            return
        self._busy = True  # no clock of ours runs again on this connection
        transport.write(raw_response(status, message))
        if transport.can_write_eof():
            transport.write_eof()
        # What aiohttp's force_close does but closing the transport: stop parsing, end the
        # request loop waiting for a head.
        self._force_close = True
        if self._waiter is not None:
            self._waiter.cancel()
        self._timer = self._loop.call_later(LINGER, transport.close)

    # ------------------------------------------------------------------ errors outside routes

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body that failed to decode surfaces again when aiohttp drains it after the
        answer (400) went out: the client's fault, so debug level, not a traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | HttpProcessingError):
            logger.debug("malformed request body: %s", payload_problem(exc))
            return
        super().log_exception(*args, **kw)

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A malformed request (or a failure past the middleware): Ollama's JSON error body
        instead of aiohttp's text. A client's malformed request is logged at debug level: at
        error level, anyone could fill the log."""
        if isinstance(exc, HttpProcessingError):
            logger.debug("malformed request: %s", exc.message)
            text = f"{HTTPStatus(status).phrase.lower()}: {(message or exc.message).strip()}"
        else:
            logger.error("error handling a request", exc_info=exc)
            text = f"internal error: {exc}" if exc is not None else HTTPStatus(status).phrase
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed")
        resp = error_response(request, status, text)
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    """aiohttp's low-level server handing out GuardedHandlers, with the connection count."""

    def __init__(self, handler: Any, *, limits: Limits, stats: Stats, **kwargs: Any) -> None:
        super().__init__(self._json_errors, **kwargs)
        self._app_handler = handler
        self.limits = limits
        self.stats = stats
        # Connections waiting for a request head, the longest-waiting first.
        self.waiting: dict[GuardedHandler, None] = {}

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    async def _json_errors(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp refuses a few requests before the middleware runs (an unknown Expect):
        those get the JSON body too."""
        try:
            response: web.StreamResponse = await self._app_handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = as_error(exc)
            return error_response(request, error.status, error.message)
        return response

    def make_room(self) -> bool:
        for handler in self.waiting:
            handler.evict()
            return True
        return False

    def refuse(self, transport: asyncio.Transport) -> None:
        self.stats.refused += 1
        if self.stats.refused == 1 or self.stats.refused % 1000 == 0:
            logger.warning("refused a connection: %d open, every one busy (max_connections); "
                           "%d refused so far", self.stats.open, self.stats.refused,
                           extra={"component": "gateway"})
        transport.set_protocol(_Refused(transport, self._loop))
        transport.write(raw_response(503, "server busy: too many open connections "
                                     f"({self.limits.max_connections}, max_connections)"))
        transport.write_eof()


class GatewayRunner(web.AppRunner):
    """An AppRunner whose server is a GatewayServer over the same app handler."""

    def __init__(self, app: web.Application, limits: Limits, stats: Stats,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._stats = stats

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        # aiohttp builds its Server inside Application._make_handler; ours takes over its
        # handler, request factory and per-connection arguments (the app's handler_args).
        return GatewayServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             limits=self._limits, stats=self._stats, **plain._kwargs)


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The gateway's runner (set it up, then bind a web.TCPSite to it)."""
    limits = limits_for(config)
    stats = Stats()
    app[METRICS].collectors.append(stats.lines)
    return GatewayRunner(app, limits, stats, access_log=None, handle_signals=False,
                         shutdown_timeout=5.0, keepalive_timeout=limits.idle_timeout,
                         # A client that disconnects cancels its handler at once, which
                         # closes the upstream connection so vLLM aborts the sequence.
                         handler_cancellation=True)
