"""The gateway served the way the daemon serves it (make_app, then server.make_runner and a
TCPSite on a free loopback port), for tests of what lives below the routes: timeouts, the
connection limit, malformed requests on raw sockets. Plus a small raw HTTP/1.1 exchange."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from vllama.config import Config
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services
from vllama.gateway.server import make_runner


@dataclass
class Live:
    port: int
    app: web.Application

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def live_gateway(config: Config) -> AsyncIterator[Live]:
    app = make_app(Services.for_config(config))
    runner = make_runner(app, config)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
        yield Live(site.port, app)
    finally:
        await runner.cleanup()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    closed: bool = False  # the server closed the connection after this reply
    extra: list[bytes] = field(default_factory=list)

    def json(self) -> object:
        return msgspec.json.decode(self.body)


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    """One HTTP/1.1 response (Content-Length, chunked, or up to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if head_only or status in (204, 304) or 100 <= status < 200:
        return Reply(status, headers)
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return Reply(status, headers, body)


async def exchange(port: int, data: bytes | list[bytes], *, head_only: bool = False,
                   pause: float = 0.0, wait_close: bool = False) -> Reply:
    """Send raw bytes (a list: pieces with `pause` seconds between them) and read the reply;
    with `wait_close`, then wait for the server to close the connection (a test's timeout
    ends a wait that never ends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate(data if isinstance(data, list) else [data]):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        reply = await read_reply(reader, head_only=head_only)
        if wait_close:
            while rest := await reader.read(65536):
                reply.extra.append(rest)
            reply.closed = True
        return reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
