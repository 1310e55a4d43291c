"""The upstream client against raw loopback servers: faults aiohttp's test server can't make."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from vllama.errors import UpstreamError
from vllama.upstream import new_session, post

REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
         b"\r\n{}")


async def _serve(drop_first: int) -> tuple[asyncio.Server, list[int]]:
    """A server that reads each request and closes the first ``drop_first`` connections
    without a byte of response (what a keep-alive timeout race looks like to a client)."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        if len(seen) > drop_first:
            writer.write(REPLY)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


async def test_retries_once_when_the_server_drops_before_answering() -> None:
    server, seen = await _serve(drop_first=1)
    port = server.sockets[0].getsockname()[1]
    session = new_session(limit=4, keepalive=30, connect_timeout=5)
    try:
        async with post(session, f"http://127.0.0.1:{port}/v1/x", b"{}") as resp:
            assert resp.status == 200 and await resp.read() == b"{}"
        assert len(seen) == 2
    finally:
        await session.close()
        server.close()
        await server.wait_closed()


async def test_gives_up_after_the_second_drop() -> None:
    server, seen = await _serve(drop_first=5)
    port = server.sockets[0].getsockname()[1]
    session = new_session(limit=4, keepalive=30, connect_timeout=5)
    try:
        with pytest.raises(UpstreamError, match="upstream error"):
            async with post(session, f"http://127.0.0.1:{port}/v1/x", b"{}"):
                pass
        assert len(seen) == 2
    finally:
        await session.close()
        server.close()
        await server.wait_closed()


async def test_refused_is_unreachable() -> None:
    server, _ = await _serve(0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamError, match="unreachable"):
            async with post(session, f"http://127.0.0.1:{port}/v1/x", b"{}"):
                pass
