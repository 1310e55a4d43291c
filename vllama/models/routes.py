"""aiohttp handlers for model management: /api/pull, /api/delete, /api/copy, /api/create,
/api/push, and helpers the gateway's /api/tags and /api/show use for local models.

Handlers take the ModelStore from `request.app[MODEL_STORE]` and raise vllama.errors with
Ollama's texts (API reference §3.11-3.15, §7); the gateway's error middleware turns them into
`{"error": ...}` bodies. Streaming replies are NDJSON with no blank lines; an error after the
first line becomes a final `{"error": ...}` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from vllama.errors import BadRequest, NotFound, VllamaError
from vllama.models.names import InvalidName, display_name
from vllama.models.store import ModelStore

logger = logging.getLogger("vllama.models")

MODEL_STORE = web.AppKey("vllama_model_store", ModelStore)

NDJSON = "application/x-ndjson"
PUSH_UNSUPPORTED = ("push is not supported: vllama serves models from the Hugging Face cache; "
                    "upload with huggingface-cli")
CREATE_UNSUPPORTED = ("creating a model from files, adapters or quantization is not supported: "
                      "vllama serves safetensors models from the Hugging Face cache; create an "
                      'alias with "from" set to an existing model (plus system, parameters or '
                      "template)")

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode


class _Named(msgspec.Struct, kw_only=True):
    model: str = ""
    name: str = ""  # deprecated spelling several clients (ollama CLI, JS) still send

    def target(self) -> str:
        return self.model or self.name


class PullRequest(_Named, kw_only=True):
    insecure: bool = False
    stream: bool | None = None


class PushRequest(PullRequest, kw_only=True):
    pass


class DeleteRequest(_Named, kw_only=True):
    pass


class CopyRequest(msgspec.Struct, kw_only=True):
    source: str = ""
    destination: str = ""


class ShowRequest(_Named, kw_only=True):
    verbose: bool = False
    system: str = ""


class CreateRequest(_Named, kw_only=True):
    from_: str = msgspec.field(default="", name="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    quantize: str = ""
    quantization: str = ""
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] | None = None
    stream: bool | None = None


async def decode(request: web.Request, kind: type[T]) -> T:
    body = await request.read()
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise BadRequest(str(exc)) from exc


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


async def pull_handler(request: web.Request) -> web.StreamResponse:
    req = await decode(request, PullRequest)
    name = req.target()
    if not name:
        raise BadRequest("model is required")
    store = request.app[MODEL_STORE]
    async with contextlib.aclosing(store.pull(name)) as progress:
        try:
            first = await anext(progress)
        except InvalidName as exc:
            raise BadRequest("invalid model name") from exc
        if req.stream is not False:
            return await _ndjson(request, first, progress)
        last = first
        async for item in progress:  # errors keep their status (not-found pulls are 500)
            last = item
    return web.json_response(last)


async def push_handler(request: web.Request) -> web.Response:
    req = await decode(request, PushRequest)
    if not req.target():
        raise BadRequest("model is required")
    raise BadRequest(PUSH_UNSUPPORTED)


async def delete_handler(request: web.Request) -> web.Response:
    req = await decode(request, DeleteRequest)
    name = req.target()
    if not name:
        raise BadRequest("model is required")
    store = request.app[MODEL_STORE]
    try:
        await asyncio.to_thread(store.rm, name)
    except InvalidName as exc:
        raise BadRequest(f'name "{name}" is invalid') from exc
    except NotFound as exc:
        raise NotFound(f"model '{name}' not found") from exc
    return web.Response(status=200)  # empty body; the Python client checks for exactly 200


async def copy_handler(request: web.Request) -> web.Response:
    req = await decode(request, CopyRequest)
    store = request.app[MODEL_STORE]
    for role, value in (("source", req.source), ("destination", req.destination)):
        if not value or not _valid(store, value):
            raise BadRequest(f'{role} "{value}" is invalid')
    try:
        await asyncio.to_thread(store.cp, req.source, req.destination)
    except InvalidName as exc:
        raise BadRequest(f'destination "{req.destination}" is invalid') from exc
    return web.Response(status=200)


def _valid(store: ModelStore, name: str) -> bool:
    try:
        store.resolve(name)
    except InvalidName:
        return False
    return True


async def create_handler(request: web.Request) -> web.StreamResponse:
    req = await decode(request, CreateRequest)
    name = req.target()
    if not name:
        raise BadRequest("model is required")
    if req.files or req.adapters or req.quantize or req.quantization:
        raise BadRequest(CREATE_UNSUPPORTED)
    if not req.from_:
        raise BadRequest(CREATE_UNSUPPORTED)
    store = request.app[MODEL_STORE]
    try:
        await asyncio.to_thread(store.create, name, req.from_, system=req.system,
                                parameters=req.parameters, template=req.template)
    except InvalidName as exc:
        raise BadRequest("invalid model name") from exc
    steps = [{"status": "using existing model " + display_name(req.from_)},
             {"status": "writing manifest"}, {"status": "success"}]
    if req.stream is False:
        return web.json_response(steps[-1])

    async def rest() -> AsyncIterator[dict[str, Any]]:
        for step in steps[1:]:
            yield step

    return await _ndjson(request, steps[0], rest())


# ----------------------------------------------------------------------------- tags / show


async def local_tags(store: ModelStore) -> list[dict[str, Any]]:
    """`/api/tags` elements for every complete local model, newest first."""
    models = await asyncio.to_thread(store.list_models)
    out: list[dict[str, Any]] = msgspec.to_builtins([m.tag_entry() for m in models])
    return out


async def local_show(store: ModelStore, name: str) -> dict[str, Any] | None:
    """`/api/show` body for a local model, or None when `name` is no local model (the gateway
    then tries served/remote models or answers 404). Raises BadRequest for an invalid name."""
    try:
        found = await asyncio.to_thread(store.find, name)
    except InvalidName as exc:
        raise BadRequest("invalid model name") from exc
    if found is None:
        return None
    from vllama.models.store import show_body

    return await asyncio.to_thread(show_body, found, store.overrides_for(name))


async def tags_handler(request: web.Request) -> web.Response:
    """Local models only; the gateway merges served models into its own handler."""
    return web.json_response({"models": await local_tags(request.app[MODEL_STORE])},
                             dumps=lambda o: _encode(o).decode())


async def show_handler(request: web.Request) -> web.Response:
    req = await decode(request, ShowRequest)
    name = req.target()
    if not name:
        raise BadRequest("model is required")
    body = await local_show(request.app[MODEL_STORE], name)
    if body is None:
        raise NotFound(f"model '{display_name(name)}' not found")
    if req.system:
        body["system"] = req.system
    return web.json_response(body, dumps=lambda o: _encode(o).decode())


def add_routes(app: web.Application, *, tags_and_show: bool = False) -> None:
    """Register the model-management routes (and, for tests or a gateway without served
    models, local-only /api/tags and /api/show)."""
    app.router.add_post("/api/pull", pull_handler)
    app.router.add_post("/api/push", push_handler)
    app.router.add_delete("/api/delete", delete_handler)
    app.router.add_post("/api/copy", copy_handler)
    app.router.add_post("/api/create", create_handler)
    if tags_and_show:
        app.router.add_get("/api/tags", tags_handler)
        app.router.add_post("/api/show", show_handler)
