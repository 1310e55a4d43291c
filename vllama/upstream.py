"""Talking to upstreams (local vLLM engines and external OpenAI servers): the one owner of
aiohttp's client side.

One `aiohttp.ClientSession` + `TCPConnector` per upstream, created and closed with the app.
`post()` is an async context manager yielding an `UpstreamResponse` whose body is read through
vllama's error tree: routes never see an aiohttp exception (httpcore's `map_exceptions` is the
model). The response gives its connection back to the pool when the body was read to its end,
and drops it otherwise (the client left, or an error), so vLLM aborts the sequence at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import msgspec
from multidict import CIMultiDictProxy

from vllama.errors import EngineDied, UpstreamError, UpstreamStalled
from vllama.translate.models import RUNNER_STOPPED
from vllama.translate.stream import error_from_upstream

logger = logging.getLogger("vllama.upstream")

# What reading a response body raises when the connection drops mid-stream.
_STREAM_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                  aiohttp.ClientConnectionError, ConnectionResetError,
                  asyncio.IncompleteReadError)


def new_session(*, limit: int, keepalive: float, connect_timeout: float,
                api_key: str = "") -> aiohttp.ClientSession:
    """The pooled session for one upstream. No total timeout: generations take as long as
    they take; a dead engine is noticed by the connection closing."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit,
                                     keepalive_timeout=keepalive, enable_cleanup_closed=True)
    # Bodies are relayed undecoded, so only identity is acceptable (a compressed reply would
    # reach clients compressed, without its Content-Encoding). Set here rather than through
    # skip_auto_headers, which puts aiohttp's request set-up on a slower path.
    headers = {"Accept-Encoding": "identity"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                    connect=connect_timeout)
    # Per-request cost matters (every request pays it on the one event loop): upstreams set
    # no cookies worth keeping, so no jar is filtered or updated per request.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                 auto_decompress=False, json_serialize=_dumps,
                                 cookie_jar=aiohttp.DummyCookieJar())


def _dumps(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


def _broke(exc: BaseException) -> EngineDied:
    """A body read that failed: the upstream went away mid-response."""
    logger.warning("upstream stream broke: %s", exc or type(exc).__name__)
    return EngineDied(RUNNER_STOPPED)


class UpstreamResponse:
    """A successful (2xx) upstream response, read only through vllama's errors."""

    __slots__ = ("_idle", "_last", "_loop_time", "_resp", "_stalled", "_timer", "finished")

    def __init__(self, resp: aiohttp.ClientResponse, idle_timeout: float = 0.0) -> None:
        self._resp = resp
        self._idle = idle_timeout  # longest silence between two chunk() reads; 0: none
        self._last = 0.0  # loop time of the last read
        self._stalled = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop_time = asyncio.get_running_loop().time
        self.finished = False  # the body was read to its end: the connection can be reused

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._resp.headers

    async def chunk(self) -> bytes:
        """The body's next network read as it arrives; b"" at its end. Several SSE events may
        share one read, and one event may span reads. (A method, not an async generator: a
        relay that stops at `[DONE]` would leave a generator for asyncio to finalise in a task
        of its own, per request.)"""
        if self._timer is None and self._idle > 0 and not self._stalled:
            self._watch()
        try:
            data = await self._resp.content.readany()
        except _STREAM_ERRORS as exc:
            if self._stalled:
                raise UpstreamStalled(f"the model sent nothing for {self._idle:g} s "
                                      "(stream_idle_timeout); giving up") from None
            raise _broke(exc) from None
        if data:
            self._last = self._loop_time()
        else:
            self.finished = True
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """`chunk()` until the body ends, for a relay that reads it to its end."""
        while data := await self.chunk():
            yield data

    def close(self) -> None:
        """Stop the idle watch (the exchange is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._idle = 0.0

    def _watch(self) -> None:
        """One timer per stream, not one per read (this is the relay's hot loop): it re-arms
        itself from the last read, and when the stream has been silent for the idle timeout
        it closes the connection, so the pending read fails and says why. A stream that keeps
        sending, however slowly, is never cut."""
        loop = asyncio.get_running_loop()
        self._last = loop.time()

        def check() -> None:
            left = self._last + self._idle - loop.time()
            if left > 0:
                self._timer = loop.call_later(left, check)
                return
            logger.warning("upstream stream sent nothing for %g s; giving it up", self._idle)
            self._stalled = True
            self._resp.close()

        self._timer = loop.call_later(self._idle, check)

    async def read(self) -> bytes:
        try:
            data = await self._resp.read()
        except _STREAM_ERRORS as exc:
            raise _broke(exc) from None
        self.finished = True
        return data


async def _send(session: aiohttp.ClientSession, url: str, body: bytes,
                headers: Mapping[str, str] | None) -> aiohttp.ClientResponse:
    """POST until the status is known. A pooled keep-alive connection that the server closed
    just as it was reused fails with "Server disconnected" before any byte of a response: the
    server never saw the request, so it is sent once more on a fresh connection (retries
    happen only before the first byte, never mid-stream)."""
    for attempt in (1, 2):
        try:
            return await session.post(url, data=body, headers=headers)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"upstream unreachable: {exc.os_error or exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if attempt == 2:
                raise UpstreamError(f"upstream error: {exc or type(exc).__name__}") from None
            logger.debug("upstream closed a pooled connection; retrying once: %s", exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"upstream error: {exc or type(exc).__name__}") from None
    raise AssertionError("unreachable")  # pragma: no cover


class Exchange:
    """One POST to an upstream, as an async context manager (a class, not a generator: it runs
    on every request)."""

    __slots__ = ("_args", "_idle", "_resp", "_stream")

    def __init__(self, session: aiohttp.ClientSession, url: str, body: bytes,
                 headers: Mapping[str, str] | None, idle_timeout: float = 0.0) -> None:
        self._args = (session, url, body, headers)
        self._idle = idle_timeout
        self._resp: aiohttp.ClientResponse | None = None
        self._stream: UpstreamResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        resp = self._resp = await _send(*self._args)
        if resp.status >= 400:
            try:
                data = await resp.read()
            except aiohttp.ClientError:
                data = b""
            finally:
                resp.release()
            raise error_from_upstream(resp.status, data)
        self._stream = UpstreamResponse(resp, self._idle)
        return self._stream

    async def __aexit__(self, *exc: object) -> None:
        resp, stream = self._resp, self._stream
        if resp is None or stream is None:
            return
        stream.close()
        if stream.finished:
            resp.release()
        else:
            resp.close()


def post(session: aiohttp.ClientSession, url: str, body: bytes,
         headers: Mapping[str, str] | None = None, *, idle_timeout: float = 0.0) -> Exchange:
    """POST `body`; `async with` it to get the response once its status is known. A connection
    failure is UpstreamError (502); an error status is UpstreamError with the upstream's status
    and text; a body that sends nothing for `idle_timeout` seconds between reads of chunk()
    is UpstreamStalled. Leaving the block releases the connection (body read to its end) or
    drops it (anything else: the client left, or an error), so vLLM aborts the sequence."""
    return Exchange(session, url, body, headers, idle_timeout)
