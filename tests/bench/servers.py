"""Tiny real loopback servers with exactly known replies, for testing `vllama bench` itself.

`Script` says what each reply looks like; `Log` records every request body in arrival order
so tests can check what the bench sent and in which order it drove the targets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web


@dataclass
class Script:
    tokens: int = 5  # text frames per streamed reply
    report_tokens: bool = True  # eval_count / usage present
    status: int = 200  # anything else: an error reply
    error_after: int | None = None  # stream this many text frames, then an error frame
    truncate_after: int | None = None  # stream this many text frames, then end the body
    blank_line: bool = False  # Ollama only: a forbidden blank line after the first frame
    split_writes: bool = False  # write frames byte by byte pairs to test line reassembly
    delay: float = 0.0  # seconds before each text frame


@dataclass
class Log:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # server names, shared between servers


SCRIPT = web.AppKey("script", Script)
LOG = web.AppKey("log", Log)
NAME = web.AppKey("name", str)


async def _write(resp: web.StreamResponse, data: bytes, split: bool) -> None:
    if not split:
        await resp.write(data)
        return
    for i in range(0, len(data), 2):
        await resp.write(data[i:i + 2])


async def _start(request: web.Request) -> tuple[Script, dict[str, Any]]:
    body = msgspec.json.decode(await request.read())
    request.app[LOG].bodies.append(body)
    request.app[LOG].order.append(request.app[NAME])
    return request.app[SCRIPT], body


async def ollama_chat(request: web.Request) -> web.StreamResponse:
    script, body = await _start(request)
    if script.status != 200:
        return web.json_response({"error": "scripted failure"}, status=script.status)
    usage: dict[str, Any] = {"eval_count": script.tokens} if script.report_tokens else {}
    base = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z"}
    generate = request.path == "/api/generate"

    def text(t: str) -> dict[str, Any]:
        return {"response": t} if generate else {"message": {"role": "assistant", "content": t}}

    if not body.get("stream", True):
        whole = {**base, **text("x" * script.tokens), "done": True, "done_reason": "length",
                 **usage}
        return web.json_response(whole)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    for i in range(script.tokens):
        if i == script.error_after:
            await resp.write(b'{"error":"scripted stream error"}\n')
            return resp
        if i == script.truncate_after:
            return resp
        if script.delay:
            await asyncio.sleep(script.delay)
        frame = {**base, **text("x"), "done": False}
        await _write(resp, msgspec.json.encode(frame) + b"\n", script.split_writes)
        if script.blank_line and i == 0:
            await resp.write(b"\n")
    final = {**base, **text(""), "done": True, "done_reason": "length", **usage}
    await _write(resp, msgspec.json.encode(final) + b"\n", script.split_writes)
    return resp


def _sse(obj: Any) -> bytes:
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


async def openai_chat(request: web.Request) -> web.StreamResponse:
    script, body = await _start(request)
    if script.status != 200:
        return web.json_response({"error": {"message": "scripted failure", "type": "x",
                                            "code": script.status}}, status=script.status)
    usage = {"prompt_tokens": 3, "completion_tokens": script.tokens, "total_tokens": 3}
    if not body.get("stream"):
        whole: dict[str, Any] = {"choices": [{"index": 0, "message": {
            "role": "assistant", "content": "x" * script.tokens}, "finish_reason": "length"}]}
        if script.report_tokens:
            whole["usage"] = usage
        return web.json_response(whole)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    # vLLM's first frame: the role with empty content (a frame, but not a text frame)
    await resp.write(_sse({"choices": [{"index": 0, "delta": {"role": "assistant",
                                                               "content": ""}}]}))
    await resp.write(b": keep-alive comment\n\n")
    for i in range(script.tokens):
        if i == script.error_after:
            await resp.write(_sse({"error": {"message": "scripted stream error"}}))
            return resp
        if i == script.truncate_after:
            return resp
        if script.delay:
            await asyncio.sleep(script.delay)
        frame = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
        await _write(resp, _sse(frame), script.split_writes)
    await resp.write(_sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
    if script.report_tokens:
        await resp.write(_sse({"choices": [], "usage": usage}))
    await resp.write(b"data: [DONE]\n\n")
    return resp


def make_app(api: str, name: str, script: Script, log: Log) -> web.Application:
    app = web.Application()
    app[SCRIPT] = script
    app[LOG] = log
    app[NAME] = name
    if api == "ollama":
        app.router.add_post("/api/chat", ollama_chat)
        app.router.add_post("/api/generate", ollama_chat)
    else:
        app.router.add_post("/v1/chat/completions", openai_chat)
    return app
