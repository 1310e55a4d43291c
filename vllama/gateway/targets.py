"""Which upstream serves which model: the routing table of the gateway.

One `Target` per configured model. A local target reaches its engine (owned by the supervisor)
on 127.0.0.1:<port>; an external target reaches a configured base URL. Each target has its own
pooled `ClientSession`, created and closed with the app (`cleanup_ctx`). Which model a name
means is the model store's answer (`vllama.models`), never the router's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
import msgspec
from aiohttp import web

from vllama.config import Config, ModelConfig
from vllama.errors import BadRequest, Unavailable
from vllama.gateway.keys import MODEL, SERVICES
from vllama.gateway.seams import EngineView, StoreView
from vllama.models import facts
from vllama.models.facts import ModelFiles
from vllama.models.names import InvalidName
from vllama.models.store import LocalModel, Overrides
from vllama.translate.models import Endpoint, invalid_name, model_required, name_error
from vllama.translate.request import ModelCaps
from vllama.translate.values import CreatedAt
from vllama.upstream import new_session

EngineLookup = Callable[[str], EngineView | None]


@dataclass
class Target:
    """One configured model, and how to reach the server that serves it."""

    model: ModelConfig
    session: aiohttp.ClientSession  # pooled, from vllama.upstream.new_session
    caps: ModelCaps
    context_length: int = 0
    # The model as the store listed it when the table was built (files, size, digest).
    found: LocalModel | None = None
    lookup: EngineLookup | None = None
    created: float = field(default_factory=time.time)
    # created_at formatter shared by this target's requests: its per-second cache then
    # survives from one request to the next (a fresh one per request formats every time).
    created_at: CreatedAt = field(default_factory=CreatedAt, repr=False, compare=False)

    @property
    def engine(self) -> EngineView | None:
        """The supervised engine, looked up live (engines are replaced on reload)."""
        if self.model.upstream or self.lookup is None:
            return None
        return self.lookup(self.model.name)

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

    def base_url(self) -> str:
        """Where requests go now; Unavailable (503, with why) while the engine is not ready."""
        if self.model.upstream:
            return self.model.upstream.rstrip("/")
        engine = self.engine
        if engine is None:
            raise Unavailable(f"model '{self.name}' is not running yet (vllama is starting)")
        if not engine.ready or engine.port is None:
            raise Unavailable(engine.unavailable_reason())
        return f"http://127.0.0.1:{engine.port}/v1"

    def server_url(self) -> str:
        """Base URL without /v1, for vLLM's own routes (/health, /tokenize, /metrics)."""
        base = self.base_url()
        return base[:-3] if base.endswith("/v1") else base


class Router:
    """Configured model name -> Target. Built once from config (and rebuilt on reload);
    read-only on the request path, so no lock is needed."""

    def __init__(self, targets: Iterable[Target]) -> None:
        self._index(list(targets))

    def _index(self, targets: list[Target]) -> None:
        # Built aside and swapped in whole: a request sees the old or the new table, never a mix.
        self.targets, self._by_name = targets, {t.name: t for t in targets}

    def replace(self, new: list[Target]) -> list[Target]:
        """Swap in a new table (config reload). Targets whose model settings did not change
        are kept with their pooled sessions; returns the dropped targets (close them)."""
        old = {_model_key(t.model): t for t in self.targets}
        kept: list[Target] = []
        unused: list[Target] = []
        for target in new:
            previous = old.pop(_model_key(target.model), None)
            if previous is not None:
                kept.append(previous)
                unused.append(target)
            else:
                kept.append(target)
        self._index(kept)
        return [*old.values(), *unused]

    def for_model(self, model: ModelConfig) -> Target | None:
        """The target of a configured model (as the store resolved it)."""
        return self._by_name.get(model.name)


ROUTER = web.AppKey("router", Router)


def _model_key(model: ModelConfig) -> bytes:
    return msgspec.json.encode(model)


def build_targets(cfg: Config, store: StoreView, lookup: EngineLookup | None,
                  engine_key: str = "") -> list[Target]:
    """One target per configured model. `engine_key` is the private key the daemon gives its
    engines (VLLM_API_KEY), so only the gateway can use them."""
    targets = []
    for model in cfg.models:
        found = store.find(model.name)
        files = found.files if found is not None else facts.NO_FILES
        args = facts.engine_args(model, cfg.vllm_args)
        key = model.upstream_api_key if model.upstream else engine_key
        session = new_session(limit=cfg.upstream_connections, keepalive=cfg.upstream_keepalive,
                              connect_timeout=cfg.upstream_connect_timeout, api_key=key)
        targets.append(Target(model=model, session=session,
                              caps=facts.capabilities(files, model, args),
                              context_length=facts.context_length(files, args), found=found,
                              lookup=lookup))
    return targets


def router_ctx(cfg: Config, store: StoreView, lookup: EngineLookup | None,
               engine_key: str = "") -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: sessions open with the app and close with it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        router = app[ROUTER]
        router.replace(build_targets(cfg, store, lookup, engine_key))
        try:
            yield
        finally:
            for target in router.targets:
                await target.session.close()

    return ctx


async def route(request: web.Request, endpoint: Endpoint, name: str
                ) -> tuple[Target, Overrides | None]:
    """The target serving `name` as the model store resolves it, with the defaults an alias
    made by /api/create applies; Ollama's error for the endpoint otherwise."""
    services = request.app[SERVICES]
    store = services.store
    if not name:
        raise model_required(endpoint)
    try:
        # A configured name needs no I/O; anything else may read the alias file and the cache.
        resolved = store.resolve_served(name) or await asyncio.to_thread(store.resolve, name)
    except InvalidName:
        raise invalid_name(endpoint, name) from None
    target = request.app[ROUTER].for_model(resolved.served) if resolved and resolved.served \
        else None
    if target is None:
        if resolved is not None and await asyncio.to_thread(store.find, name) is not None:
            raise BadRequest(
                f"model '{name}' is downloaded but no engine serves it: add it to the config "
                f"([[models]] name = \"{name}\", source = \"{resolved.source}\") and run "
                "`systemctl reload vllama`, or start `vllama serve --model "
                f"{resolved.source}`")
        raise name_error(endpoint, name)
    request[MODEL] = target.name
    overrides = store.overrides_for(name) if resolved and resolved.kind == "user" else None
    return target, overrides
