"""/api/generate and /api/chat through the real gateway against the fake vLLM."""

from __future__ import annotations

import asyncio
import re

import msgspec

from tests.fake_vllm import FakeScript

from .conftest import MakeBed

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")


def check_final(chunk: dict[str, object]) -> None:
    assert chunk["done"] is True
    for key in METRICS:
        assert isinstance(chunk[key], int), key
    assert chunk["total_duration"] >= chunk["load_duration"]  # type: ignore[operator]


async def test_chat_stream(make_bed: MakeBed) -> None:
    bed = await make_bed()
    status, ctype, chunks = await bed.lines("/api/chat", {
        "model": "fake", "messages": [{"role": "user", "content": "hi there"}],
        "options": {"num_predict": 4, "temperature": 0, "seed": 1, "mirostat": None,
                    "tfs_z": 1.0}})
    assert status == 200 and ctype == "application/x-ndjson"
    assert len(chunks) == 5
    for chunk in chunks:
        assert chunk["model"] == "fake"
        assert RFC3339_Z.match(chunk["created_at"])
        assert chunk["message"]["role"] == "assistant"
    assert all(c["done"] is False for c in chunks[:-1])
    text = "".join(c["message"]["content"] for c in chunks)
    assert text.strip()
    check_final(chunks[-1])
    assert chunks[-1]["done_reason"] == "length"
    assert chunks[-1]["eval_count"] == 4
    sent = bed.state.bodies("/v1/chat/completions")[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 4 and sent["temperature"] == 0 and sent["seed"] == 1
    assert "mirostat" not in sent and "tfs_z" not in sent and "tools" not in sent


async def test_chat_not_streamed_aggregates(make_bed: MakeBed) -> None:
    bed = await make_bed()
    streamed = await bed.lines("/api/chat", {
        "model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": True})
    resp = await bed.post("/api/chat", {
        "model": "fake:latest", "messages": [{"role": "user", "content": "x"}],
        "stream": False, "tools": []})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    doc = await resp.json()
    assert doc["model"] == "fake:latest"
    assert doc["message"]["content"] == "".join(c["message"]["content"] for c in streamed[2])
    assert doc["done_reason"] == "stop"
    check_final(doc)
    assert "tools" not in bed.state.bodies("/v1/chat/completions")[-1]


async def test_generate_stream_and_raw(make_bed: MakeBed) -> None:
    bed = await make_bed()
    status, _, chunks = await bed.lines("/api/generate", {
        "model": "FAKE", "prompt": "why is the sky blue", "system": "be brief"})
    assert status == 200
    assert chunks[-1]["done"] and "response" in chunks[-1]
    check_final(chunks[-1])
    sent = bed.state.bodies("/v1/chat/completions")[-1]
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    status, _, chunks = await bed.lines("/api/generate", {
        "model": "fake", "prompt": "raw text", "raw": True, "options": {"num_predict": -1}})
    assert status == 200
    raw = bed.state.bodies("/v1/completions")[-1]
    # "until stop or the context ends": the upstream's max_model_len (null would be 16)
    assert raw["prompt"] == "raw text" and raw["max_tokens"] == 2048


async def test_raw_and_suffix_without_num_predict_run_past_16_tokens(make_bed: MakeBed
                                                                     ) -> None:
    # vLLM's /v1/completions stops at 16 tokens unless told max_tokens (the fake does too):
    # vllama reads the upstream's max_model_len from its /v1/models, once.
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=40, max_model_len=1000),
                         fim_template="<pre>{prompt}<suf>{suffix}<mid>")
    for body in ({"prompt": "raw text", "raw": True}, {"prompt": "def f(", "suffix": "}"},
                 {"prompt": "raw", "raw": True, "options": {"num_predict": 0}}):
        resp = await bed.post("/api/generate", {"model": "fake", "stream": False, **body})
        doc = await resp.json()
        assert resp.status == 200 and doc["eval_count"] == 40, doc
        assert doc["done_reason"] == "stop"
        assert bed.state.bodies("/v1/completions")[-1]["max_tokens"] == 1000
    models = [r for r in bed.state.requests if r.path == "/v1/models"]
    assert len(models) == 1
    # more than the context is vLLM's 400; clamped, it runs until the context ends
    resp = await bed.post("/api/generate", {"model": "fake", "prompt": "x", "raw": True,
                                            "stream": False, "options": {"num_predict": 5000}})
    assert resp.status == 200
    assert bed.state.bodies("/v1/completions")[-1]["max_tokens"] == 1000


async def test_load_and_unload_replies(make_bed: MakeBed) -> None:
    bed = await make_bed()
    for path, body, reason in (
        ("/api/generate", {"model": "fake"}, "load"),
        ("/api/generate", {"model": "fake", "keep_alive": 0}, "unload"),
        ("/api/generate", {"model": "fake", "prompt": "", "keep_alive": "0s"}, "unload"),
        ("/api/chat", {"model": "fake", "messages": []}, "load"),
        ("/api/chat", {"model": "fake", "keep_alive": 0.0}, "unload"),
    ):
        resp = await bed.post(path, body)
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        doc = await resp.json()
        assert doc["done"] is True and doc["done_reason"] == reason, (path, body)
    assert not bed.state.requests  # nothing went upstream


async def test_tool_calls_complete_on_final_chunk(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], tool_call=True),
                         capabilities=("completion", "tools"))
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}, "required": ["city"]}}}]
    status, _, chunks = await bed.lines("/api/chat", {
        "model": "fake", "messages": [{"role": "user", "content": "weather in Tokyo"}],
        "tools": tools})
    assert status == 200
    final = chunks[-1]
    assert final["done_reason"] == "stop"
    calls = final["message"]["tool_calls"]
    assert calls[0]["function"]["name"] == "get_weather"
    assert isinstance(calls[0]["function"]["arguments"], dict)
    assert all("tool_calls" not in c["message"] for c in chunks[:-1])


async def test_thinking(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], reasoning=True),
                         capabilities=("completion", "thinking"))
    _, _, chunks = await bed.lines("/api/chat", {
        "model": "fake", "messages": [{"role": "user", "content": "2+2?"}]})
    assert any(c["message"].get("thinking") for c in chunks)
    sent = bed.state.bodies("/v1/chat/completions")[-1]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    _, _, chunks = await bed.lines("/api/chat", {
        "model": "fake", "messages": [{"role": "user", "content": "2+2?"}], "think": False})
    assert not any(c["message"].get("thinking") for c in chunks)


async def test_ollama_error_texts(make_bed: MakeBed) -> None:
    bed = await make_bed()
    cases = [
        ("/api/generate", b"", 400, "missing request body"),
        ("/api/generate", b"{bad", 400, None),
        ("/api/generate", b'{"model": ""}', 404, "model '' not found"),
        ("/api/chat", b'{"model": ""}', 400, "model is required"),
        ("/api/generate", b'{"model": "nope", "prompt": "x"}', 404, "model 'nope' not found"),
        ("/api/chat", b'{"model": "nope"}', 404, "model 'nope' not found"),
        ("/api/embed", b'{"model": "nope", "input": "x"}', 404,
         'model "nope" not found, try pulling it first'),
        ("/api/embeddings", b'{"model": "nope", "prompt": "x"}', 404,
         'model "nope" not found, try pulling it first'),
        ("/api/embeddings", b'{"model": ""}', 400, "model is required"),
        ("/api/show", b'{"model": "nope"}', 404, "model 'nope:latest' not found"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "keep_alive": "10"}', 400,
         'time: missing unit in duration "10"'),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "think": true}', 400,
         '"fake" does not support thinking'),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "raw": true, "system": "s"}', 400,
         "raw mode does not support template, system, or context"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "options": {"num_predict": "a"}}',
         500, 'option "num_predict" must be of type integer'),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "top_logprobs": 30}', 400,
         "top_logprobs must be between 0 and 20"),
        ("/api/chat", b'{"model": "fake", "messages": [{"role": "user"}], "tools": '
         b'[{"type": "function", "function": {"name": "f"}}]}', 400,
         "registry.ollama.ai/library/fake:latest does not support tools"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "suffix": "y"}', 400,
         "registry.ollama.ai/library/fake:latest does not support insert"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "format": "yaml"}', 400, None),
    ]
    for path, body, status, text in cases:
        resp = await bed.client.post(path, data=body)
        assert resp.status == status, (path, body, await resp.text())
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        doc = await resp.json()
        assert isinstance(doc["error"], str) and doc["error"]
        if text is not None:
            assert doc["error"] == text, (path, body)
    assert not bed.state.bodies("/v1/chat/completions")


async def test_early_upstream_error_keeps_status(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], fail_status=429))
    resp = await bed.post("/api/chat", {"model": "fake", "messages": [
        {"role": "user", "content": "x"}]})
    assert resp.status == 429
    assert "error" in await resp.json()


async def test_stream_cut_half_way_ends_with_error_line(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=10, drop_after=4))
    status, _, chunks = await bed.lines("/api/chat", {"model": "fake", "messages": [
        {"role": "user", "content": "x"}]})
    assert status == 200
    assert chunks[-1].keys() == {"error"}
    assert "unexpectedly stopped" in chunks[-1]["error"]
    assert any(c.get("message", {}).get("content") for c in chunks[:-1])


async def test_error_event_mid_stream(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=10, error_after=3))
    status, _, chunks = await bed.lines("/api/generate", {"model": "fake", "prompt": "x"})
    assert status == 200
    assert "error" in chunks[-1] and len(chunks) >= 2


async def test_slow_upstream_streams_as_it_arrives(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=3, token_delay=0.2))
    resp = await bed.client.post("/api/chat", data=msgspec.json.encode({
        "model": "fake", "messages": [{"role": "user", "content": "x"}]}))
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readline(), 5)
    assert msgspec.json.decode(first)["done"] is False
    assert bed.state.streams_open == 1  # the first line arrived while upstream still streams
    rest = await asyncio.wait_for(resp.read(), 10)
    assert rest.count(b"\n") == 3


async def test_client_disconnect_cancels_upstream(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], tokens=100, stall_after=2))
    resp = await bed.client.post("/api/chat", data=msgspec.json.encode({
        "model": "fake", "messages": [{"role": "user", "content": "x"}]}))
    assert resp.status == 200
    await asyncio.wait_for(resp.content.readline(), 5)
    await bed.state.wait_for(lambda s: s.streams_open == 1)
    resp.close()  # the client goes away while the upstream stalls
    await bed.state.wait_for(lambda s: s.streams_closed_early == 1 and s.running == 0,
                             timeout=10)


async def test_request_id_forwarded(make_bed: MakeBed) -> None:
    bed = await make_bed()
    resp = await bed.client.post("/api/generate", headers={"X-Request-Id": "rid-7"},
                                 data=b'{"model": "fake", "prompt": "x", "stream": false}')
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "rid-7"
    upstream_headers = {k.lower(): v for k, v in bed.state.requests[-1].headers.items()}
    assert upstream_headers["x-request-id"] == "rid-7"


async def test_curl_form_content_type_accepted(make_bed: MakeBed) -> None:
    bed = await make_bed()
    resp = await bed.client.post(
        "/api/generate", data=b'{"model": "fake", "prompt": "x", "stream": false}',
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    assert (await resp.json())["done"] is True
