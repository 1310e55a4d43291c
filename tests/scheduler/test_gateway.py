"""The lifecycle through the gateway (real loopback server, real fake-vLLM children): a chat
for a model nobody loaded loads it; `done_reason` load and unload; /api/ps with states and
`expires_at`; the queue's 503 with Retry-After; Ollama's 404 for a name that is nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.scheduler.conftest import WAIT, MakeBed
from vllama.scheduler.state import SlotState

pytestmark = pytest.mark.timeout(120)

Client = TestClient[web.Request, web.Application]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


async def _post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
    resp = await client.post(path, data=msgspec.json.encode(body))
    return resp.status, msgspec.json.decode(await resp.read()), resp.headers


async def test_chat_loads_an_unloaded_model_and_ps_tells(make_bed: MakeBed,
                                                         aiohttp_client: Any) -> None:
    bed = await make_bed("a", "b")
    client: Client = await aiohttp_client(bed.gateway(), server_kwargs={
        "handler_cancellation": True})
    assert (await (await client.get("/api/ps")).json()) == {"models": []}
    async with asyncio.timeout(WAIT):
        status, doc, _ = await _post(client, "/api/chat", {"model": "a", **CHAT,
                                                            "keep_alive": "10m"})
    assert status == 200 and doc["done"] is True and doc["load_duration"] > 0
    ps = (await (await client.get("/api/ps")).json())["models"]
    assert [(m["name"], m["state"]) for m in ps] == [("a:latest", "loaded")]
    expires = datetime.fromisoformat(ps[0]["expires_at"])
    left = expires - datetime.now(expires.tzinfo)
    assert timedelta(minutes=9) < left <= timedelta(minutes=10)  # from the request's end
    assert ps[0]["size"] > 0 and ps[0]["size_vram"] == 0 and ps[0]["context_length"] == 2048


async def test_load_and_unload_replies(make_bed: MakeBed, aiohttp_client: Any) -> None:
    bed = await make_bed("a")
    client: Client = await aiohttp_client(bed.gateway())
    async with asyncio.timeout(WAIT):
        status, doc, headers = await _post(client, "/api/generate", {"model": "a"})
    assert status == 200 and doc["done_reason"] == "load" and doc["response"] == ""
    assert headers["Content-Type"].startswith("application/json")
    assert bed.scheduler.slot_state("a") is SlotState.LOADED
    pid = bed.pid("a")
    status, doc, _ = await _post(client, "/api/chat", {"model": "a", "messages": [],
                                                       "keep_alive": 0})
    assert status == 200 and doc["done_reason"] == "unload"
    assert doc["message"] == {"role": "assistant", "content": ""}
    await bed.gone(pid)
    # Unloading what is not loaded is the same reply, and loads nothing.
    status, doc, _ = await _post(client, "/api/generate", {"model": "a", "keep_alive": 0})
    assert status == 200 and doc["done_reason"] == "unload"


async def test_queue_full_is_503_with_retry_after(make_bed: MakeBed,
                                                  aiohttp_client: Any) -> None:
    bed = await make_bed("a", model_args={"a": ("--fake-startup-delay", "2")}, max_queue=1)
    client: Client = await aiohttp_client(bed.gateway())
    first = asyncio.ensure_future(_post(client, "/api/chat", {"model": "a", **CHAT}))
    async with asyncio.timeout(WAIT):
        while not bed.scheduler.queued:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        status, doc, headers = await _post(client, "/api/chat", {"model": "a", **CHAT})
        assert status == 503 and headers["Retry-After"] == "10"
        assert doc == {"error": "server busy, please try again.  maximum pending requests "
                                "exceeded"}
        status, _, _ = await first
    assert status == 200


async def test_a_name_that_is_nothing_is_ollamas_404(make_bed: MakeBed,
                                                      aiohttp_client: Any) -> None:
    bed = await make_bed("a")
    client: Client = await aiohttp_client(bed.gateway())
    status, doc, _ = await _post(client, "/api/chat", {"model": "nothing", **CHAT})
    assert (status, doc) == (404, {"error": "model 'nothing' not found"})
    status, doc, _ = await _post(client, "/api/embed", {"model": "nothing", "input": "x"})
    assert (status, doc) == (404, {"error": 'model "nothing" not found, try pulling it first'})
    assert bed.scheduler.snapshot() == []


async def test_health_waits_for_preloaded_models_only(make_bed: MakeBed,
                                                      aiohttp_client: Any) -> None:
    bed = await make_bed("a", "b", model_args={"a": ("--fake-startup-delay", "1")})
    client: Client = await aiohttp_client(bed.gateway())
    slots = bed.scheduler.preload([bed.model("a")], lambda m: float("inf"))
    resp = await client.get("/health")
    doc = await resp.json()
    assert resp.status == 503 and doc["status"] == "unavailable"
    assert doc["models"][0]["model"] == "a" and doc["models"][0]["state"] == "loading"
    async with asyncio.timeout(WAIT):
        assert await bed.scheduler.wait_loaded(slots)
    resp = await client.get("/health")
    assert resp.status == 200
    # an on-demand load does not take the daemon out of a load balancer
    waiting = asyncio.ensure_future(_post(client, "/api/chat", {"model": "b", **CHAT}))
    async with asyncio.timeout(WAIT):
        while bed.scheduler.slot_state("b") is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert (await client.get("/health")).status == 200
        assert (await waiting)[0] == 200


async def test_num_ctx_never_reloads(make_bed: MakeBed, aiohttp_client: Any) -> None:
    """Clients that vary num_ctx made Ollama reload on every request (ollama#8903): the
    engine's context is fixed, and num_ctx is capped within it."""
    bed = await make_bed("a")
    client: Client = await aiohttp_client(bed.gateway())
    async with asyncio.timeout(WAIT):
        for num_ctx in (512, 8192, 2048, 128000):
            status, _, _ = await _post(client, "/api/chat", {
                "model": "a", **CHAT, "options": {"num_ctx": num_ctx, "num_predict": 2}})
            assert status == 200
    assert [e[0] for e in bed.events] == ["load", "loaded"]
