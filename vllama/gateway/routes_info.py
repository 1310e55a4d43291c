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
from vllama.gateway.targets import ROUTER, Target
from vllama.models import facts
from vllama.models.names import InvalidName, display_name
from vllama.scheduler.state import SlotState, SlotStatus
from vllama.supervisor.procs import group_members
from vllama.translate.decode import decode_show
from vllama.translate.models import invalid_name, name_error
from vllama.translate.values import rfc3339_local
from vllama.wire.ollama import ListResponse, ProcessModel, ProcessResponse, UpstreamState

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


def _expires(status: SlotStatus, now_ns: int) -> str:
    """When the model unloads: its keep_alive deadline; far away when kept forever; from now
    while it is busy or loading (the clock starts when its last request ends)."""
    if status.keep_alive is None:
        return rfc3339_local(now_ns + _FOREVER_NS)
    if status.expires_at is not None:
        return rfc3339_local(int(status.expires_at * 1e9))
    return rfc3339_local(now_ns + int(status.keep_alive * 1e9))


async def ps(request: web.Request) -> web.Response:
    """What is loaded (or loading, or sleeping) now, with its memory and `expires_at`."""
    services = request.app[SERVICES]
    router = request.app[ROUTER]
    now_ns = time.time_ns()
    rows: list[tuple[str, ProcessModel]] = []
    for target in router.targets:
        if not target.model.is_local:  # remote upstreams count as loaded, forever
            found = target.found
            group = target.group
            state = "loaded" if group is None or group.ready() else "unavailable"
            rows.append(("", _process(target.name, target, found.size if found else 0, 0,
                                      expires=rfc3339_local(now_ns + _FOREVER_NS),
                                      state=state)))
    scheduler = services.scheduler
    for status in scheduler.snapshot() if scheduler is not None else ():
        if status.state is SlotState.UNLOADING:
            continue
        slot_target = router.named(status.model)
        engine = services.supervisor.get(status.model) if services.supervisor else None
        pid = engine.status().pid if engine is not None else None
        size = vram = 0
        if pid:  # the engine's process group, read once: GPU memory, else resident memory
            members = group_members(pid)
            vram = _gpu_memory(request, members)
            size = max(vram, rss(members)) if vram else rss(members)
        expires = _expires(status, now_ns)
        rows.append((expires, _process(status.model, slot_target, size, vram, expires=expires,
                                       state=status.state.value)))
    # Ollama sorts by expires_at, latest first (the forever-kept ones on top).
    rows.sort(key=lambda r: r[1].expires_at, reverse=True)
    return _json(ProcessResponse(models=[row for _, row in rows]))


def _process(name: str, target: Target | None, size: int, vram: int, *, expires: str,
             state: str) -> ProcessModel:
    shown = display_name(name)
    files = target.files if target is not None else facts.NO_FILES
    context = target.context_length if target is not None else 0
    found = target.found if target is not None else None
    row = ProcessModel(name=shown, model=shown, size=size or (found.size if found else 0),
                       digest=found.digest if found is not None else "",
                       details=facts.details(files, context or None), expires_at=expires,
                       size_vram=vram, context_length=context, state=state)
    group = target.group if target is not None else None
    if group is not None:
        row.upstreams = [UpstreamState(upstream=m.upstream, state=m.state,
                                       in_flight=m.in_flight, reason=m.reason)
                         for m in group.status()]
    return row


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
