"""The gateway's fixed routes and edges, on a real loopback server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from vllama.config import Config
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


@pytest.fixture
def make(aiohttp_client: MakeClient) -> Callable[..., Awaitable[Client]]:
    async def build(**settings: object) -> Client:
        cfg = Config(**settings)  # type: ignore[arg-type]
        return await aiohttp_client(make_app(Services.for_config(cfg)))
    return build


async def test_root_get_and_head(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make()
    resp = await client.get("/")
    assert resp.status == 200
    assert await resp.text() == "Ollama is running"
    assert resp.headers["Content-Type"].startswith("text/plain")
    head = await client.head("/")
    assert head.status == 200
    assert await head.read() == b""


async def test_version_is_dotted(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(ollama_version="0.12.6")
    resp = await client.get("/api/version")
    assert resp.status == 200
    assert (await resp.json())["version"] == "0.12.6"
    assert (await client.head("/api/version")).status == 200


async def test_live_and_unknown_paths(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make()
    assert (await client.get("/health/live")).status == 200
    resp = await client.get("/nope")
    assert resp.status == 404
    assert await resp.json() == {"error": "404 page not found"}  # Go's text, in Ollama's JSON
    resp = await client.post("/api/version")
    assert resp.status == 405
    assert await resp.json() == {"error": "405 method not allowed"}


async def test_request_id_in_and_out(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make()
    resp = await client.get("/", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    generated = (await client.get("/")).headers["X-Request-Id"]
    assert len(generated) == 32
    bad = (await client.get("/", headers={"X-Request-Id": "x" * 300})).headers["X-Request-Id"]
    assert bad != "x" * 300


async def test_api_key(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(api_key="k1")
    resp = await client.get("/api/version")
    assert resp.status == 401
    assert "Authorization: Bearer" in (await resp.json())["error"]
    assert (await client.get("/api/version", headers={"Authorization": "Bearer k1"})).status == 200
    assert (await client.get("/api/version", headers={"Authorization": "Bearer k2"})).status == 401
    assert (await client.get("/health/live")).status == 200


async def test_cors_like_ollama(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(cors_origins=("https://ui.example",))
    for origin in ("http://localhost:3000", "https://ui.example", "vscode-webview://abc",
                   "app://obsidian.md"):
        pre = await client.options("/api/chat", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert pre.status == 204, origin
        assert "Content-Type" in pre.headers["Access-Control-Allow-Headers"]
        resp = await client.get("/api/version", headers={"Origin": origin})
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    denied = await client.options("/api/chat", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert denied.status == 403
    resp = await client.get("/api/version", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_metrics_count_requests(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make()
    await client.get("/api/version")
    text = await (await client.get("/metrics")).text()
    assert 'vllama_requests_total{route="/api/version",method="GET",status="200",model=""} 1' \
        in text
    assert "vllama_request_duration_seconds_bucket" in text


async def test_health_without_supervisor_is_ready(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make()
    resp = await client.get("/health")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["status"] == "ok" and doc["engines"] == []


async def test_body_size_limit(make: Callable[..., Awaitable[Client]]) -> None:
    client = await make(max_body_bytes=2048)
    resp = await client.post("/api/chat", data=b"{" + b" " * 4096 + b"}")
    assert resp.status == 413
    assert "too large" in (await resp.json())["error"]
