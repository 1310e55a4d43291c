"""Issue 13 through the real gateway over the scheduler and real fake-vLLM children: the
parsers a model's template needs reach its engine with nothing configured, so tool calls
work by default (and a template without tools keeps Ollama's 400); /v1/completions get the
running engine's max_model_len instead of vLLM's 16-token default; a copy of any listed
model is another name for the same engine."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import REPO_ROOT
from tests.scheduler.conftest import WAIT, MakeBed
from vllama.models.store import ModelStore

pytestmark = pytest.mark.timeout(120)

Client = TestClient[web.Request, web.Application]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                         "parameters": {"type": "object", "properties": {}}}}
GEMMA = REPO_ROOT / "tests" / "data" / "templates" / "google-gemma-3-it.jinja"


async def _post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with asyncio.timeout(WAIT):
        resp = await client.post(path, data=msgspec.json.encode(body))
        return resp.status, msgspec.json.decode(await resp.read())


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "weather?"}],
            "stream": False, **extra}


@pytest.fixture
def no_tools_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with Gemma 3's template, which never shows the model its tools."""
    out = tmp_path / "no-tools"
    shutil.copytree(tiny_dir, out)
    (out / "chat_template.jinja").write_text(GEMMA.read_text())
    return out


async def test_tools_work_with_vllamas_defaults(make_bed: MakeBed, aiohttp_client: Any,
                                                no_tools_dir: Path) -> None:
    bed = await make_bed("tiny", "plain", sources={"plain": no_tools_dir},
                         model_args={"tiny": ("--fake-tool-call",)})
    client: Client = await aiohttp_client(bed.gateway())
    shown = await (await client.post("/api/show", json={"model": "tiny"})).json()
    assert shown["capabilities"] == ["completion", "tools"]
    status, doc = await _post(client, "/api/chat", _chat("tiny", tools=[TOOL]))
    assert status == 200, doc
    assert doc["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    async with asyncio.timeout(WAIT), aiohttp.ClientSession() as session:
        info = await bed.info("tiny", session)
    # the engine runs with the parsers its template needs, and the tools reached it
    assert info["enable_auto_tool_choice"] is True and info["tool_call_parser"] == "hermes"
    assert info["reasoning_parser"] is None
    assert info["requests"][-1]["body"]["tools"] == [TOOL]

    # a template without tools: Ollama's exact 400, and no engine is started for it
    shown = await (await client.post("/api/show", json={"model": "plain"})).json()
    assert shown["capabilities"] == ["completion"]
    status, doc = await _post(client, "/api/chat", _chat("plain", tools=[TOOL]))
    assert (status, doc) == (400, {
        "error": "registry.ollama.ai/library/plain:latest does not support tools"})
    assert bed.scheduler.slot_state("plain") is None


async def test_completions_get_the_running_engines_context(make_bed: MakeBed,
                                                            aiohttp_client: Any) -> None:
    # The model's config says 2048 and so does the placement's --max-model-len; the engine
    # runs with 700, which only its /v1/models tells (and the fake, like vLLM, refuses a
    # max_tokens above it). Without max_tokens the fake stops a completion at 16 tokens.
    bed = await make_bed("a", model_args={"a": ("--fake-max-model-len", "700",
                                                "--fake-tokens", "40")})
    client: Client = await aiohttp_client(bed.gateway())
    status, doc = await _post(client, "/api/generate", {"model": "a", "prompt": "x",
                                                        "raw": True, "stream": False})
    assert status == 200 and doc["eval_count"] == 40, doc
    async with bed.scheduler.lease(bed.model("a")) as lease:
        assert lease.max_model_len == 700
    async with asyncio.timeout(WAIT), aiohttp.ClientSession() as session:
        info = await bed.info("a", session)
    assert info["max_model_len"] == 2048  # what the flags said
    assert info["requests"][-1] == {"path": "/v1/completions", "body": {
        "model": "a", "prompt": "x", "stream": True,
        "stream_options": {"include_usage": True}, "max_tokens": 700}}
    # a num_predict beyond the engine's context is clamped to it, not refused
    status, doc = await _post(client, "/api/generate", {
        "model": "a", "prompt": "x", "raw": True, "stream": False,
        "options": {"num_predict": 5000}})
    assert status == 200, doc
    async with asyncio.timeout(WAIT), aiohttp.ClientSession() as session:
        info = await bed.info("a", session)
    assert info["requests"][-1]["body"]["max_tokens"] == 700


async def test_copies_are_names_for_the_same_engine(make_bed: MakeBed, aiohttp_client: Any,
                                                    tiny_dir: Path, tmp_path: Path) -> None:
    # A configured model, and a local directory nobody configured (a config alias of it).
    state, other = tmp_path / "state", tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    bed = await make_bed("tiny", state_dir=state, aliases={"dir": str(other)})
    client: Client = await aiohttp_client(bed.gateway())
    for source, copy in (("tiny", "tiny2"), ("dir", "dir2:v1")):
        resp = await client.post("/api/copy", json={"source": source, "destination": copy})
        assert resp.status == 200, await resp.text()
        assert (await _post(client, "/api/chat", _chat(source)))[0] == 200
        assert (await _post(client, "/api/chat", _chat(copy)))[0] == 200
    # one load per model: the copy answered on its source's engine
    loads = [model for kind, model, _ in bed.events if kind == "load"]
    assert loads == ["tiny", str(other)]
    tags = {m["name"] for m in (await (await client.get("/api/tags")).json())["models"]}
    assert {"tiny:latest", "tiny2:latest", "dir:latest", "dir2:v1"} <= tags

    # a restart (a new store over the same state dir) still knows the copies
    again = ModelStore(None, state, models=bed.config.models, config_aliases=bed.config.aliases)
    assert {m.name for m in again.list_models()} >= {"tiny2:latest", "dir2:v1"}
    found = again.find("tiny2")
    assert found is not None and found.model.name == "tiny"

    # deleting a copy removes only the name; the configured name is the config's to remove
    resp = await client.delete("/api/delete", json={"model": "tiny2"})
    assert resp.status == 200
    status, doc = await _post(client, "/api/chat", _chat("tiny2"))
    assert status == 404 and "not found" in doc["error"]
    assert (await _post(client, "/api/chat", _chat("tiny")))[0] == 200
    resp = await client.delete("/api/delete", json={"model": "tiny"})
    assert resp.status == 400
    assert "config" in (await resp.json())["error"]
