"""Typed application keys: the one place the gateway's shared objects are named."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vllama.config import Config
from vllama.gateway.seams import GpuView, SchedulerView, StoreView, SupervisorView
from vllama.models.store import ModelStore

if TYPE_CHECKING:
    from vllama.gateway.metrics import Metrics


@dataclass
class Services:
    """What the daemon hands the gateway. The gateway owns none of these: it asks the model
    store what a name means and the scheduler for a lease on a model, and reads the
    supervisor and the GPU monitor, all through the protocols in `seams`."""

    config: Config
    store: StoreView
    scheduler: SchedulerView | None = None
    supervisor: SupervisorView | None = None
    gpu: GpuView | None = None
    # The private key the daemon gives its engines (VLLM_API_KEY): only the gateway uses them.
    engine_key: str = ""
    started: float = field(default_factory=time.time)
    # In a gateway worker: /metrics for the whole daemon comes from the main process.
    metrics_source: Callable[[], Awaitable[str]] | None = None
    worker: int | None = None  # this gateway worker's number (None: the main process)

    @classmethod
    def for_config(cls, config: Config, **others: Any) -> Services:
        """Services over a Config, with the model store it describes."""
        return cls(config=config, store=ModelStore.from_config(config), **others)


SERVICES = web.AppKey("services", Services)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")

# Per-request values the edges middleware reads after the handler ran (access log, metrics).
REQUEST_ID = web.RequestKey("request_id", str)
CORS_OK = web.RequestKey("cors_ok", bool)
MODEL = web.RequestKey("model", str)
TOKENS: web.RequestKey[tuple[int, int]] = web.RequestKey("tokens")
FINAL_STATUS = web.RequestKey("final_status", int)
# The upstream that answered (a member of the model's group): the X-Vllama-Upstream header.
UPSTREAM = web.RequestKey("upstream", str)
