"""A fake vLLM production-stack router: one OpenAI endpoint in front of several engines.

What vllama meets when an `[[upstreams]]` table points at a production-stack (or llm-d)
gateway, as its router behaves (vllm-project/production-stack `src/vllm_router`):
- `GET /v1/models` aggregates the backends' models, each once, as a ModelCard without
  `max_model_len` (`id`, `object`, `created`, `owned_by`, `parent`);
- `GET /health` answers `{"status": "healthy"}` about the router's own components, not the
  backends;
- `POST /v1/*` goes to a backend serving the body's `model` (round-robin), relayed as it
  arrives; a model no backend serves is a 400.

`backends` maps a backend base URL (without /v1) to the model ids it serves; a test may
change it at any time (an engine joining or leaving the stack).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import msgspec
from aiohttp import web


@dataclass
class RouterScript:
    backends: dict[str, list[str]] = field(default_factory=dict)
    healthy: bool = True
    garbage: bool = False  # /v1/models answers something that is not a model list
    routed: list[tuple[str, str]] = field(default_factory=list)  # (model, backend) per request


SCRIPT = web.AppKey("router_script", RouterScript)
SESSION = web.AppKey("router_session", aiohttp.ClientSession)
_turn = itertools.count()


async def models(request: web.Request) -> web.Response:
    script = request.app[SCRIPT]
    if script.garbage:
        return web.Response(text="<html><body>upstream connect error</body></html>",
                            content_type="text/html")
    seen: list[str] = []
    for ids in script.backends.values():
        seen += [m for m in ids if m not in seen]
    cards = [{"id": m, "object": "model", "created": int(time.time()), "owned_by": "vllm",
              "parent": None} for m in seen]
    return web.json_response({"object": "list", "data": cards})


async def health(request: web.Request) -> web.Response:
    if not request.app[SCRIPT].healthy:
        return web.json_response({"status": "Service discovery module is down."}, status=503)
    return web.json_response({"status": "healthy"})


async def relay(request: web.Request) -> web.StreamResponse:
    script = request.app[SCRIPT]
    body = await request.read()
    model = msgspec.json.decode(body).get("model", "")
    serving = [url for url, ids in script.backends.items() if model in ids]
    if not serving:
        return web.json_response({"error": f"Model {model} not found or vLLM engine is sleeping."},
                                 status=400)
    backend = serving[next(_turn) % len(serving)]
    script.routed.append((model, backend))
    headers = {"Content-Type": "application/json"}
    auth = request.headers.get("Authorization")
    if auth:
        headers["Authorization"] = auth
    async with request.app[SESSION].post(backend + request.path, data=body,
                                         headers=headers) as upstream:
        out = web.StreamResponse(status=upstream.status)
        out.content_type = upstream.content_type
        await out.prepare(request)
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


def make_app(script: RouterScript) -> web.Application:
    app = web.Application()
    app[SCRIPT] = script

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, relay)
    return app


@asynccontextmanager
async def fake_router(script: RouterScript) -> AsyncIterator[str]:
    """Serve the fake router on a loopback port; yields its base URL (without /v1)."""
    runner = web.AppRunner(make_app(script), shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
