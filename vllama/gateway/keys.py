"""Typed application keys: the one place the gateway's shared objects are named."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vllama.config import Config

if TYPE_CHECKING:
    from vllama.gateway.metrics import Metrics


@dataclass
class Services:
    """What the daemon hands the gateway. Objects the gateway does not own (the supervisor,
    the GPU monitor, the model store) are typed loosely here so the gateway imports nothing
    from the supervisor (DESIGN: upstream and supervisor never import each other)."""

    config: Config
    started: float = field(default_factory=time.time)
    supervisor: Any = None
    gpu: Any = None
    store: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


SERVICES = web.AppKey("services", Services)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")

# Per-request values the edges middleware reads after the handler ran (access log, metrics).
REQUEST_ID = web.RequestKey("request_id", str)
CORS_OK = web.RequestKey("cors_ok", bool)
MODEL = web.RequestKey("model", str)
TOKENS: web.RequestKey[tuple[int, int]] = web.RequestKey("tokens")
FINAL_STATUS = web.RequestKey("final_status", int)
