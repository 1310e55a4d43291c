"""The gateway's server against slow and greedy clients, over raw loopback sockets: the head
and body clocks (408 in Ollama's JSON), idle keep-alive connections closed, a long streamed
generation never cut, and the connection limit (the longest-waiting connection makes room,
else a clear 503)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from tests.fake_vllm import FakeScript, make_app
from tests.live_gateway import Live, exchange, live_gateway, read_reply
from vllama.config import Config, ModelConfig
from vllama.gateway.keys import METRICS
from vllama.gateway.server import connection_cap

GET = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
Upstream = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def upstream(aiohttp_server: Any) -> Upstream:
    async def start(**script: Any) -> TestServer:
        server: TestServer = await aiohttp_server(make_app(FakeScript(**script)))
        return server
    return start


@contextlib.asynccontextmanager
async def gateway(fake: TestServer | None = None, **settings: Any) -> AsyncIterator[Live]:
    models = (ModelConfig(name="fake", upstream=str(fake.make_url("/v1"))),) if fake else ()
    async with live_gateway(Config(models=models, **settings)) as live:
        yield live


def metric(live: Live, name: str) -> float:
    for line in live.app[METRICS].render().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}")


async def until(check: Callable[[], bool]) -> None:
    for _ in range(3000):  # polls; a bound so that "never" fails instead of hanging
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_half_sent_head_gets_408_and_the_connection_closes() -> None:
    async with gateway(client_header_timeout=0.3) as gw:
        reply = await exchange(gw.port, b"GET /api/version HTTP/1.1\r\nHost: loc",
                               wait_close=True)
        assert reply.status == 408
        assert "client_header_timeout" in reply.json()["error"]  # type: ignore[index]
        assert reply.closed
        assert metric(gw, 'vllama_connections_closed_total{reason="header_timeout"}') == 1


async def test_trickled_head_is_cut_while_bytes_keep_coming() -> None:
    async with gateway(client_header_timeout=0.5) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + \
                        b"a" * 1000:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.02)

        task = asyncio.create_task(trickle())
        reply = await read_reply(reader)
        assert reply.status == 408
        assert await reader.read() == b""  # then closed, not reset
        task.cancel()
        writer.close()


async def test_a_connection_that_sends_nothing_is_closed_silently() -> None:
    async with gateway(client_header_timeout=0.3) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        assert await reader.read() == b""
        writer.close()


async def test_a_stalled_body_fails_with_408(upstream: Upstream) -> None:
    async with gateway(await upstream(), client_body_timeout=0.3) as gw:
        reply = await exchange(gw.port, b"POST /api/embed HTTP/1.1\r\nHost: localhost\r\n"
                               b"Content-Length: 100\r\n\r\n" + b'{"model":"fake"',
                               wait_close=True)
        assert reply.status == 408
        assert "client_body_timeout" in reply.json()["error"]  # type: ignore[index]
        assert reply.closed
        assert metric(gw, 'vllama_connections_closed_total{reason="body_timeout"}') == 1


async def test_a_slow_body_that_keeps_moving_is_read(upstream: Upstream) -> None:
    body = b'{"model":"fake","stream":false,"prompt":"' + b"x" * 20 + b'"}'
    pieces = [body[i:i + 5] for i in range(0, len(body), 5)]
    head = (b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n")
    async with gateway(await upstream(), client_body_timeout=0.3,
                       client_header_timeout=0.3) as gw:
        # 12 pieces 0.1 s apart: the whole body takes longer than either clock allows
        reply = await exchange(gw.port, [head, *pieces], pause=0.1)
        assert reply.status == 200, reply.body
        assert reply.json()["done"] is True  # type: ignore[index]


async def test_idle_keepalive_connections_are_closed() -> None:
    async with gateway(client_idle_timeout=0.3) as gw:
        reply = await exchange(gw.port, GET, wait_close=True)
        assert reply.status == 200
        assert reply.closed  # by the server, after the idle timeout


async def test_a_long_stream_outlives_every_timeout(upstream: Upstream) -> None:
    fake = await upstream(tokens=25, token_delay=0.06)
    async with gateway(fake, client_header_timeout=0.2, client_body_timeout=0.2,
                       client_idle_timeout=0.2) as gw, aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/api/generate",
                                json={"model": "fake", "prompt": "hi"}) as resp:
            lines = [msgspec.json.decode(line) async for line in resp.content if line.strip()]
        assert resp.status == 200
        assert lines[-1]["done"] is True
        assert "error" not in lines[-1]
        assert len(lines) >= 25


async def test_at_the_limit_the_longest_waiting_connection_makes_room() -> None:
    async with gateway(max_connections=3) as gw:
        oldest_r, oldest_w = await asyncio.open_connection("127.0.0.1", gw.port)
        oldest_w.write(b"GET /api/version HTTP/1.1\r\n")  # half a head
        idle = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
        await until(lambda: metric(gw, "vllama_connections_open") == 3)
        reply = await exchange(gw.port, GET)
        assert reply.status == 200
        evicted = await read_reply(oldest_r)
        assert evicted.status == 503
        assert "max_connections" in evicted.json()["error"]  # type: ignore[index]
        assert await oldest_r.read() == b""
        assert metric(gw, 'vllama_connections_closed_total{reason="evicted"}') == 1
        for _, writer in [(oldest_r, oldest_w), *idle]:
            writer.close()


async def test_when_every_connection_is_busy_a_new_one_is_refused_clearly(
        upstream: Upstream) -> None:
    fake = await upstream(tokens=30, token_delay=0.05)
    async with gateway(fake, max_connections=2) as gw, aiohttp.ClientSession() as session:
        started = asyncio.Event()

        async def stream() -> list[Any]:
            async with session.post(gw.url + "/api/generate",
                                    json={"model": "fake", "prompt": "hi"}) as resp:
                out = []
                async for line in resp.content:
                    out.append(msgspec.json.decode(line))
                    if len(out) == 2 and metric(gw, "vllama_requests_in_flight") == 2:
                        started.set()
                return out

        streams = [asyncio.create_task(stream()) for _ in range(2)]
        await started.wait()
        reply = await exchange(gw.port, GET, wait_close=True)
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        assert "max_connections" in reply.json()["error"]  # type: ignore[index]
        assert reply.closed
        for done in await asyncio.gather(*streams):
            assert done[-1]["done"] is True  # the busy ones were never touched
        assert metric(gw, 'vllama_connections_closed_total{reason="refused"}') == 1


def test_connection_cap_stays_within_the_open_file_limit() -> None:
    assert connection_cap(4096, 1024) == 512
    assert connection_cap(4096, 65536) == 4096
    assert connection_cap(4096, resource.RLIM_INFINITY) == 4096
    assert connection_cap(4096, 1) == 1
