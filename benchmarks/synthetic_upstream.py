"""A synthetic OpenAI server for benchmarks: streams fixed chunks as fast as it can (or with a
fixed delay per token), in vLLM's wire shape, so a gateway in front of it is the bottleneck.

    python benchmarks/synthetic_upstream.py --port P [--token-delay S] [--batch K]

Frames are pre-encoded once per (model, endpoint); with no delay, K frames go out per write so
the upstream spends little CPU per frame and the gateway's per-frame cost dominates (the gateway
still sees and must translate every frame). Each reply has exactly `max_tokens` content frames
(default --tokens), then the finish frame, a usage frame and `data: [DONE]`, like vLLM with
`stream_options.include_usage`.

GET /stats gives {"open_streams", "started", "finished"}: the benchmark runner uses it to know
when N slow streams are all open before it samples the gateway's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web


@dataclass
class Settings:
    tokens: int = 64
    token_delay: float = 0.0
    batch: int = 16


@dataclass
class Counters:
    open_streams: int = 0
    started: int = 0
    finished: int = 0


SETTINGS = web.AppKey("settings", Settings)
COUNTERS = web.AppKey("counters", Counters)


class _Request(msgspec.Struct):
    model: str = "synthetic"
    stream: bool = False
    max_tokens: int | None = None
    stream_options: dict[str, Any] | None = None


def _sse(obj: Any) -> bytes:
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


def _chunk(model: str, chat: bool, text: str | None, finish: str | None) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": "cmpl-synthetic", "object": obj, "created": 1700000000, "model": model,
            "choices": [choice]}


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}


async def completions(request: web.Request) -> web.StreamResponse:
    settings, counters = request.app[SETTINGS], request.app[COUNTERS]
    chat = request.path.endswith("/chat/completions")
    req = msgspec.json.decode(await request.read(), type=_Request)
    tokens = req.max_tokens if req.max_tokens is not None else settings.tokens
    if not req.stream:
        if chat:
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None,
                                      "message": {"role": "assistant",
                                                  "content": " tok" * tokens}}
        else:
            choice = {"index": 0, "finish_reason": "length", "logprobs": None,
                      "text": " tok" * tokens}
        body = {"id": "cmpl-synthetic", "object": "chat.completion" if chat else
                "text_completion", "created": 1700000000, "model": req.model,
                "choices": [choice], "usage": _usage(tokens)}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    counters.started += 1
    counters.open_streams += 1
    try:
        await resp.prepare(request)
        if chat:
            head = _chunk(req.model, chat, None, None)
            head["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            await resp.write(_sse(head))
        frame = _sse(_chunk(req.model, chat, " tok", None))
        tail = _sse(_chunk(req.model, chat, "", "length"))
        if req.stream_options and req.stream_options.get("include_usage"):
            usage = {"id": "cmpl-synthetic", "object": "chat.completion.chunk",
                     "created": 1700000000, "model": req.model, "choices": [],
                     "usage": _usage(tokens)}
            tail += _sse(usage)
        tail += b"data: [DONE]\n\n"
        if settings.token_delay > 0:
            for _ in range(tokens):
                await asyncio.sleep(settings.token_delay)
                await resp.write(frame)
        else:
            batch = frame * settings.batch
            full, rest = divmod(tokens, settings.batch)
            for _ in range(full):
                await resp.write(batch)
            if rest:
                await resp.write(frame * rest)
        await resp.write(tail)
        await resp.write_eof()
        counters.finished += 1
    finally:
        counters.open_streams -= 1
    return resp


async def models(request: web.Request) -> web.Response:
    data = [{"id": "synthetic", "object": "model", "created": 1700000000, "owned_by": "vllm",
             "root": "synthetic", "max_model_len": 2048}]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.Response()


async def stats(request: web.Request) -> web.Response:
    c = request.app[COUNTERS]
    return web.json_response({"open_streams": c.open_streams, "started": c.started,
                              "finished": c.finished})


def make_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[COUNTERS] = Counters()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="synthetic OpenAI upstream for benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64, help="when max_tokens is unset")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--batch", type=int, default=16, help="frames per write, no delay")
    args = parser.parse_args(argv)
    app = make_app(Settings(tokens=args.tokens, token_delay=args.token_delay,
                            batch=max(1, args.batch)))
    print(f"synthetic upstream on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None,
                backlog=4096)
    return 0


if __name__ == "__main__":
    sys.exit(main())
