"""Model management routes, wired onto the local model store (vllama.models), plus the
pieces that need the routing table: a pull of a model that is already served succeeds at once
(`ollama run` and Open WebUI pull before they chat), and names the store knows (aliases made
by cp/create, pulled repos) resolve to the engine that serves them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec
from aiohttp import web

from vllama.errors import BadRequest, VllamaError
from vllama.gateway.keys import SERVICES
from vllama.gateway.targets import ROUTER, Target
from vllama.models import routes as store_routes
from vllama.models.names import InvalidName
from vllama.models.store import ModelStore, Overrides

NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Routed:
    target: Target
    overrides: Overrides | None


def _store(request: web.Request) -> ModelStore | None:
    store: ModelStore | None = request.app[SERVICES].store
    return store


async def resolve_via_store(request: web.Request, name: str) -> Routed | None:
    """A name the routing table does not know, looked up in the store: an alias (cp/create)
    or a pulled repo that a configured model serves. Raises BadRequest with how to serve it
    when the model is on disk but no engine serves it."""
    store = _store(request)
    if store is None or not name:
        return None
    try:
        resolved = await asyncio.to_thread(store.resolve, name)
    except InvalidName:
        return None
    if resolved is None:
        return None
    for target in request.app[ROUTER].targets:
        if target.model.source and target.model.source.lower() == resolved.source.lower():
            return Routed(target, store.overrides_for(name))
        if target.name.lower() == resolved.source.lower():  # an alias of a served name
            return Routed(target, store.overrides_for(name))
    found = await asyncio.to_thread(store.find, name)
    if found is not None:
        raise BadRequest(
            f"model '{name}' is downloaded but no engine serves it: add it to the config "
            f"([[models]] name = \"{name}\", source = \"{resolved.source}\") and run "
            "`systemctl reload vllama`, or start `vllama serve --model "
            f"{resolved.source}`")
    return None


async def pull(request: web.Request) -> web.StreamResponse:
    """A served model needs no download; anything else is pulled into the HF cache."""
    body = await request.read()
    try:
        req = (msgspec.json.decode(body, type=store_routes.PullRequest) if body.strip()
               else store_routes.PullRequest())
    except (msgspec.DecodeError, msgspec.ValidationError):
        req = store_routes.PullRequest()  # the store's handler reports what is wrong
    name = req.target()
    if name and request.app[ROUTER].resolve(name) is not None:
        if req.stream is False:
            return web.json_response({"status": "success"})
        out = web.StreamResponse(headers={"Content-Type": NDJSON})
        await out.prepare(request)
        await out.write(b'{"status":"pulling manifest"}\n{"status":"success"}\n')
        await out.write_eof()
        return out
    if _store(request) is None:
        raise VllamaError("pull model manifest: file does not exist", status=500)
    # request.read() caches the body, so the store's handler reads it again for free.
    return await store_routes.pull_handler(request)


async def _needs_store(request: web.Request) -> web.StreamResponse:
    raise BadRequest("model management is not available: vllama runs without a model store")


def add_routes(app: web.Application, store: ModelStore | None) -> None:
    app.router.add_post("/api/pull", pull)
    if store is None:
        for method, path in (("POST", "/api/push"), ("DELETE", "/api/delete"),
                             ("POST", "/api/copy"), ("POST", "/api/create")):
            app.router.add_route(method, path, _needs_store)
        return
    app[store_routes.MODEL_STORE] = store
    app.router.add_post("/api/push", store_routes.push_handler)
    app.router.add_delete("/api/delete", store_routes.delete_handler)
    app.router.add_post("/api/copy", store_routes.copy_handler)
    app.router.add_post("/api/create", store_routes.create_handler)

