"""Which upstream serves which model: the routing table of the gateway.

A `Target` is a model clients can reach and what the gateway needs to talk to it: its facts
(capabilities, context length) and, for a model with remote upstreams, its `Group` of members
(`vllama.fleet`). Every local engine is reached through one shared session that carries the
engines' private key; each remote endpoint has its own pool (its own key). Targets of
configured models are built with the app, those of discovered models when discovery finds
them; a local model that nobody configured gets its target on first use. Which model a name
means is the model store's answer (`vllama.models`), never the router's; when a local model
runs is the scheduler's (`leased`).

`upstream_call` is the one way a request reaches an upstream: it picks the member (or takes
the local engine's lease), posts, and retries on another member while nothing has been
answered yet; once an upstream answered, the response is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from vllama.config import Config, ModelConfig
from vllama.errors import ServerBusy, Unavailable, VllamaError
from vllama.fleet.affinity import affinity_key
from vllama.fleet.fleet import Fleet, metric_rows
from vllama.fleet.members import Group, Member
from vllama.gateway.keys import METRICS, MODEL, REQUEST_ID, SERVICES, UPSTREAM, Services
from vllama.gateway.seams import SchedulerView, StoreView
from vllama.models import facts
from vllama.models.facts import ModelFiles
from vllama.models.names import InvalidName
from vllama.models.store import LocalModel, Overrides
from vllama.scheduler.state import Lease
from vllama.translate.models import Endpoint, invalid_name, model_required, name_error
from vllama.translate.request import COMPLETIONS_PATH, ModelCaps, fill_max_tokens
from vllama.translate.values import CreatedAt
from vllama.upstream import UpstreamResponse, new_session, post
from vllama.wire.openai import served_max_model_len

logger = logging.getLogger("vllama.gateway")

CONTEXT_READ_TIMEOUT = 10.0  # seconds for a remote upstream's /v1/models
CONTEXT_RETRY = 60.0  # seconds before a /v1/models that did not answer is asked again
_encode = msgspec.json.Encoder().encode


@dataclass
class Target:
    """One model clients can reach, and how to talk to the server that serves it."""

    model: ModelConfig
    caps: ModelCaps
    context_length: int = 0
    # The model as the store described it when the target was built (files, size, digest).
    found: LocalModel | None = None
    # Its members when it has remote upstreams (the local engine first, if it has one too);
    # None: a local engine alone, reached through the scheduler's lease.
    group: Group | None = None
    created: float = field(default_factory=time.time)
    # created_at formatter shared by this target's requests: its per-second cache then
    # survives from one request to the next (a fresh one per request formats every time).
    created_at: CreatedAt = field(default_factory=CreatedAt, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def files(self) -> ModelFiles:
        return self.found.files if self.found is not None else facts.NO_FILES

    @property
    def upstream_model(self) -> str:
        """The model id the (first) upstream knows: our served-model-name for local engines.
        Requests are built with it; a member that knows another id gets its own."""
        if self.group is not None:
            return self.group.members[0].model_id
        return self.model.name


class Router:
    """Model name -> Target. Reads take no lock: the table is only added to (a target for a
    model met for the first time) or swapped whole (config reload, discovery), never edited
    in place."""

    def __init__(self, config: Config, local_session: aiohttp.ClientSession | None,
                 fleet: Fleet | None = None) -> None:
        self.config = config
        self.local_session = local_session
        self.fleet = fleet if fleet is not None else Fleet(config)
        self._by_name: dict[str, Target] = {}
        self._discovered: frozenset[str] = frozenset()

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
        self._by_name = {**self._by_name, model.name: self._target(model, found)}
        return self._by_name[model.name]

    def _target(self, model: ModelConfig, found: LocalModel | None) -> Target:
        files = found.files if found is not None else facts.NO_FILES
        args = facts.engine_args(files, model, self.config.vllm_args)
        return Target(model=model, caps=facts.capabilities(files, model, args),
                      context_length=facts.context_length(files, args, model.context_length),
                      found=found, group=self.fleet.group(model))

    def replace(self, config: Config, store: StoreView) -> list[aiohttp.ClientSession]:
        """Swap in the targets of a new config (reload). Targets whose model did not change
        are kept (with their members' health and load); the models discovered so far are
        kept until discovery, which runs again at once, says otherwise. Returns the sessions
        of endpoints nothing uses any more (close them)."""
        self.config = config
        self.fleet.configure(config)
        self.adopt(store)
        return self._rebuild(config.models, self.fleet.discovered, store, keep_met=False)

    def adopt(self, store: StoreView) -> None:
        """Give a (new) model store the discovered models, before it serves requests."""
        store.set_remote(self.fleet.discovered)

    def discovered(self, models: Sequence[ModelConfig], store: StoreView
                   ) -> list[aiohttp.ClientSession]:
        """Discovery found other models: the store lists them, the router routes them."""
        store.set_remote(models)
        return self._rebuild(self.config.models, models, store, keep_met=True)

    def _rebuild(self, configured: Sequence[ModelConfig], discovered: Sequence[ModelConfig],
                 store: StoreView, *, keep_met: bool) -> list[aiohttp.ClientSession]:
        """The table for these models, keeping the targets of unchanged ones; with
        `keep_met`, also those of local models met on first use (a reload drops them: their
        facts may have changed with the config)."""
        old = self._by_name
        table: dict[str, Target] = {}
        names = {m.name for m in configured}
        discovered_names = set()
        for model in (*configured, *discovered):
            if model.name in table:
                continue
            kept = old.get(model.name)
            if kept is not None and kept.model == model:
                table[model.name] = kept
            else:
                found = store.find(model.name) if model.name in names else None
                table[model.name] = self._target(model, found)
            if model.name not in names:
                discovered_names.add(model.name)
        for name, target in old.items():
            if keep_met and name not in table and name not in self._discovered:
                table[name] = target
        self._by_name = table
        self._discovered = frozenset(discovered_names)
        return self.fleet.retain(t.group for t in table.values() if t.group is not None)

    def groups(self) -> list[tuple[str, Group]]:
        return [(t.name, t.group) for t in self._by_name.values() if t.group is not None]

    async def close(self) -> None:
        await self.fleet.close()
        if self.local_session is not None:
            await self.local_session.close()


ROUTER = web.AppKey("router", Router)


def router_ctx(services: Services) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the routing table, its sessions, and the upstreams' probes and discovery
    open with the app and close with it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = services.config
        local = new_session(limit=cfg.upstream_connections, keepalive=cfg.upstream_keepalive,
                            connect_timeout=cfg.upstream_connect_timeout,
                            api_key=services.engine_key)
        router = app[ROUTER] = Router(cfg, local)
        for model in cfg.models:
            router.build(model, services.store.find(model.name))
        closing: set[asyncio.Task[None]] = set()

        def on_models(models: list[ModelConfig]) -> None:
            for session in router.discovered(models, services.store):
                task = asyncio.get_running_loop().create_task(session.close())
                closing.add(task)
                task.add_done_callback(closing.discard)

        router.fleet.on_models = on_models
        app[METRICS].upstreams = lambda: metric_rows(router.groups())
        router.fleet.start()
        try:
            yield
        finally:
            await router.close()
            for task in list(closing):
                await task

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
    """Hold the model loaded for the life of a request, loading it first if needed. A model
    with remote upstreams alone needs no lease (an empty one), but one of them must be up.
    (A class, not a generator-based context manager: it runs on every request.)"""

    __slots__ = ("_keep_alive", "_lease", "_request", "_scheduler", "_target")

    def __init__(self, request: web.Request, target: Target,
                 keep_alive: float | None = None) -> None:
        self._request, self._target, self._keep_alive = request, target, keep_alive
        self._scheduler: SchedulerView | None = None
        self._lease: Lease | None = None

    async def _acquire(self) -> Lease:
        target = self._target
        model = target.model
        if not model.is_local:
            group = target.group
            if group is not None and not group.eligible(group.shared.clock()):
                raise _all_down(self._request, target, [])
            return Lease("", "")
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
    """`async with leased(request, target) as base_url`: the local engine's OpenAI base URL
    ("" for a model with remote upstreams alone)."""

    __slots__ = ()

    async def __aenter__(self) -> str:
        return (await self._acquire()).base_url


class _engine_lease(_Held):
    """`async with _engine_lease(request, target) as lease`: the whole lease, with the
    engine's context (`max_model_len`, read by the scheduler when the engine started)."""

    __slots__ = ()

    async def __aenter__(self) -> Lease:
        return await self._acquire()


def api_url(base: str, path: str) -> str:
    """An OpenAI path (`/v1/chat/completions`) under an OpenAI base URL (`http://h:p/v1`)."""
    return base + path[3:] if path.startswith("/v1/") else base + path


class NoUpstream(Unavailable):
    """Every upstream of a model is down (or failed this request): 503, with why, and when
    to try again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


# Failures that say the member, not the request, is the problem: another member is tried.
_DOWN_STATUSES = frozenset({502, 503, 504})


def _all_down(request: web.Request, target: Target, errors: Sequence[str]) -> NoUpstream:
    router = request.app[ROUTER]
    group = target.group
    if not errors and group is not None:
        now = group.shared.clock()
        errors = [f"{m.label}: {m.reason(now) or m.state(now)}" for m in group.members]
    why = "; ".join(errors) or "no upstream"
    return NoUpstream(f"model '{target.name}' is unavailable: every upstream is down ({why})",
                      router.fleet.retry_after())


@contextlib.asynccontextmanager
async def upstream_call(request: web.Request, target: Target, path: str,
                        body: bytes | dict[str, Any], keep_alive: float | None = None
                        ) -> AsyncIterator[UpstreamResponse]:
    """POST an OpenAI request to the model's upstream and yield the response once its status
    is known (2xx; an error status raises). `body` is built for `target.upstream_model`: the
    client's bytes (relayed as they are), or a translated request (a dict) whose `max_tokens`
    is filled from the context of the server that takes it (`fill_max_tokens`).

    A local engine alone: through the scheduler's lease. A group: the member `Group.pick`
    chooses (by the request's conversation prefix, else by load); a member that cannot be
    reached, answers 5xx, or whose engine cannot be leased is ejected for a while and the
    request goes to the next one, as long as no member has answered. When none is left: 503
    with every member's reason and Retry-After."""
    headers = {"Content-Type": "application/json", "X-Request-Id": request[REQUEST_ID]}
    idle = request.app[SERVICES].config.stream_idle_timeout
    group = target.group
    if group is None:  # (inlined: one context manager less per request on the common path)
        session = request.app[ROUTER].local_session
        assert session is not None
        async with _engine_lease(request, target, keep_alive) as lease:
            data = body if isinstance(body, bytes) else _filled(path, body, lease.max_model_len)
            async with post(session, api_url(lease.base_url, path), data, headers,
                            idle_timeout=idle) as resp:
                yield resp
        return
    policy = group.shared.policy
    raw = body if isinstance(body, bytes) else _encode(body)
    key = (affinity_key(raw, policy.affinity_bytes)
           if policy.affinity and len(group.members) > 1 else None)
    first_id = target.upstream_model
    tried: list[Member] = []
    errors: list[str] = []
    last: VllamaError | None = None
    while True:
        member = group.pick(key, tried)
        if member is None:
            if last is not None and last.status not in _DOWN_STATUSES:
                raise last  # the upstreams answered; their error is the answer
            raise _all_down(request, target, errors)
        tried.append(member)
        member.in_flight += 1
        group.in_flight += 1
        answered = False
        try:
            async with _member_post(request, target, member, path=path, body=body, raw=raw,
                                    first_id=first_id, headers=headers, keep_alive=keep_alive,
                                    idle=idle) as resp:
                answered = True
                group.succeeded(member)
                request[UPSTREAM] = member.label
                yield resp
            return
        except VllamaError as exc:
            if answered or not (exc.status >= 500 or isinstance(exc, Unavailable)):
                raise
            if not isinstance(exc, ServerBusy):  # a full queue is busy, not broken
                group.failed(member, exc.message)
            last = exc
            errors.append(f"{member.label}: {exc.message}")
            logger.warning("upstream %s failed for %s before answering: %s", member.label,
                           target.name, exc.message, extra={"component": "gateway",
                                                            "model": target.name})
        finally:
            member.in_flight -= 1
            group.in_flight -= 1


@contextlib.asynccontextmanager
async def _member_post(request: web.Request, target: Target, member: Member, *, path: str,
                       body: bytes | dict[str, Any], raw: bytes, first_id: str,
                       headers: dict[str, str], keep_alive: float | None, idle: float
                       ) -> AsyncIterator[UpstreamResponse]:
    """One member's answer: the local engine through its lease, or a remote endpoint; the
    request names the model as the member knows it, and a translated one gets `max_tokens`
    from the member's context."""
    endpoint = member.endpoint
    if endpoint is None:
        session = request.app[ROUTER].local_session
        assert session is not None
        async with _engine_lease(request, target, keep_alive) as lease:
            data = (_as_known(raw, member.model_id, first_id) if isinstance(body, bytes)
                    else _filled(path, {**body, "model": member.model_id},
                                 lease.max_model_len))
            async with post(session, api_url(lease.base_url, path), data, headers,
                            idle_timeout=idle) as resp:
                yield resp
        return
    assert endpoint.session is not None
    if isinstance(body, bytes):
        data = _as_known(raw, member.model_id, first_id)
    else:  # a copy: a retry on another member fills from that member's context
        needs = path == COMPLETIONS_PATH or isinstance(body.get("max_tokens"), int)
        context = (await _member_context(member) if needs else 0) or target.context_length
        data = _filled(path, {**body, "model": member.model_id}, context)
    async with post(endpoint.session, api_url(endpoint.url, path), data, headers,
                    idle_timeout=idle) as resp:
        yield resp


def _filled(path: str, body: dict[str, Any], context: int) -> bytes:
    fill_max_tokens(path, body, context)
    return _encode(body)


def _as_known(body: bytes, model_id: str, first_id: str) -> bytes:
    """The client's request for a member that may know the model by another id."""
    if model_id == first_id:
        return body
    doc: dict[str, Any] = msgspec.json.decode(body)
    doc["model"] = model_id
    return msgspec.json.encode(doc)


async def _member_context(member: Member) -> int:
    """A remote member's max_model_len, read from its /v1/models once (0: unknown; asked
    again CONTEXT_RETRY seconds after a failure)."""
    if member.context or time.monotonic() < member.context_retry:
        return member.context
    endpoint = member.endpoint
    assert endpoint is not None and endpoint.session is not None
    try:
        async with asyncio.timeout(CONTEXT_READ_TIMEOUT), \
                endpoint.session.get(endpoint.url + "/models") as resp:
            body = await resp.read() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        body = None
    member.context = served_max_model_len(body, member.model_id)
    if not member.context:
        member.context_retry = time.monotonic() + CONTEXT_RETRY
    return member.context
