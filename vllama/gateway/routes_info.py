"""Ollama's model information routes: /api/tags, /api/ps, /api/show (and /api/status,
/api/experimental/model-recommendations). Built from the routing table, the engines and,
when present, the local model store."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web

from vllama.errors import NotFound
from vllama.gateway.keys import MODEL, SERVICES
from vllama.gateway.targets import ROUTER, Target
from vllama.models.routes import local_show, local_tags
from vllama.supervisor.procs import group_members
from vllama.translate.decode import decode_show
from vllama.translate.models import (
    check_model_name,
    details_from_config,
    format_parameters,
    model_info_from_config,
    tag_name,
)
from vllama.translate.values import rfc3339_local
from vllama.wire.ollama import (
    ListModel,
    ModelDetails,
    ProcessModel,
    ProcessResponse,
    ShowResponse,
)

_encode = msgspec.json.Encoder().encode
# Ollama's "keep forever" is now + MaxInt64 ns; the CLI prints "Forever" past 20 years.
_FOREVER_NS = 2**63 - 1


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(doc), content_type="application/json",
                        charset="utf-8")


def _details(target: Target) -> ModelDetails:
    return details_from_config(target.hf_config or {}, max_model_len=target.context_length or None)


def _list_entry(target: Target) -> ListModel:
    name = tag_name(target.name)
    return ListModel(name=name, model=name,
                     modified_at=rfc3339_local(int(target.created * 1e9)),
                     size=target.weights_size, digest=target.digest, details=_details(target),
                     capabilities=target.caps.names())


async def tags(request: web.Request) -> web.Response:
    """Served models first-class, plus every complete model in the local store."""
    entries: list[dict[str, Any]] = msgspec.to_builtins(
        [_list_entry(t) for t in request.app[ROUTER].targets])
    served = {e["name"].lower() for e in entries}
    store = request.app[SERVICES].store
    if store is not None:
        for item in await local_tags(store):
            if item["name"].lower() not in served:
                entries.append(item)
    entries.sort(key=lambda e: str(e["modified_at"]), reverse=True)
    return _json({"models": entries})


def rss(pids: Iterable[int]) -> int:
    """Resident memory of these processes (the CPU engine's "size" for /api/ps: weights and
    KV cache live in RAM there)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * page
        except (OSError, ValueError, IndexError):  # exited while we looked
            continue
    return total


def _gpu_memory(request: web.Request, pids: Iterable[int]) -> int:
    gpu = request.app[SERVICES].gpu
    if gpu is None:
        return 0
    wanted = set(pids)
    used = 0
    for device in getattr(gpu.snapshot, "gpus", ()) or ():
        for proc in device.processes:
            if proc.pid in wanted and proc.used_memory:
                used += proc.used_memory
    return used


async def ps(request: web.Request) -> web.Response:
    models = []
    expires = rfc3339_local(time.time_ns() + _FOREVER_NS)
    for target in request.app[ROUTER].targets:
        engine = target.engine
        if target.model.is_local and (engine is None or not engine.ready):
            continue  # not loaded: /api/ps tells the truth
        size = vram = target.weights_size
        pid = engine.status().pid if engine is not None else None
        if pid:  # the engine's process group, read once: GPU memory, else resident memory
            members = group_members(pid)
            vram = _gpu_memory(request, members)
            size = vram or rss(members)
        name = tag_name(target.name)
        models.append(ProcessModel(name=name, model=name, size=size, digest=target.digest,
                                   details=_details(target), expires_at=expires,
                                   size_vram=vram, context_length=target.context_length))
    return _json(ProcessResponse(models=models))


async def show(request: web.Request) -> web.Response:
    req = decode_show(await request.read())
    router = request.app[ROUTER]
    store = request.app[SERVICES].store
    name = req.model or ""
    target = router.resolve(name) if name else None
    if target is None and name and store is not None:
        local = await local_show(store, name)
        if local is not None:  # a pulled model (served or not): the store describes it
            request[MODEL] = name
            return _json(local)
    if target is None:
        check_model_name("show", name, [t.name for t in router.targets])
        raise NotFound(f"model '{name}' not found")  # pragma: no cover
    request[MODEL] = target.name
    params = dict(target.model.parameters)
    if req.options:
        params.update(req.options)
    basename = target.model.source or target.upstream_model
    doc = ShowResponse(
        details=_details(target),
        model_info=model_info_from_config(target.hf_config or {}, target.context_length or None,
                                          basename=basename),
        modified_at=rfc3339_local(int(target.created * 1e9)),
        license=_license(target),
        modelfile=_modelfile(target, params, req.system or target.model.system),
        parameters=format_parameters(params),
        # A configured template is what this name shows (as a Modelfile TEMPLATE would); the
        # engine itself always renders with the model's chat template.
        template=target.model.template or target.chat_template or "{{ .Prompt }}",
        system=req.system or target.model.system,
        capabilities=target.caps.names(),
    )
    return _json(doc)


def _license(target: Target) -> str:
    if target.model_dir is None:
        return ""
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        try:
            return (target.model_dir / name).read_text()[:100_000]
        except OSError:
            continue
    return ""


def _modelfile(target: Target, params: dict[str, Any], system: str) -> str:
    lines = ['# Modelfile generated by "ollama show"', "# To build a new Modelfile based on "
             "this, replace FROM with:", f"# FROM {tag_name(target.name)}", "",
             f"FROM {target.model.source or target.model.upstream}"]
    if target.chat_template:
        lines.append(f'TEMPLATE """{target.chat_template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for line in format_parameters(params).splitlines():
        lines.append(f"PARAMETER {line}")
    return "\n".join(lines) + "\n"


async def status(request: web.Request) -> web.Response:
    return _json({"cloud": {"disabled": True, "source": "config"}})


async def recommendations(request: web.Request) -> web.Response:
    return _json({"recommendations": []})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/experimental/model-recommendations", recommendations)
