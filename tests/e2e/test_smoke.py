"""Smoke test of the real engine: the properties of the tiny model other tiers rely on."""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.e2e.engine import VllmEngine

# Timeout: the first test of each engine also pays its start (about 30-65 s, up to 300 s).
pytestmark = [pytest.mark.e2e_vllm, pytest.mark.timeout(420)]

TIMEOUT = aiohttp.ClientTimeout(total=60)
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Why is the sky blue? ¿Por qué? 🙂"},
]


async def _get(engine: VllmEngine, path: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as s,
        s.get(engine.base_url + path) as r,
    ):
        return r.status, await r.read()


async def _post(engine: VllmEngine, path: str, body: dict[str, Any]) -> Any:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as s,
        s.post(engine.base_url + path, data=msgspec.json.encode(body),
               headers={"Content-Type": "application/json"}) as r,
    ):
        raw = await r.read()
        assert r.status == 200, raw
        return msgspec.json.decode(raw)


async def _stream(engine: VllmEngine, path: str, body: dict[str, Any]) -> list[Any]:
    """POST with stream=true; return the decoded `data:` chunks, checking the [DONE] end."""
    chunks: list[Any] = []
    done = False
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as s,
        s.post(engine.base_url + path, data=msgspec.json.encode({**body, "stream": True}),
               headers={"Content-Type": "application/json"}) as r,
    ):
        assert r.status == 200, await r.read()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            text = line.decode().strip()
            if not text:
                continue
            assert text.startswith("data: "), text
            payload = text.removeprefix("data: ")
            if payload == "[DONE]":
                done = True
                continue
            assert not done, "data after [DONE]"
            chunks.append(msgspec.json.decode(payload))
    assert done, "stream ended without [DONE]"
    return chunks


async def test_health(vllm_engine: VllmEngine) -> None:
    status, _ = await _get(vllm_engine, "/health")
    assert status == 200


async def test_models_lists_tiny(vllm_engine: VllmEngine) -> None:
    status, raw = await _get(vllm_engine, "/v1/models")
    assert status == 200
    models = msgspec.json.decode(raw)["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [("tiny", 2048)]


async def test_chat_stream_runs_to_max_tokens_with_usage(vllm_engine: VllmEngine) -> None:
    chunks = await _stream(vllm_engine, "/v1/chat/completions", {
        "model": "tiny", "messages": MESSAGES, "max_tokens": 8, "temperature": 0,
        "stream_options": {"include_usage": True},
    })
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    assert "".join(x for x in content if x), "no text streamed"
    assert [f for f in finishes if f] == ["length"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_stream_equals_non_stream_greedy(vllm_engine: VllmEngine, path: str) -> None:
    body: dict[str, Any] = {"model": "tiny", "max_tokens": 24, "temperature": 0}
    if path.endswith("chat/completions"):
        body["messages"] = MESSAGES
    else:
        body["prompt"] = "Once upon a time, café ☕"
    whole = await _post(vllm_engine, path, body)
    chunks = await _stream(vllm_engine, path, body)
    choice = whole["choices"][0]
    if path.endswith("chat/completions"):
        text = choice["message"]["content"]
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    else:
        text = choice["text"]
        streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert choice["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 24
    assert text
    assert streamed == text
    # Greedy is deterministic across requests too.
    again = await _post(vllm_engine, path, body)
    assert again["choices"][0] == choice


async def test_sampling_still_runs_to_max_tokens(vllm_engine: VllmEngine) -> None:
    # The tiny model can never emit eos, whatever the temperature.
    whole = await _post(vllm_engine, "/v1/chat/completions", {
        "model": "tiny", "messages": MESSAGES, "max_tokens": 32, "temperature": 1.5, "n": 4,
    })
    assert [c["finish_reason"] for c in whole["choices"]] == ["length"] * 4
    assert whole["usage"]["completion_tokens"] == 4 * 32


async def test_embeddings(vllm_embed_engine: VllmEngine) -> None:
    body = {"model": "tiny-embed", "input": ["The sky is blue.", "Pasta recipes 🍝"]}
    first = await _post(vllm_embed_engine, "/v1/embeddings", body)
    again = await _post(vllm_embed_engine, "/v1/embeddings", body)
    vectors = [d["embedding"] for d in first["data"]]
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert [len(v) for v in vectors] == [128, 128]
    assert vectors[0] != vectors[1]
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-3) for v in vectors)  # normalized
    assert [d["embedding"] for d in again["data"]] == vectors


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}]


async def test_chat_template_renders_all_roles(vllm_engine: VllmEngine) -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "U"}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    tokens = (await _post(vllm_engine, "/tokenize", {
        "model": "tiny", "messages": messages, "add_generation_prompt": True,
    }))["tokens"]
    text = (await _post(vllm_engine, "/detokenize", {"model": "tiny", "tokens": tokens}))["prompt"]
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\n"
    )
    with_tools = (await _post(vllm_engine, "/tokenize", {
        "model": "tiny", "messages": messages[:2], "tools": TOOLS, "add_generation_prompt": True,
    }))["tokens"]
    rendered = (await _post(vllm_engine, "/detokenize", {"model": "tiny", "tokens": with_tools}))
    assert rendered["prompt"].startswith("<|im_start|>system\nS\n\nYou may call these tools:\n{")
    assert '"get_weather"' in rendered["prompt"]


async def test_chat_with_tools_accepted(vllm_engine: VllmEngine) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "tools": TOOLS, "max_tokens": 8,
            "temperature": 0}
    whole = await _post(vllm_engine, "/v1/chat/completions", body)
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "length"
    assert not choice["message"].get("tool_calls")
    chunks = await _stream(vllm_engine, "/v1/chat/completions", body)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == choice["message"]["content"]
