"""The fake vLLM itself: wire shapes, scripted faults and bookkeeping in-process, and the child
process's lifecycle (startup, failures, signals, its process group) as a real subprocess."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient

from tests import fake_vllm_gen as gen
from tests.conftest import REPO_ROOT, free_port
from tests.fake_vllm import (
    ENGINE_DEAD,
    FAKE_SCRIPT,
    FAKE_STATE,
    FakeScript,
    FakeState,
    fake_server,
    make_app,
    metrics_text,
)

Client = TestClient[Request, Application]
CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]


async def start(aiohttp_client: AiohttpClient, **script: Any) -> tuple[Client, FakeState]:
    app = make_app(FakeScript(**script))
    return await aiohttp_client(app), app[FAKE_STATE]


def parse_sse(text: str) -> list[Any]:
    """Every event of an SSE body, decoded; ``[DONE]`` stays a string."""
    events: list[Any] = []
    for block in text.lstrip("\n").split("\n\n"):  # lstrip: a partly read stream
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else msgspec.json.decode(data))
    return events


async def post_sse(client: Client, path: str, body: dict[str, Any]) -> list[Any]:
    async with client.post(path, json={**body, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        return parse_sse(await resp.text())


async def read_events(resp: aiohttp.ClientResponse, n: int) -> list[bytes]:
    """The first ``n`` SSE events of a stream still being written."""
    out: list[bytes] = []
    async with asyncio.timeout(5):
        while len(out) < n:
            line = await resp.content.readline()
            assert line, "stream ended early"
            if line.strip():
                out.append(line.strip())
    return out


def chat_content(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


# --- utility endpoints -------------------------------------------------------------------


async def test_models_health_version_ping(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, served_names=["tiny", "alias"], max_model_len=512)
    resp = await client.get("/v1/models")
    body = await resp.json()
    assert [m["id"] for m in body["data"]] == ["tiny", "alias"]
    card = body["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["root"] == "/models/fake" and card["max_model_len"] == 512
    assert (await client.get("/health")).status == 200
    assert await (await client.get("/health")).read() == b""
    assert (await client.get("/ping")).status == 200
    assert await (await client.get("/version")).json() == {"version": "0.32.0"}
    resp = await client.get("/nope")
    assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}


async def test_health_503_when_engine_dead(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, healthy=False)
    assert (await client.get("/health")).status == 503


async def test_metrics_text_shape() -> None:
    script, state = FakeScript(served_names=["tiny"]), FakeState()
    state.generation_started()
    text = metrics_text(script, state)
    assert 'vllm:num_requests_running{engine="0",model_name="tiny"} 1.0' in text
    assert 'vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0' in text
    assert "# TYPE vllm:num_requests_running gauge" in text


async def test_requests_are_recorded(aiohttp_client: AiohttpClient) -> None:
    client, state = await start(aiohttp_client)
    await client.post(CHAT, json={"model": "fake", "messages": MESSAGES},
                      headers={"X-Request-Id": "abc"})
    rec = state.requests[-1]
    assert rec.method == "POST" and rec.path == CHAT
    assert rec.body == {"model": "fake", "messages": MESSAGES}
    assert rec.headers["X-Request-Id"] == "abc"
    assert state.bodies(CHAT) == [rec.body]


async def test_api_key_guards_only_v1(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, api_key="sekrit")
    resp = await client.get("/v1/models")
    assert resp.status == 401 and await resp.json() == {"error": "Unauthorized"}
    resp = await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    resp = await client.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
    assert resp.status == 200
    assert (await client.get("/health")).status == 200
    assert (await client.get("/metrics")).status == 200


# --- chat --------------------------------------------------------------------------------


async def test_chat_non_stream(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, served_names=["tiny", "alias"])
    resp = await client.post(CHAT, json={"model": "alias", "messages": MESSAGES})
    body = await resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny"  # vLLM answers an alias with the first served name
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == gen.reply_text(8)
    assert gen.reply_text(3) == "tok0 tok1 tok2"
    assert choice["message"]["reasoning"] is None and "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    # 2 words + 3 template tokens for the one message
    assert body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["completion_tokens"] == 8 and body["usage"]["total_tokens"] == 13


async def test_chat_stream_with_usage(aiohttp_client: AiohttpClient) -> None:
    client, state = await start(aiohttp_client)
    events = await post_sse(client, CHAT, {"messages": MESSAGES, "max_tokens": 3,
                                           "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    first, *tokens, usage, _ = events
    assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")
    assert first["model"] == "fake" and isinstance(first["created"], int)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [t["choices"][0]["delta"] for t in tokens] == [
        {"content": "tok0"}, {"content": " tok1"}, {"content": " tok2"}]
    assert [t["choices"][0]["finish_reason"] for t in tokens] == [None, None, "length"]
    assert {e["id"] for e in events[:-1]} == {first["id"]}
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert state.streams_completed == 1 and state.streams_open == 0


async def test_chat_stream_without_usage_and_same_text(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tokens=4)
    events = await post_sse(client, CHAT, {"messages": MESSAGES})
    assert not any("usage" in e for e in events if isinstance(e, dict))
    full = await (await client.post(CHAT, json={"messages": MESSAGES})).json()
    assert chat_content(events) == full["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_continuous_usage_stats(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tokens=2)
    events = await post_sse(client, CHAT, {"messages": MESSAGES, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}})
    assert [e["usage"]["completion_tokens"] for e in events[:-1]] == [0, 1, 2, 2]


async def test_max_completion_tokens_wins_and_context_clamps(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, max_model_len=7, tokens=8)
    body = await (await client.post(CHAT, json={
        "messages": MESSAGES, "max_tokens": 6, "max_completion_tokens": 1})).json()
    assert body["choices"][0]["message"]["content"] == "tok0"
    # 5 prompt tokens leave 2 of the 7-token context
    body = await (await client.post(CHAT, json={"messages": MESSAGES})).json()
    assert body["usage"]["completion_tokens"] == 2
    assert body["choices"][0]["finish_reason"] == "length"


async def test_stop_string_cuts(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client)
    body = await (await client.post(CHAT, json={"messages": MESSAGES, "stop": [" tok3"]})).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "tok0 tok1 tok2"
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == " tok3"
    events = await post_sse(client, CHAT, {"messages": MESSAGES, "stop": "k1 t"})
    assert chat_content(events) == "tok0 to"


async def test_chat_logprobs(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tokens=2)
    req = {"messages": MESSAGES, "logprobs": True, "top_logprobs": 2}
    body = await (await client.post(CHAT, json=req)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["tok0", " tok1"]
    assert content[0]["bytes"] == list(b"tok0") and len(content[0]["top_logprobs"]) == 2
    assert isinstance(content[0]["logprob"], float)
    events = await post_sse(client, CHAT, req)
    assert events[1]["choices"][0]["logprobs"]["content"][0]["token"] == "tok0"


async def test_reasoning_before_content(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, reasoning=True, tokens=2)
    events = await post_sse(client, CHAT, {"messages": MESSAGES,
                                           "stream_options": {"include_usage": True}})
    deltas = [e["choices"][0]["delta"] for e in events[1:-2]]
    assert deltas == [{"reasoning": "think0"}, {"reasoning": " think1"},
                      {"reasoning": " think2"}, {"content": "tok0"}, {"content": " tok1"}]
    assert events[-2]["usage"]["completion_tokens"] == 5
    msg = (await (await client.post(CHAT, json={"messages": MESSAGES})).json())["choices"][0]
    assert msg["message"]["reasoning"] == "think0 think1 think2"
    assert msg["message"]["content"] == "tok0 tok1"
    off = {"messages": MESSAGES, "chat_template_kwargs": {"enable_thinking": False}}
    msg = (await (await client.post(CHAT, json=off)).json())["choices"][0]["message"]
    assert msg["reasoning"] is None and msg["content"] == "tok0 tok1"


async def test_tool_call_streamed_in_fragments(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tool_call=True)
    events = await post_sse(client, CHAT, {"messages": MESSAGES, "tools": TOOLS})
    deltas = [e["choices"][0]["delta"] for e in events[1:-1]]
    head = deltas[0]["tool_calls"][0]
    assert head["id"].startswith("chatcmpl-tool-") and head["type"] == "function"
    assert head["index"] == 0
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    frags = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
    assert len(frags) > 1 and all("id" not in d["tool_calls"][0] for d in deltas[1:-1])
    assert msgspec.json.decode("".join(frags)) == {"city": "value", "days": 0}
    assert deltas[-1] == {} and events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    body = await (await client.post(CHAT, json={"messages": MESSAGES, "tools": TOOLS})).json()
    msg = body["choices"][0]["message"]
    assert msg["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["tool_calls"][0]["function"]["name"] == "get_weather"
    assert msgspec.json.decode(msg["tool_calls"][0]["function"]["arguments"]) == {
        "city": "value", "days": 0}


async def test_tool_call_only_when_tools_sent(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tool_call=True, tokens=1)
    body = await (await client.post(CHAT, json={"messages": MESSAGES})).json()
    assert body["choices"][0]["message"]["content"] == "tok0"
    none = {"messages": MESSAGES, "tools": TOOLS, "tool_choice": "none"}
    body = await (await client.post(CHAT, json=none)).json()
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_json_response_format(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tokens=2)
    req = {"messages": MESSAGES, "response_format": {"type": "json_object"}}
    body = await (await client.post(CHAT, json=req)).json()
    assert msgspec.json.decode(body["choices"][0]["message"]["content"]) == {"answer": "tok0 tok1"}
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}}}
    req["response_format"] = {"type": "json_schema",
                              "json_schema": {"name": "schema", "schema": schema}}
    events = await post_sse(client, CHAT, req)
    assert msgspec.json.decode(chat_content(events)) == {"name": "tok0 tok1", "age": 0}


# --- completions -------------------------------------------------------------------------


async def test_completions_default_max_tokens_16(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tokens=40)
    body = await (await client.post(CMPL, json={"model": "fake", "prompt": "a b c"})).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["text"] == gen.reply_text(16) and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20,
                             "prompt_tokens_details": None}


async def test_completions_stream_and_logprobs(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, tokens=3)
    events = await post_sse(client, CMPL, {"prompt": "hi", "logprobs": 1,
                                           "stream_options": {"include_usage": True}})
    *chunks, usage, done = events
    assert done == "[DONE]" and usage["choices"] == []
    assert usage["object"] == "text_completion" and usage["usage"]["completion_tokens"] == 3
    assert "".join(c["choices"][0]["text"] for c in chunks) == "tok0 tok1 tok2"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    lp = chunks[1]["choices"][0]["logprobs"]
    assert lp["tokens"] == [" tok1"] and lp["text_offset"] == [4]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    body = await (await client.post(CMPL, json={"prompt": "hi", "logprobs": 2})).json()
    assert body["choices"][0]["logprobs"]["text_offset"] == [0, 4, 9]
    assert len(body["choices"][0]["logprobs"]["top_logprobs"][0]) == 2


# --- errors ------------------------------------------------------------------------------


async def test_unknown_model_404(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, served_names=["tiny"])
    resp = await client.post(CHAT, json={"model": "nope", "messages": MESSAGES})
    assert resp.status == 404
    assert await resp.json() == {"error": {
        "message": "The model `nope` does not exist. Valid aliases: tiny.",
        "type": "NotFoundError", "param": "model", "code": 404}}


@pytest.mark.parametrize(
    ("path", "body", "param", "text"),
    [
        (CHAT, {"messages": MESSAGES, "tools": []}, "tools", "`tools` must not be an empty array"),
        (CHAT, {"messages": MESSAGES, "stream_options": {"include_usage": True}},
         "stream_options", "Stream options can only be defined when `stream=True`."),
        (CMPL, {"prompt": "x", "stream": False, "stream_options": {"include_usage": True}},
         "stream_options", "Stream options can only be defined"),
        (CMPL, {"prompt": "x", "suffix": "y"}, "suffix", "suffix is only supported for models"),
        (CHAT, {"messages": MESSAGES, "max_tokens": 5000}, "max_tokens",
         "max_tokens=5000 cannot be greater than max_model_len=2048."),
        (CMPL, {"prompt": "w " * 3000}, "input_tokens",
         "This model's maximum context length is 2048 tokens. However, your prompt contains 3001"),
    ],
)
async def test_bad_requests_400(
    aiohttp_client: AiohttpClient, path: str, body: dict[str, Any], param: str, text: str
) -> None:
    client, _ = await start(aiohttp_client)
    resp = await client.post(path, json=body)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert text in err["message"] and err["param"] == param and err["code"] == 400
    assert err["type"] in ("BadRequestError", "Bad Request")


async def test_invalid_json_400(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client)
    resp = await client.post(CHAT, data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == 400


async def test_runner_mismatch_is_fastapi_404(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, runner="pooling")
    for path in (CHAT, CMPL):
        resp = await client.post(path, json={"messages": MESSAGES, "prompt": "x"})
        assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}
    client, _ = await start(aiohttp_client)
    resp = await client.post("/v1/embeddings", json={"input": "x"})
    assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}


async def test_fail_status(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, fail_status=500)
    resp = await client.post(CHAT, json={"messages": MESSAGES})
    assert resp.status == 500
    assert (await resp.json())["error"] == {"message": ENGINE_DEAD, "type": "InternalServerError",
                                            "param": None, "code": 500}


# --- embeddings and tokenize -------------------------------------------------------------


async def test_embeddings(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, runner="pooling", embedding_dim=6)
    req = {"model": "fake", "input": ["a b", "c", "a b"], "encoding_format": "float"}
    body = await (await client.post("/v1/embeddings", json=req)).json()
    assert body["object"] == "list" and body["id"].startswith("embd-")
    vecs = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert len(vecs[0]) == 6 and vecs[0] == vecs[2] != vecs[1]
    assert abs(sum(v * v for v in vecs[0]) - 1.0) > 1e-3  # deliberately not normalized
    assert body["usage"]["prompt_tokens"] == 3 + 2 + 3
    truncated = await (await client.post("/v1/embeddings", json={
        "input": "w " * 10, "truncate_prompt_tokens": 4})).json()
    assert truncated["usage"]["prompt_tokens"] == 4
    b64 = await (await client.post("/v1/embeddings", json={
        "input": "a b", "encoding_format": "base64"})).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack("<6f", raw)) == pytest.approx(vecs[0], abs=1e-6)
    resp = await client.post("/v1/embeddings", json={"input": "x", "dimensions": 3})
    assert resp.status == 400 and "Matryoshka" in (await resp.json())["error"]["message"]


async def test_tokenize(aiohttp_client: AiohttpClient) -> None:
    client, _ = await start(aiohttp_client, max_model_len=1024)
    body = await (await client.post("/tokenize", json={"prompt": "a b c"})).json()
    assert body["count"] == 4 == len(body["tokens"]) and body["max_model_len"] == 1024
    assert body["token_strs"] is None
    body = await (await client.post("/tokenize", json={
        "messages": MESSAGES, "return_token_strs": True})).json()
    assert body["count"] == 5 and body["token_strs"][1:4] == ["user", "hello", "there"]
    # the same count the chat endpoint reports as prompt_tokens
    chat = await (await client.post(CHAT, json={"messages": MESSAGES})).json()
    assert chat["usage"]["prompt_tokens"] == body["count"]


# --- scripted stream faults and lifecycle bookkeeping -------------------------------------


# aiohttp's test server cancels a handler whose client left (handler_cancellation=True); a
# plain AppRunner, as in fake_server and the child, does not: both ways must count.
CANCELLATION = pytest.mark.parametrize("cancel", [True, False], ids=["cancelled", "polled"])


@CANCELLATION
async def test_stall_then_client_disconnect_counts_closed_early(
    aiohttp_client: AiohttpClient, cancel: bool
) -> None:
    app = make_app(FakeScript(stall_after=2))
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": cancel})
    state = app[FAKE_STATE]
    resp = await client.post(CHAT, json={"messages": MESSAGES, "stream": True})
    got = await read_events(resp, 2)
    assert b'"role":"assistant"' in got[0]
    await state.wait_for(lambda s: s.streams_open == 1)
    metrics = await (await client.get("/metrics")).text()
    assert 'vllm:num_requests_running{engine="0",model_name="fake"} 1.0' in metrics
    resp.close()
    await state.wait_for(lambda s: s.streams_closed_early == 1 and s.streams_open == 0)
    assert state.running == 0 and state.streams_completed == 0


@CANCELLATION
async def test_slow_stream_client_leaves(aiohttp_client: AiohttpClient, cancel: bool) -> None:
    app = make_app(FakeScript(token_delay=0.05, tokens=1000))
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": cancel})
    state = app[FAKE_STATE]
    resp = await client.post(CHAT, json={"messages": MESSAGES, "stream": True})
    await read_events(resp, 3)
    resp.close()
    await state.wait_for(lambda s: s.streams_closed_early == 1 and s.streams_open == 0)


async def test_unstall_by_changing_the_script(aiohttp_client: AiohttpClient) -> None:
    app = make_app(FakeScript(stall_after=1, tokens=2))
    client, state = await aiohttp_client(app), app[FAKE_STATE]
    async with client.post(CHAT, json={"messages": MESSAGES, "stream": True}) as resp:
        await read_events(resp, 1)
        await state.wait_for(lambda s: s.streams_open == 1)
        app[FAKE_SCRIPT].stall_after = None
        events = parse_sse((await resp.read()).decode())
    assert chat_content(events) == "tok0 tok1" and events[-1] == "[DONE]"
    await state.wait_for(lambda s: s.streams_completed == 1)


async def test_abort_all_ends_stalled_streams_with_error(aiohttp_client: AiohttpClient) -> None:
    client, state = await start(aiohttp_client, stall_after=2)
    async with client.post(CHAT, json={"messages": MESSAGES, "stream": True}) as resp:
        await read_events(resp, 2)
        state.abort_all()
        events = parse_sse((await resp.read()).decode())
    assert events == [{"error": {"message": ENGINE_DEAD, "type": "InternalServerError",
                                 "param": None, "code": 500}}, "[DONE]"]
    await state.wait_for(lambda s: s.streams_errored == 1)


async def test_error_after(aiohttp_client: AiohttpClient) -> None:
    client, state = await start(aiohttp_client, error_after=3)
    events = await post_sse(client, CHAT, {"messages": MESSAGES})
    assert len(events) == 5 and events[3]["error"]["message"] == ENGINE_DEAD
    assert events[-1] == "[DONE]" and state.streams_errored == 1
    resp = await client.post(CHAT, json={"messages": MESSAGES})
    assert resp.status == 500


async def test_drop_after_cuts_the_connection(aiohttp_client: AiohttpClient) -> None:
    client, state = await start(aiohttp_client, drop_after=3)
    async with client.post(CHAT, json={"messages": MESSAGES, "stream": True}) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await state.wait_for(lambda s: s.streams_dropped == 1 and s.streams_open == 0)
    with pytest.raises(aiohttp.ClientError):
        await client.post(CHAT, json={"messages": MESSAGES})


@CANCELLATION
async def test_non_stream_stall_abandoned(aiohttp_client: AiohttpClient, cancel: bool) -> None:
    app = make_app(FakeScript(stall_after=0))
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": cancel})
    state = app[FAKE_STATE]
    task = asyncio.create_task(client.post(CHAT, json={"messages": MESSAGES}))
    await state.wait_for(lambda s: s.running == 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await state.wait_for(lambda s: s.replies_closed_early == 1 and s.running == 0)


async def test_fake_server_on_a_real_port() -> None:
    async with fake_server(FakeScript(tokens=2)) as (url, app), aiohttp.ClientSession() as s:
        async with s.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES}) as resp:
            body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "tok0 tok1"
        assert len(app[FAKE_STATE].requests) == 1


# --- the real child process --------------------------------------------------------------


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def child(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
          serve: tuple[str, ...] = ("serve", "/models/tiny")) -> Iterator[Child]:
    """The fake as the supervisor starts vLLM: own session, argv form, ignored vLLM flags."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.fake_vllm", *serve, "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", "tiny", *args]
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("FAKE_VLLM_") and k != "VLLM_API_KEY"}
    clean["PYTHONPATH"] = str(REPO_ROOT)
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**clean, **(env or {})}, stdout=o,
                                stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield Child(proc, port, out, err)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    """The status of a GET, or None while nothing listens."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=3) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def test_child_binds_only_after_startup_delay(tmp_path: Path) -> None:
    ignored = ("--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
               "--kv-cache-memory-bytes", "64M", "--tensor-parallel-size", "1")
    env = {"FAKE_VLLM_STARTUP_DELAY": "2.5", "VLLM_API_KEY": "sekrit"}
    with child(tmp_path, *ignored, "--served-model-name", "tiny", "alias", env=env) as c:
        wait_until(lambda: "Resolved architecture" in c.stdout(), "the first loading lines")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", c.port), timeout=2).close()
        wait_until(lambda: http_status(c.url("/health")) == 200, "/health 200")
        out = c.stdout()
        for line in ("Loading weights took", "Starting vLLM API server",
                     "Application startup complete."):
            assert line in out
        assert out.index("Loading weights took") < out.index("Application startup complete.")
        assert "(APIServer pid=" in out and " INFO " in out
        assert http_status(c.url("/v1/models")) == 401
        req = urllib.request.Request(c.url("/v1/models"),
                                     headers={"Authorization": "Bearer sekrit"})
        with urllib.request.urlopen(req, timeout=3) as resp:
            ids = [m["id"] for m in msgspec.json.decode(resp.read())["data"]]
        assert ids == ["tiny", "alias"]
        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("kind", "rc", "line"),
    [
        ("config", 2, "vllm: error: unrecognized arguments: --disable-log-requests"),
        ("nomem", 1, "ValueError: No available memory for the cache blocks."),
    ],
)
def test_child_fail_at_start(tmp_path: Path, kind: str, rc: int, line: str) -> None:
    with child(tmp_path, "--disable-log-requests", "--fake-fail-at-start", kind) as c:
        assert c.proc.wait(timeout=15) == rc
        assert any(x.startswith(line) for x in c.stderr().splitlines())


def test_child_exit_after_returns_0(tmp_path: Path) -> None:
    # also the argv form without `serve`
    with child(tmp_path, "--model", "/models/tiny", "--fake-exit-after", "0.3", serve=()) as c:
        assert c.proc.wait(timeout=15) == 0
        assert ENGINE_DEAD in c.stdout()
        assert "Application startup complete." in c.stdout()


def test_child_sigterm_ends_streams_and_reaps_its_engine(tmp_path: Path) -> None:
    with child(tmp_path, "--fake-spawn-child", "--fake-stall-after", "2") as c:
        wait_until(lambda: http_status(c.url("/health")) == 200, "/health 200")
        assert len(group_members(c.proc.pid)) == 2  # the server and its "EngineCore"
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=5)
        try:
            body = msgspec.json.encode({"messages": MESSAGES, "stream": True})
            conn.request("POST", CHAT, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.readline().startswith(b"data: {")  # role chunk, then it stalls
            c.proc.send_signal(signal.SIGTERM)
            rest = resp.read()  # a stalled stream must not hold the shutdown up
        finally:
            conn.close()
        assert ENGINE_DEAD.encode() in rest and rest.endswith(b"data: [DONE]\n\n")
        assert c.proc.wait(timeout=10) == 0
        wait_until(lambda: not group_members(c.proc.pid), "an empty process group", 5)


def test_child_sigkill_orphans_the_engine_process(tmp_path: Path) -> None:
    with child(tmp_path, "--fake-spawn-child") as c:
        wait_until(lambda: http_status(c.url("/health")) == 200, "/health 200")
        pgid = c.proc.pid
        (engine,) = [p for p in group_members(pgid) if p != pgid]
        c.proc.kill()
        c.proc.wait(timeout=10)
        assert engine in group_members(pgid)  # orphaned, still running: the supervisor's job
        os.killpg(pgid, signal.SIGKILL)
        wait_until(lambda: not group_members(pgid), "the orphan to die", 5)
