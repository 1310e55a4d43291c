"""Ollama's model information routes: /api/tags, /api/ps, /api/show (and /api/status,
/api/experimental/model-recommendations). What a model is comes from the model store, so a
model is described the same way whether an engine serves it or it is only on disk; /api/ps
adds what the running engines hold."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web

from vllama.gateway.keys import MODEL, SERVICES
from vllama.gateway.targets import ROUTER
from vllama.models import facts
from vllama.models.names import InvalidName, display_name
from vllama.supervisor.procs import group_members
from vllama.translate.decode import decode_show
from vllama.translate.models import invalid_name, name_error
from vllama.translate.values import rfc3339_local
from vllama.wire.ollama import ListResponse, ProcessModel, ProcessResponse

_encode = msgspec.json.Encoder().encode
# Ollama's "keep forever" is now + MaxInt64 ns; the CLI prints "Forever" past 20 years.
_FOREVER_NS = 2**63 - 1


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(doc), content_type="application/json",
                        charset="utf-8")


async def tags(request: web.Request) -> web.Response:
    """Every model under every name it answers to: configured, pulled, aliases."""
    store = request.app[SERVICES].store

    def entries() -> ListResponse:
        return ListResponse(models=[store.tag_entry(m) for m in store.list_models()])

    return _json(await asyncio.to_thread(entries))


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
    return sum(proc.used_memory or 0 for device in gpu.snapshot.gpus
               for proc in device.processes if proc.pid in wanted)


async def ps(request: web.Request) -> web.Response:
    models = []
    expires = rfc3339_local(time.time_ns() + _FOREVER_NS)
    for target in request.app[ROUTER].targets:
        engine = target.engine
        if target.model.is_local and (engine is None or not engine.ready):
            continue  # not loaded: /api/ps tells the truth
        found = target.found
        size = vram = found.size if found is not None else 0
        pid = engine.status().pid if engine is not None else None
        if pid:  # the engine's process group, read once: GPU memory, else resident memory
            members = group_members(pid)
            vram = _gpu_memory(request, members)
            size = vram or rss(members)
        name = display_name(target.name)
        models.append(ProcessModel(name=name, model=name, size=size,
                                   digest=found.digest if found is not None else "",
                                   details=facts.details(target.files,
                                                         target.context_length or None),
                                   expires_at=expires, size_vram=vram,
                                   context_length=target.context_length))
    return _json(ProcessResponse(models=models))


async def show(request: web.Request) -> web.Response:
    req = decode_show(await request.read())
    store = request.app[SERVICES].store
    name = req.model or ""
    if not name:
        raise name_error("show", name)
    try:
        body = await asyncio.to_thread(store.show, name, system=req.system or "",
                                       options=req.options)
    except InvalidName:
        raise invalid_name("show", name) from None
    request[MODEL] = name
    return _json(body)


async def status(request: web.Request) -> web.Response:
    return _json({"cloud": {"disabled": True, "source": "config"}})


async def recommendations(request: web.Request) -> web.Response:
    return _json({"recommendations": []})


ROUTES = (("GET", "/api/tags", tags), ("GET", "/api/ps", ps), ("POST", "/api/show", show),
          ("GET", "/api/status", status),
          ("GET", "/api/experimental/model-recommendations", recommendations))
