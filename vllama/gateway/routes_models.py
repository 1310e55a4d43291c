"""Model management routes: /api/pull, /api/push, /api/delete, /api/copy, /api/create, over the
model store. Bodies are decoded by `vllama.translate` (Go's decoder texts, as on every other
endpoint); errors are vllama errors with Ollama's texts (API reference §3.11-3.15, §7), turned
into `{"error": ...}` bodies by the middleware. Streaming replies are NDJSON with no blank
lines; an error after the first line becomes a final `{"error": ...}` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

from vllama.errors import BadRequest, NotFound, VllamaError
from vllama.gateway.keys import SERVICES
from vllama.gateway.seams import StoreView
from vllama.models.names import InvalidName, display_name
from vllama.translate.decode import (
    decode_copy,
    decode_create,
    decode_delete,
    decode_pull,
    decode_push,
)
from vllama.translate.models import Endpoint, invalid_name, model_required, not_found

logger = logging.getLogger("vllama.models")

NDJSON = "application/x-ndjson"
PUSH_UNSUPPORTED = ("push is not supported: vllama serves models from the Hugging Face cache; "
                    "upload with huggingface-cli")
CREATE_UNSUPPORTED = ("creating a model from files, adapters or quantization is not supported: "
                      "vllama serves safetensors models from the Hugging Face cache; create an "
                      'alias with "from" set to an existing model (plus system, parameters or '
                      "template)")

_encode = msgspec.json.Encoder().encode


def _store(request: web.Request) -> StoreView:
    return request.app[SERVICES].store


def _named(model: str | None, endpoint: Endpoint) -> str:
    if not model:
        raise model_required(endpoint)
    return model


async def _ndjson(request: web.Request, first: dict[str, Any],
                  rest: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    """Stream `first` then `rest`; headers go out with the first line, so a failure after it
    can only be a final error line."""
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(request)
    await response.write(_encode(first) + b"\n")
    try:
        async for item in rest:
            await response.write(_encode(item) + b"\n")
    except VllamaError as exc:
        await response.write(_encode({"error": exc.message}) + b"\n")
    except ConnectionResetError:
        raise  # the client went away; aclosing() in the caller stops the work
    except Exception as exc:  # headers are out: a final line is the only way to say it
        logger.exception("stream failed after the first line")
        await response.write(_encode({"error": f"internal error: {exc}"}) + b"\n")
    await response.write_eof()
    return response


async def pull(request: web.Request) -> web.StreamResponse:
    req = decode_pull(await request.read())
    name = _named(req.model, "pull")
    async with contextlib.aclosing(_store(request).pull(name)) as progress:
        try:
            first = await anext(progress)
        except InvalidName:
            raise invalid_name("pull", name) from None
        if req.stream is not False:
            return await _ndjson(request, first, progress)
        last = first
        async for item in progress:  # errors keep their status (not-found pulls are 500)
            last = item
    return web.json_response(last)


async def push(request: web.Request) -> web.Response:
    _named(decode_push(await request.read()).model, "push")
    raise BadRequest(PUSH_UNSUPPORTED)


async def delete(request: web.Request) -> web.Response:
    req = decode_delete(await request.read())
    name = _named(req.model, "delete")
    scheduler = request.app[SERVICES].scheduler
    # What engines load or serve now: their weights are not deleted under them.
    running = [s.source for s in scheduler.snapshot()] if scheduler is not None else []
    try:
        await asyncio.to_thread(functools.partial(_store(request).rm, name, running=running))
    except InvalidName:
        raise invalid_name("delete", name) from None
    except NotFound:
        raise not_found("delete", name) from None
    return web.Response(status=200)  # empty body; the Python client checks for exactly 200


async def copy(request: web.Request) -> web.Response:
    req = decode_copy(await request.read())
    store = _store(request)
    for role, value in (("source", req.source), ("destination", req.destination)):
        if not value or not await asyncio.to_thread(_resolvable_syntax, store, value):
            raise invalid_name("copy", value or "", field=role)
    try:
        await asyncio.to_thread(store.cp, req.source or "", req.destination or "")
    except InvalidName:
        raise invalid_name("copy", req.destination or "", field="destination") from None
    return web.Response(status=200)


def _resolvable_syntax(store: StoreView, name: str) -> bool:
    try:
        store.resolve(name)
    except InvalidName:
        return False
    return True


async def create(request: web.Request) -> web.StreamResponse:
    req = decode_create(await request.read())
    name = _named(req.model, "create")
    if req.files or req.adapters or req.quantize or req.quantization or not req.from_:
        raise BadRequest(CREATE_UNSUPPORTED)
    try:
        await asyncio.to_thread(_store(request).create, name, req.from_,
                                system=req.system or "", parameters=req.parameters,
                                template=req.template or "")
    except InvalidName:
        raise invalid_name("create", name) from None
    steps = [{"status": "using existing model " + display_name(req.from_)},
             {"status": "writing manifest"}, {"status": "success"}]
    if req.stream is False:
        return web.json_response(steps[-1])

    async def rest() -> AsyncIterator[dict[str, Any]]:
        for step in steps[1:]:
            yield step

    return await _ndjson(request, steps[0], rest())


ROUTES = (("POST", "/api/pull", pull), ("POST", "/api/push", push),
          ("DELETE", "/api/delete", delete), ("POST", "/api/copy", copy),
          ("POST", "/api/create", create))
