"""`[[upstreams]]` discovery through the real gateway: a fake production-stack router and a
fake `vllm serve` stand in for cluster endpoints; remotes that answer garbage or nothing never
break /api/tags."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from tests.fake_router import RouterScript, fake_router
from tests.fake_vllm import FakeScript
from tests.fleet.conftest import MakeBed, start_upstream
from vllama.config import ModelConfig, RemoteSource

DISCOVERY = {"upstream_discovery_interval": 1.0, "upstream_probe_timeout": 1.0}


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections, reads, never answers (a wedged endpoint)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def tags(bed: Any) -> dict[str, dict[str, Any]]:
    resp = await bed.client.get("/api/tags")
    assert resp.status == 200
    return {m["name"]: m for m in (await resp.json())["models"]}


async def test_a_production_stack_router_and_a_vllm_serve(make_bed: MakeBed) -> None:
    llama_a = await start_upstream(FakeScript(served_names=["llama"], max_model_len=8192))
    llama_b = await start_upstream(FakeScript(served_names=["llama"], max_model_len=8192))
    qwen = await start_upstream(FakeScript(served_names=["qwen"]))
    plain = await start_upstream(FakeScript(served_names=["tiny"], max_model_len=4096))
    script = RouterScript(backends={llama_a.url: ["llama"], llama_b.url: ["llama"],
                                    qwen.url: ["qwen"]})
    try:
        async with fake_router(script) as router:
            sources = (RemoteSource(router + "/v1", prefix="cluster/"),
                       RemoteSource(plain.v1, models=("tin*",)))
            bed = await make_bed(0, refs=[], upstreams=sources, **DISCOVERY)

            async def listed() -> bool:
                return len(await tags(bed)) == 3

            await bed.until(listed)
            found = await tags(bed)
            assert set(found) == {"cluster/llama:latest", "cluster/qwen:latest", "tiny:latest"}
            # The context length is what the remote reports (a vLLM lists max_model_len; the
            # router's model cards do not, so it is unknown there).
            assert found["tiny:latest"]["details"].get("context_length") == 4096
            assert "context_length" not in found["cluster/llama:latest"]["details"]
            show = await (await bed.client.post("/api/show", data=msgspec.json.encode(
                {"model": "tiny"}))).json()
            info = show["model_info"]
            assert info[f"{info['general.architecture']}.context_length"] == 4096
            v1 = await (await bed.client.get("/v1/models")).json()
            assert {m["id"] for m in v1["data"]} == {"cluster/llama", "cluster/qwen", "tiny"}

            # Requests reach the models through the router (which balances its backends).
            for _ in range(2):
                status, upstream, lines = await bed.chat("hi", model="cluster/llama")
                assert status == 200 and upstream == router + "/v1" and lines[-1]["done"]
            assert {b for _, b in script.routed} == {llama_a.url, llama_b.url}
            assert (await bed.chat("hi", model="tiny"))[:2] == (200, plain.v1)

            _, doc = await bed.health()
            assert [(d["state"], d["models"]) for d in doc["discovery"]] == [("ok", 2),
                                                                          ("ok", 1)]
            ps = await (await bed.client.get("/api/ps")).json()
            assert {m["name"] for m in ps["models"]} >= {"cluster/llama:latest", "tiny:latest"}

            # A model that leaves the stack leaves vllama's list at the next refresh.
            del script.backends[qwen.url]

            async def gone() -> bool:
                return "cluster/qwen:latest" not in await tags(bed)

            await bed.until(gone)
            status, _, lines = await bed.chat("hi", model="cluster/qwen")
            assert status == 404
    finally:
        for up in (llama_a, llama_b, qwen, plain):
            await up.stop()


async def test_garbage_or_silence_never_breaks_tags(make_bed: MakeBed) -> None:
    configured = ModelConfig(name="local-ish", upstream="http://127.0.0.1:9/v1")
    script = RouterScript(backends={"http://unused": ["kept"]})
    async with fake_router(script) as router, silent_server() as silent:
        sources = (RemoteSource(router + "/v1"), RemoteSource(silent + "/v1", prefix="s/"))
        bed = await make_bed(0, refs=[], models=(configured,), upstreams=sources, **DISCOVERY)

        async def listed() -> bool:
            return "kept:latest" in await tags(bed)

        await bed.until(listed)
        script.garbage = True  # the router now answers HTML

        async def both_failing() -> bool:
            _, doc = await bed.health()
            return [d["state"] for d in doc["discovery"]] == ["error", "error"]

        await bed.until(both_failing)
        # /api/tags answers, with the configured model and what was discovered before.
        assert set(await tags(bed)) == {"local-ish:latest", "kept:latest"}
        _, doc = await bed.health()
        garbage, wedged = doc["discovery"]
        assert "not an OpenAI model list" in garbage["reason"]
        assert "no answer to GET /v1/models within 1 s" in wedged["reason"]
        assert (wedged["models"], garbage["models"]) == (0, 1)
