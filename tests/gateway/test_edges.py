"""Who may call the gateway and what every refusal looks like, on real loopback servers:
cross-site origins and DNS-rebinding hosts (403 on every request), the API key (a non-UTF-8
header is a wrong key), /health for load balancers without the key, deep JSON (400, never a
recursion 500), 404/405 and malformed requests in Ollama's JSON, preflights counted with their
real status, and an access log that a path cannot forge lines in."""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.gateway.conftest import MakeBed
from tests.live_gateway import exchange, live_gateway
from vllama import log
from vllama.config import Config
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services
from vllama.supervisor.state import EngineState, EngineStatus

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
EVIL = "https://evil.example"


@pytest.fixture
def make(aiohttp_client: Callable[[web.Application], Awaitable[Client]]) -> MakeClient:
    async def build(services: Services | None = None, **settings: Any) -> Client:
        services = services or Services.for_config(Config(**settings))
        return await aiohttp_client(make_app(services))
    return build


def body_routes(app: web.Application) -> list[tuple[str, str]]:
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                   if r.method in ("POST", "DELETE") and r.resource is not None})


def error_text(doc: Any) -> str:
    """Ollama's {"error": text} or OpenAI's {"error": {"message": text, ...}}."""
    err = doc["error"]
    return err["message"] if isinstance(err, dict) else err  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- item 1: CSRF


async def test_cross_site_post_is_refused_before_it_runs(make_bed: MakeBed) -> None:
    bed = await make_bed()
    resp = await bed.client.post("/api/generate", data=b'{"model":"fake","prompt":"hi"}',
                                 headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert resp.status == 403
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "origin 'https://evil.example' is not allowed" in (await resp.json())["error"]
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert bed.state.requests == []  # nothing reached the engine
    for method, path in body_routes(bed.client.app):
        resp = await bed.client.request(method, path, data=b"{}", headers={"Origin": EVIL})
        assert resp.status == 403, path
        assert "not allowed" in error_text(await resp.json()), path
    # Allowed origins and same-origin pages still work.
    resp = await bed.client.post("/api/generate", data=b'{"model":"fake","prompt":"hi"}',
                                 headers={"Origin": "http://localhost:3000"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    host = bed.client.server.make_url("/").host
    same = f"http://{host}:{bed.client.server.port}"
    resp = await bed.client.get("/api/version", headers={"Origin": same})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_preflights_answer_and_are_counted_with_their_status(make: MakeClient) -> None:
    client = await make(cors_origins=("https://ui.example",))
    ok = await client.options("/api/chat", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "POST"})
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    denied = await client.options("/api/chat", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert denied.status == 403
    assert "not allowed" in (await denied.json())["error"]
    metrics = await (await client.get("/metrics")).text()
    counted = [line for line in metrics.splitlines()
               if line.startswith("vllama_requests_total") and 'method="OPTIONS"' in line]
    assert sorted(line.split('status="')[1][:3] for line in counted) == ["204", "403"]


@pytest.mark.parametrize("host", [
    "localhost", "localhost:11434", "LOCALHOST.", "app.localhost:8080", "box.local",
    "metadata.internal", "127.0.0.1", "127.0.0.1:11434", "[::1]:11434", "::1", "10.1.2.3:80",
    "192.168.0.7", "0.0.0.0:11434", ""])
async def test_local_hosts_pass_the_rebinding_guard(make: MakeClient, host: str) -> None:
    client = await make()
    resp = await client.get("/api/version", headers={"Host": host})
    assert resp.status == 200, host


async def test_other_hosts_are_refused_while_bound_to_loopback(make: MakeClient) -> None:
    client = await make()
    for host in ("evil.example", "evil.example:11434", "8.8.8.8", "[2606:4700::1111]:1",
                 "localhost.evil.example"):
        resp = await client.get("/api/version", headers={"Host": host})
        assert resp.status == 403, host
        assert "DNS-rebinding" in (await resp.json())["error"], host
    resp = await client.get("/health/live", headers={"Host": "evil.example"})
    assert resp.status == 403  # every route, as Ollama's middleware

    configured = await make(allowed_hosts=("vllama.example.org", "*.corp.example"))
    for host in ("vllama.example.org", "VLLAMA.example.org:443", "gpu1.corp.example"):
        assert (await configured.get("/api/version", headers={"Host": host})).status == 200
    assert (await configured.get("/api/version", headers={"Host": "corp.example"})).status \
        == 403
    anything = await make(allowed_hosts=("*",))
    assert (await anything.get("/api/version", headers={"Host": "8.8.8.8"})).status == 200
    public = await make(host="0.0.0.0")  # no guard unless bound to loopback (as Ollama)
    assert (await public.get("/api/version", headers={"Host": "evil.example"})).status == 200


# ----------------------------------------------------------------------------- item 4: key


async def test_non_utf8_authorization_is_a_wrong_key() -> None:
    async with live_gateway(Config(api_key="k1")) as gw:
        for value in (b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer k1\x80"):
            reply = await exchange(gw.port, b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n"
                                   b"Authorization: " + value + b"\r\n\r\n")
            assert reply.status == 401, value
            assert "Authorization: Bearer" in reply.json()["error"]  # type: ignore[index]
        good = await exchange(gw.port, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n"
                              b"Authorization: Bearer k1\r\n\r\n")
        assert good.status == 200


# ----------------------------------------------------------------------------- item 7: health


class NotReady:
    """A supervisor with one engine still loading (the SupervisorView seam)."""

    ready = False

    def get(self, name: str) -> None:
        return None

    def snapshot(self) -> list[EngineStatus]:
        return [EngineStatus(model="big", source="/models/big", state=EngineState.LOADING,
                             since=0.0,
                             pid=4242, port=41234, restarts=0, phase="loading weights",
                             load_seconds=3.0, last_exit=None, reason="loading big")]


async def test_health_is_probeable_without_the_key(make: MakeClient) -> None:
    client = await make(api_key="k1")
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    assert (await client.head("/health")).status == 200
    full = await client.get("/health", headers={"Authorization": "Bearer k1"})
    assert {"engines", "gpus", "version", "uptime_s"} <= set(await full.json())
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer k1"})).status == 200
    assert (await client.get("/health/live")).status == 200
    assert (await client.get("/api/ps")).status == 401

    loading = await make(Services.for_config(Config(api_key="k1"), supervisor=NotReady()))
    resp = await loading.get("/health")
    assert resp.status == 503
    body = await resp.read()
    assert msgspec.json.decode(body) == {"status": "unavailable"}
    assert b"4242" not in body and b"41234" not in body and b"big" not in body
    full = await loading.get("/health", headers={"Authorization": "Bearer k1"})
    assert full.status == 503
    assert (await full.json())["engines"][0]["pid"] == 4242


async def test_health_without_a_key_configured_is_the_full_document(make: MakeClient) -> None:
    client = await make()
    assert "engines" in await (await client.get("/health")).json()


# ----------------------------------------------------------------------------- item 14


async def test_deep_json_is_400_on_every_body_endpoint(make_bed: MakeBed) -> None:
    bed = await make_bed()
    deep = b"[" * 1000 + b"]" * 1000  # 2 KB
    nested_field = b'{"model":"fake","prompt":"x","messages":[],"input":"x","options":' + \
        b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}"
    routes = body_routes(bed.client.app)
    assert len(routes) >= 14
    for method, path in routes:
        for body in (deep, nested_field):
            resp = await bed.client.request(method, path, data=body)
            assert resp.status == 400, (path, resp.status, await resp.text())
            assert "exceeded max depth" in error_text(await resp.json()), path


async def test_routing_errors_are_json(make: MakeClient) -> None:
    client = await make()
    for method, path, status, text in (
            ("GET", "/nope", 404, "404 page not found"),
            ("POST", "/api/version", 405, "405 method not allowed"),
            ("GET", "/api/generate", 405, "405 method not allowed"),
            ("PUT", "/api/tags", 405, "405 method not allowed")):
        resp = await client.request(method, path)
        assert resp.status == status
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.json() == {"error": text}
    resp = await client.get("/v1/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "not_found_error"
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405
    assert (await resp.json())["error"] == {"message": "405 method not allowed",
                                            "type": "api_error", "param": None, "code": None}


async def test_malformed_requests_get_json_errors() -> None:
    async with live_gateway(Config()) as gw:
        for raw in (b"GET / HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n",
                    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
                    b"GET / HTTP/9.9\r\n\r\n"):
            reply = await exchange(gw.port, raw)
            assert reply.status == 400, raw[:40]
            assert reply.headers["content-type"].startswith("application/json")
            assert reply.json()["error"].startswith("bad request: ")  # type: ignore[index]
        reply = await exchange(gw.port, b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n"
                               b"Expect: tea\r\nContent-Length: 2\r\n\r\n{}")
        assert reply.status == 417
        assert reply.json() == {"error": "Unknown Expect: tea"}


# ----------------------------------------------------------------------------- item 6


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(log.TextFormatter())
    logger = logging.getLogger("vllama.access")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def test_access_log_lines_cannot_be_forged(make: MakeClient,
                                                 access_lines: io.StringIO) -> None:
    client = await make()
    forged = "/api/x%0A12:00:00%20INFO%20%20%20%20access:%20GET%20/admin%20200%0D%1B[2J"
    assert (await client.get(forged)).status == 404
    assert (await client.get("/api/x\u2028y")).status == 404
    text = access_lines.getvalue()
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert " GET /api/x%0A12:00:00%20INFO" in lines[0] and " 404 " in lines[0]
    assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
