"""The real gateway with a model store: pulled and served models together in tags/show, a
pull of a served model, a copy routed to its engine with its overrides, and the clear error
for a pulled model no engine serves."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.fake_vllm import FAKE_STATE, FakeScript
from tests.fake_vllm import make_app as make_fake
from vllama.config import Config, ModelConfig
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services
from vllama.models.store import ModelStore

from .conftest import pull_all

Client = TestClient[web.Request, web.Application]


async def test_store_and_served_models_together(aiohttp_client: Any, aiohttp_server: Any,
                                                store: ModelStore) -> None:
    assert (await pull_all(store, "tiny/llama"))[-1] == {"status": "success"}
    await pull_all(store, "tiny/llama-sharded")
    fake_app = make_fake(FakeScript(served_names=["tiny/llama"]))
    fake = await aiohttp_server(fake_app)
    # The engine serving the pulled repo (an upstream here, standing in for a local engine).
    cfg = Config(models=(ModelConfig(name="tiny/llama", upstream=str(fake.make_url("/v1"))),))
    # The daemon builds its store from the same config: it knows the configured models.
    served = ModelStore(store.cache, store.state_dir, models=cfg.models, endpoint=store.endpoint,
                        config_aliases=store.config_aliases)
    client: Client = await aiohttp_client(make_app(Services(config=cfg, store=served)))

    tags = await (await client.get("/api/tags")).json()
    names = [m["name"] for m in tags["models"]]
    assert "tiny/llama:latest" in names
    assert any(n.startswith(("tiny/llama-sharded", "house-model")) for n in names)

    # A pull of a served model succeeds at once, streamed and not.
    resp = await client.post("/api/pull", data=b'{"name": "tiny/llama"}')
    assert [msgspec.json.decode(x) for x in (await resp.read()).splitlines()] == [
        {"status": "pulling manifest"}, {"status": "success"}]
    resp = await client.post("/api/pull", data=b'{"model": "tiny/llama", "stream": false}')
    assert await resp.json() == {"status": "success"}

    # cp + create make aliases that route to the engine, with the create's overrides.
    assert (await client.post("/api/copy", data=b'{"source": "tiny/llama", '
                                                b'"destination": "mine"}')).status == 200
    created = await client.post("/api/create", data=msgspec.json.encode({
        "model": "pirate", "from": "tiny/llama", "system": "talk like a pirate",
        "parameters": {"temperature": 0.3}, "stream": False}))
    assert created.status == 200, await created.text()
    resp = await client.post("/api/chat", data=msgspec.json.encode({
        "model": "pirate", "messages": [{"role": "user", "content": "hi"}], "stream": False}))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["model"] == "pirate"
    sent = fake_app[FAKE_STATE].bodies("/v1/chat/completions")[-1]
    assert sent["messages"][0] == {"role": "system", "content": "talk like a pirate"}
    assert sent["temperature"] == 0.3 and sent["model"] == "tiny/llama"
    resp = await client.post("/api/generate", data=msgspec.json.encode({
        "model": "mine", "prompt": "x", "stream": False}))
    assert resp.status == 200

    # Pulled but not configured: servable, loaded on demand by the scheduler; this gateway has
    # none (the scheduler tier runs the load), so it says why it cannot.
    resp = await client.post("/api/chat", data=msgspec.json.encode({
        "model": "house-model:v2", "messages": [{"role": "user", "content": "hi"}]}))
    assert resp.status == 503
    assert "vllama runs no engines here" in (await resp.json())["error"]

    # show covers local models that no engine serves, and 404s the rest.
    shown = await (await client.post("/api/show", data=b'{"model": "house-model:v2"}')).json()
    assert shown["model_info"]["general.architecture"] == "llama"
    missing = await client.post("/api/show", data=b'{"name": "absent"}')
    assert missing.status == 404
    assert (await missing.json())["error"] == "model 'absent:latest' not found"

    # delete removes the pulled repo; a served-only name is not in the cache.
    resp = await client.delete("/api/delete", data=b'{"name": "tiny/llama-sharded"}')
    assert resp.status == 200 and await resp.read() == b""
    resp = await client.post("/api/push", data=b'{"name": "tiny/llama"}')
    assert resp.status == 400 and "push is not supported" in (await resp.json())["error"]


async def test_a_copy_of_a_remote_upstream(aiohttp_client: Any, aiohttp_server: Any,
                                           store: ModelStore) -> None:
    fake_app = make_fake(FakeScript(served_names=["remote-model"]))
    fake = await aiohttp_server(fake_app)
    cfg = Config(models=(ModelConfig(name="remote", upstream=str(fake.make_url("/v1")),
                                     upstream_model="remote-model"),))
    served = ModelStore(store.cache, store.state_dir, models=cfg.models)
    client: Client = await aiohttp_client(make_app(Services(config=cfg, store=served)))
    resp = await client.post("/api/copy", json={"source": "remote", "destination": "r2"})
    assert resp.status == 200, await resp.text()
    names = {m["name"] for m in (await (await client.get("/api/tags")).json())["models"]}
    assert names == {"remote:latest", "r2:latest"}
    resp = await client.post("/api/chat", json={
        "model": "r2", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert resp.status == 200, await resp.text()
    assert fake_app[FAKE_STATE].bodies("/v1/chat/completions")[-1]["model"] == "remote-model"
    assert (await client.delete("/api/delete", json={"model": "r2"})).status == 200
    names = {m["name"] for m in (await (await client.get("/api/tags")).json())["models"]}
    assert names == {"remote:latest"}
    resp = await client.delete("/api/delete", json={"model": "remote"})
    assert resp.status == 400 and "config" in (await resp.json())["error"]
