"""OpenAI ``/v1/*`` pass-through: routed by model to the right upstream, bodies and SSE relayed
as bytes (not re-encoded). Only the ``model`` field is rewritten, and only when the name a
client uses differs from the id the upstream knows."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from vllama.errors import BadRequest, EngineDied, NotFound
from vllama.gateway.keys import SERVICES
from vllama.gateway.targets import Target, route, upstream_call
from vllama.translate.gojson import go_depth_error

_encode = msgspec.json.Encoder().encode


class _ModelOnly(msgspec.Struct):
    model: str = ""


_decode_model = msgspec.json.Decoder(_ModelOnly).decode

# Hop-by-hop and length headers are the gateway's to set, not the upstream's.
_DROP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                   "content-encoding", "server", "date"})


async def _target(request: web.Request, body: bytes) -> tuple[Target, bytes]:
    too_deep = go_depth_error(body)  # before msgspec, which would exhaust the stack
    if too_deep is not None:
        raise BadRequest(f"invalid request body: {too_deep}")
    try:
        requested = _decode_model(body).model if body else ""
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"invalid request body: {exc}") from None
    if not requested:
        raise BadRequest("you must provide a model parameter")
    try:
        target, _ = await route(request, "generate", requested)
    except (BadRequest, NotFound):
        raise NotFound(f"model '{requested}' not found") from None
    if requested != target.upstream_model:
        doc = msgspec.json.decode(body)
        doc["model"] = target.upstream_model
        body = _encode(doc)
    return target, body


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    target, body = await _target(request, body)
    async with upstream_call(request, target, request.path, body) as upstream:
        out = web.StreamResponse(status=upstream.status)
        for key, value in upstream.headers.items():
            if key.lower() not in _DROP:
                out.headers[key] = value
        await out.prepare(request)
        sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        try:
            async for chunk in upstream.chunks():
                await out.write(chunk)
        except EngineDied as exc:
            if not sse:
                raise
            # Headers are gone; an SSE client still learns why the stream ended.
            msg = _encode({"error": {"message": exc.message, "type": "api_error",
                                     "code": 500}})
            await out.write(b"data: " + msg + b"\n\n")
        await out.write_eof()
        return out


def _model_entry(model_id: str, created: float) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": "vllama"}


async def list_models(request: web.Request) -> web.Response:
    """Every model /api/tags lists; a configured model under the name it was configured with."""
    store = request.app[SERVICES].store

    def entries() -> list[dict[str, object]]:
        return [_model_entry(m.model.name if m.kind == "served" else m.name, m.modified)
                for m in store.list_models()]

    data = await asyncio.to_thread(entries)
    return web.Response(body=_encode({"object": "list", "data": data}),
                        content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    try:
        target, _ = await route(request, "generate", name)
    except (BadRequest, NotFound):
        raise NotFound(f"model '{name}' not found") from None
    created = target.found.modified if target.found is not None else target.created
    return web.Response(body=_encode(_model_entry(target.name, created)),
                        content_type="application/json")


ROUTES = (*(("POST", path, relay) for path in ("/v1/chat/completions", "/v1/completions",
                                                  "/v1/embeddings", "/v1/responses")),
          ("GET", "/v1/models", list_models), ("GET", "/v1/models/{model:.+}", get_model))


