"""Talking to upstreams (local vLLM engines and external OpenAI servers).

One ``aiohttp.ClientSession`` + ``TCPConnector`` per upstream, created and closed with the
app. Every aiohttp failure is mapped here onto ``vllama.errors`` so routes see only those.
SSE is read line by line straight from the connection; no per-chunk buffering beyond that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec

from vllama.errors import EngineDied, UpstreamError
from vllama.translate.models import RUNNER_STOPPED
from vllama.translate.stream import error_from_upstream

logger = logging.getLogger("vllama.upstream")



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


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
    """POST and return the response once its status is known. Raises VllamaError for a
    connection failure (502) or an error status (passed through with the upstream's text).
    The caller owns the returned response and must release it.

    A pooled keep-alive connection that the server closed just as it was reused fails with
    "Server disconnected" before any byte of a response: the server never saw the request,
    so it is sent once more on a fresh connection (retries happen only before the first
    byte, never mid-stream)."""
    for attempt in (1, 2):
        try:
            resp = await session.post(url, data=body, headers=headers)
            break
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"upstream unreachable: {exc.os_error or exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if attempt == 2:
                raise UpstreamError(f"upstream error: {exc or type(exc).__name__}") from None
            logger.debug("upstream closed a pooled connection; retrying once: %s", exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"upstream error: {exc or type(exc).__name__}") from None
    if resp.status >= 400:
        try:
            data = await resp.read()
        except aiohttp.ClientError:
            data = b""
        finally:
            resp.release()
        raise error_from_upstream(resp.status, data)
    return resp


# What reading a response body raises when the connection drops mid-stream.
STREAM_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                 aiohttp.ClientConnectionError, ConnectionResetError,
                 asyncio.IncompleteReadError)


def stream_broke(exc: BaseException) -> EngineDied:
    """The error for a body read that raised one of STREAM_ERRORS (the engine went away)."""
    logger.warning("upstream stream broke: %s", exc or type(exc).__name__)
    return EngineDied(RUNNER_STOPPED)
