"""Which upstream serves which model: the routing table of the gateway.

A `Target` is a model clients can reach and what the gateway needs to talk to it: its facts
(capabilities, context length) and a pooled `ClientSession`. Remote upstreams have a session
each (each has its own key); every local engine is reached through one shared session that
carries the engines' private key. Targets of configured models are built with the app; a
local model that nobody configured gets its target on first use. Which model a name means is
the model store's answer (`vllama.models`), never the router's; when a local model runs is the
scheduler's (`leased`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from vllama.config import Config, ModelConfig
from vllama.errors import Unavailable
from vllama.gateway.keys import MODEL, SERVICES
from vllama.gateway.seams import SchedulerView, StoreView
from vllama.models import facts
from vllama.models.facts import ModelFiles
from vllama.models.names import InvalidName
from vllama.models.store import LocalModel, Overrides
from vllama.scheduler.state import Lease
from vllama.translate.models import Endpoint, invalid_name, model_required, name_error
from vllama.translate.request import ModelCaps
from vllama.translate.values import CreatedAt
from vllama.upstream import new_session
from vllama.wire.openai import served_max_model_len

CONTEXT_READ_TIMEOUT = 10.0  # seconds for a remote upstream's /v1/models


@dataclass
class Target:
    """One model clients can reach, and how to talk to the server that serves it."""

    model: ModelConfig
    session: aiohttp.ClientSession  # pooled, from vllama.upstream.new_session
    caps: ModelCaps
    context_length: int = 0
    # The model as the store described it when the target was built (files, size, digest).
    found: LocalModel | None = None
    created: float = field(default_factory=time.time)
    # created_at formatter shared by this target's requests: its per-second cache then
    # survives from one request to the next (a fresh one per request formats every time).
    created_at: CreatedAt = field(default_factory=CreatedAt, repr=False, compare=False)
    # A remote upstream's max_model_len, read from its /v1/models at first need; 0: not yet.
    upstream_context: int = 0

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def files(self) -> ModelFiles:
        return self.found.files if self.found is not None else facts.NO_FILES

    @property
    def upstream_model(self) -> str:
        """The model id the upstream knows: our served-model-name for local engines."""
        return self.model.upstream_model or self.model.name


class Router:
    """Model name -> Target. Reads take no lock: the table is only added to (a target for a
    model met for the first time) or swapped whole (config reload), never edited in place."""

    def __init__(self, config: Config, local_session: aiohttp.ClientSession | None) -> None:
        self.config = config
        self.local_session = local_session
        self._by_name: dict[str, Target] = {}

    @property
    def targets(self) -> list[Target]:
        return list(self._by_name.values())

    def named(self, name: str) -> Target | None:
        return self._by_name.get(name)

    def get(self, model: ModelConfig) -> Target | None:
        target = self._by_name.get(model.name)
        return target if target is not None and target.model == model else None

    def build(self, model: ModelConfig, found: LocalModel | None) -> Target:
        """The target of a model (kept: a later request reuses it)."""
        existing = self.get(model)
        if existing is not None:
            return existing
        files = found.files if found is not None else facts.NO_FILES
        args = facts.engine_args(files, model, self.config.vllm_args)
        target = Target(model=model, session=self._session_for(model),
                        caps=facts.capabilities(files, model, args),
                        context_length=facts.context_length(files, args), found=found)
        self._by_name = {**self._by_name, model.name: target}
        return target

    def _session_for(self, model: ModelConfig) -> aiohttp.ClientSession:
        cfg = self.config
        if model.is_local and self.local_session is not None:
            return self.local_session
        return new_session(limit=cfg.upstream_connections, keepalive=cfg.upstream_keepalive,
                           connect_timeout=cfg.upstream_connect_timeout,
                           api_key=model.upstream_api_key)

    def replace(self, config: Config, store: StoreView) -> list[aiohttp.ClientSession]:
        """Swap in the targets of a new config (reload). Targets whose model did not change
        are kept with their sessions; returns the sessions of dropped remote targets (close
        them)."""
        old = self._by_name
        self.config = config
        self._by_name = {}
        for model in config.models:
            kept = old.get(model.name)
            if kept is not None and kept.model == model:
                self._by_name[model.name] = kept
            else:
                self.build(model, store.find(model.name))
        live = {id(t.session) for t in self._by_name.values()}
        return [t.session for t in old.values()
                if t.session is not self.local_session and id(t.session) not in live]

    async def close(self) -> None:
        for target in self._by_name.values():
            if target.session is not self.local_session:
                await target.session.close()
        if self.local_session is not None:
            await self.local_session.close()


ROUTER = web.AppKey("router", Router)


def router_ctx(cfg: Config, store: StoreView, engine_key: str
               ) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the routing table and its sessions open with the app and close with it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        local = new_session(limit=cfg.upstream_connections, keepalive=cfg.upstream_keepalive,
                            connect_timeout=cfg.upstream_connect_timeout, api_key=engine_key)
        router = app[ROUTER] = Router(cfg, local)
        for model in cfg.models:
            router.build(model, store.find(model.name))
        try:
            yield
        finally:
            await router.close()

    return ctx


async def route(request: web.Request, endpoint: Endpoint, name: str
                ) -> tuple[Target, Overrides | None]:
    """The target serving `name` as the model store resolves it, with the defaults an alias
    made by /api/create applies; Ollama's error for the endpoint otherwise (404 `not found,
    try pulling it first` and its per-endpoint variants)."""
    services = request.app[SERVICES]
    store = services.store
    router = request.app[ROUTER]
    if not name:
        raise model_required(endpoint)
    try:
        # A configured name needs no I/O; anything else may read the alias file and the cache.
        resolved = store.resolve_served(name) or await asyncio.to_thread(store.resolve, name)
    except InvalidName:
        raise invalid_name(endpoint, name) from None
    target = router.get(resolved.served) if resolved and resolved.served else None
    if target is None and resolved is not None:
        found = await asyncio.to_thread(store.find, name)
        if found is not None:  # a local model: servable, loaded on demand
            target = router.build(found.model, found)
    if target is None:
        raise name_error(endpoint, name)
    request[MODEL] = target.name
    overrides = store.overrides_for(name) if resolved and resolved.kind == "user" else None
    return target, overrides


class _Held:
    """Hold the model loaded for the life of a request, loading it first if needed; a remote
    upstream needs no lease. (A class, not a generator-based context manager: it runs on
    every request.)"""

    __slots__ = ("_keep_alive", "_lease", "_request", "_scheduler", "_target")

    def __init__(self, request: web.Request, target: Target,
                 keep_alive: float | None = None) -> None:
        self._request, self._target, self._keep_alive = request, target, keep_alive
        self._scheduler: SchedulerView | None = None
        self._lease: Lease | None = None

    async def _acquire(self) -> Lease:
        model = self._target.model
        if not model.is_local:
            return Lease("", model.upstream.rstrip("/"))
        scheduler = self._scheduler = self._request.app[SERVICES].scheduler
        if scheduler is None:
            raise Unavailable(f"model '{model.name}' is not running: vllama runs no engines "
                              "here")
        self._lease = await scheduler.acquire(model, self._keep_alive)
        return self._lease

    async def __aexit__(self, *exc: Any) -> None:
        if self._scheduler is not None and self._lease is not None:
            self._scheduler.release(self._lease)


class leased(_Held):
    """`async with leased(request, target) as base_url`: the model's OpenAI base URL."""

    __slots__ = ()

    async def __aenter__(self) -> str:
        return (await self._acquire()).base_url


class engine_lease(_Held):
    """`async with engine_lease(request, target) as lease`: the whole lease, with the
    engine's context (`engine_context`)."""

    __slots__ = ()

    async def __aenter__(self) -> Lease:
        return await self._acquire()


async def engine_context(target: Target, lease: Lease) -> int:
    """The context the engine serving this request runs with: the scheduler read it from
    the engine's /v1/models when it started; a remote upstream's is read from its own
    /v1/models once. Where neither answers, what the flags and config.json say."""
    if lease.max_model_len:
        return lease.max_model_len
    if not target.model.is_local and not target.upstream_context:
        target.upstream_context = await _read_context(target, lease.base_url)
    return target.upstream_context or target.context_length


async def _read_context(target: Target, base_url: str) -> int:
    try:
        async with asyncio.timeout(CONTEXT_READ_TIMEOUT), \
                target.session.get(base_url + "/models") as resp:
            body = await resp.read() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return 0  # asked again next time; the fallback serves meanwhile
    return served_max_model_len(body, target.upstream_model)


def api_url(base: str, path: str) -> str:
    """An OpenAI path (`/v1/chat/completions`) under an OpenAI base URL (`http://h:p/v1`)."""
    return base + path[3:] if path.startswith("/v1/") else base + path
