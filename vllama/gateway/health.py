"""/health (ready or not, with why), /health/live (the loop runs), /metrics (Prometheus).

With an API key set, /health still answers its status code and status to anyone (load balancers
cannot send a bearer header); engines, pids, ports, paths and GPUs go only to callers with the
key. /metrics stays behind the key."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from vllama import __version__
from vllama.fleet.fleet import group_statuses
from vllama.gateway.keys import METRICS, SERVICES
from vllama.gateway.middleware import authorized
from vllama.gateway.targets import ROUTER

_encode = msgspec.json.Encoder().encode


async def live(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"alive"}', content_type="application/json")


def health_document(request: web.Request) -> tuple[bool, dict[str, Any]]:
    services = request.app[SERVICES]
    engines: list[dict[str, Any]] = []
    ready = True
    reasons: list[str] = []
    models: list[dict[str, Any]] = []
    if services.supervisor is not None:
        statuses = services.supervisor.snapshot()
        engines = [msgspec.to_builtins(s) for s in statuses]
        ready = bool(services.supervisor.ready)
        reasons = [s.reason for s in statuses if s.reason]
    if services.scheduler is not None:
        # Ready means "can serve": models that load on demand (or sleep) do not count, the
        # preloaded and pinned ones do.
        ready = services.scheduler.ready
        models = [msgspec.to_builtins(s) for s in services.scheduler.snapshot()]
        reasons = services.scheduler.unready_reasons()
    gpus: Any = {"available": False, "reason": "GPU monitor not started"}
    if services.gpu is not None:
        gpus = msgspec.to_builtins(services.gpu.snapshot)
    doc: dict[str, Any] = {
        "status": "ok" if ready else "unavailable",
        "version": __version__,
        "uptime_s": round(time.time() - services.started, 3),
        "engines": engines,
        "models": models,
        "gpus": gpus,
    }
    if services.scheduler is not None:
        doc["queued"] = dict(services.scheduler.queued)
    router = request.app[ROUTER]
    groups = router.groups()
    if groups:
        # A model with remote upstreams is ready while one of them is (this gateway
        # process's view: each process probes on its own).
        doc["upstreams"] = group_statuses(groups)
        for name, group in groups:
            if not group.ready():
                ready = False
                why = "; ".join(f"{m.label}: {m.endpoint.reason}" for m in group.members
                                if m.endpoint is not None)
                reasons = [*reasons, f"model '{name}': every upstream is down ({why})"]
        doc["status"] = "ok" if ready else "unavailable"
    if router.fleet.config.upstreams:
        doc["discovery"] = msgspec.to_builtins(router.fleet.source_status())
    if reasons and not ready:
        doc["reasons"] = reasons
    return ready, doc


async def health(request: web.Request) -> web.Response:
    ready, doc = health_document(request)
    if not authorized(request, request.app[SERVICES].config.api_key):
        doc = {"status": doc["status"]}
    return web.Response(status=200 if ready else 503, body=_encode(doc),
                        content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    source = request.app[SERVICES].metrics_source
    text = await source() if source is not None else request.app[METRICS].render()
    return web.Response(text=text,
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


ROUTES = (("GET", "/health/live", live), ("GET", "/health", health),
          ("GET", "/metrics", metrics))
