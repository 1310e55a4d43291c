"""The upstream groups of one gateway process: its endpoints (pools and active probes), the
discovery of `[[upstreams]]` endpoints' models, and what /health, /api/ps and /metrics show.

Each gateway process (the main one, or each worker) keeps its own: every one probes and
discovers on its own, which costs a few small requests per interval and needs no
coordination; their views agree within a probe interval.

Probes: every `upstream_probe_interval` seconds each remote endpoint is asked `GET /health`
(beside its `/v1`, where vLLM and its routers answer), or `GET /v1/models` once `/health` turned
out not to exist (a 4xx). A refused connection or an error status marks the endpoint down at
once, no answer within `upstream_probe_timeout` only the third time in a row: none of its
members gets requests until a probe succeeds again, which also ends any ejection of its
members. The first
probe comes one interval after start; until then an endpoint counts as up (passive ejection
covers the first seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
import msgspec

from vllama.config import Config, ModelConfig, RemoteSource
from vllama.fleet.discovery import Listed, discovered_models, parse_models
from vllama.fleet.ejection import Backoff
from vllama.fleet.members import Endpoint, Group, Member, Policy, Shared, display_url
from vllama.upstream import new_session

logger = logging.getLogger("vllama.fleet")

MAX_LISTING = 16 * 1024 * 1024  # a /v1/models answer larger than this is not a model list
# Probes in a row without an answer in time that take an endpoint down. A refused connection
# or a 5xx /health is certain at once; a slow answer is not: a vLLM whose CPU is busy
# streaming answers /health late while it serves well (a request that succeeds resets it).
SLOW_PROBES_DOWN = 3


def policy_of(config: Config) -> Policy:
    return Policy(backoff=Backoff(config.upstream_eject_initial, config.upstream_eject_max),
                  affinity=config.upstream_routing == "affinity",
                  affinity_bytes=config.upstream_affinity_bytes,
                  affinity_load=config.upstream_affinity_load,
                  probe_interval=config.upstream_probe_interval)


class SourceStatus(msgspec.Struct):
    """One `[[upstreams]]` endpoint's discovery."""

    url: str
    state: str  # ok, error (the last listing failed; the one before is kept), pending
    models: int
    reason: str = ""
    checked_at: float | None = None


@dataclass
class _Listing:
    listed: list[Listed] = field(default_factory=list)
    ok: bool | None = None
    reason: str = ""
    checked: float | None = None


class Fleet:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.shared = Shared(policy_of(config), clock)
        self.wall = wall
        self.endpoints: dict[tuple[str, str], Endpoint] = {}
        self.members: dict[int, list[Member]] = {}  # id(endpoint) -> its members
        self.listings: dict[str, _Listing] = {}
        self.discovered: list[ModelConfig] = []
        # Told the discovered models whenever they change (the router rebuilds its targets).
        self.on_models: Callable[[list[ModelConfig]], None] | None = None
        self._rediscover = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ building

    def endpoint(self, url: str, api_key: str) -> Endpoint:
        key = (url.rstrip("/"), api_key)
        found = self.endpoints.get(key)
        if found is None:
            cfg = self.config
            session = new_session(limit=cfg.upstream_connections,
                                  keepalive=cfg.upstream_keepalive,
                                  connect_timeout=cfg.upstream_connect_timeout, api_key=api_key)
            found = self.endpoints[key] = Endpoint(key[0], api_key, session)
        return found

    def group(self, model: ModelConfig) -> Group | None:
        """The group serving a model with remote members (None: a local engine alone). The
        local engine, if any, is the first member."""
        refs = model.remotes
        if not refs:
            return None
        members = [Member(None, model.name)] if model.is_local else []
        for ref in refs:
            endpoint = self.endpoint(ref.url, ref.api_key)
            member = Member(endpoint, ref.model)
            self.members.setdefault(id(endpoint), []).append(member)
            members.append(member)
        return Group(model.name, members, self.shared)

    def configure(self, config: Config) -> None:
        """A reloaded config: new settings; discovery runs again at once."""
        self.config = config
        self.shared.policy = policy_of(config)
        self.shared.changed()
        self._rediscover.set()

    def retain(self, groups: Iterable[Group]) -> list[aiohttp.ClientSession]:
        """Keep the endpoints these groups (and the config's `[[upstreams]]`) use; forget the
        rest and return their sessions to close."""
        used: dict[int, list[Member]] = {}
        for group in groups:
            for member in group.members:
                if member.endpoint is not None:
                    used.setdefault(id(member.endpoint), []).append(member)
        sources = {(s.url, s.api_key) for s in self.config.upstreams}
        dropped = []
        for key, endpoint in list(self.endpoints.items()):
            if id(endpoint) in used or key in sources:
                continue
            del self.endpoints[key]
            if endpoint.session is not None:
                dropped.append(endpoint.session)
        self.members = used
        return dropped

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._probe_forever(), name="upstream-probes"),
                       loop.create_task(self._discover_forever(), name="upstream-discovery")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for endpoint in self.endpoints.values():
            if endpoint.session is not None:
                await endpoint.session.close()
        self.endpoints.clear()

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.shared.policy.probe_interval)
            await self.probe_all()

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(e) for e in list(self.endpoints.values())))

    async def probe(self, endpoint: Endpoint) -> None:
        up, reason = await self._check(endpoint)
        endpoint.checked = self.wall()
        if up is None:  # no answer in time: a busy server is slow, a wedged one silent
            endpoint.slow += 1
            if endpoint.slow < SLOW_PROBES_DOWN:
                return
            up = False
        else:
            endpoint.slow = 0
        was = endpoint.up
        endpoint.up, endpoint.reason = up, reason
        if was is up:
            return
        self.shared.changed()
        if up:
            for member in self.members.get(id(endpoint), ()):
                member.out.succeeded()  # verified back: its ejection ends now
            if was is False:
                logger.info("upstream %s is back", endpoint.label,
                            extra={"component": "gateway"})
        else:
            logger.warning("upstream %s is down: %s", endpoint.label, reason,
                           extra={"component": "gateway"})

    async def _check(self, endpoint: Endpoint) -> tuple[bool | None, str]:
        """(up, why not); up None: no answer within the probe timeout."""
        timeout = self.config.upstream_probe_timeout
        try:
            async with asyncio.timeout(timeout):
                if endpoint.probe == "/health":
                    status = await _status(endpoint, endpoint.root + "/health")
                    if 200 <= status < 300:
                        return True, ""
                    if status >= 500:
                        return False, f"GET /health answered {status}"
                    endpoint.probe = "/models"  # no /health here: its model list will do
                status = await _status(endpoint, endpoint.url + "/models")
                if 200 <= status < 300:
                    return True, ""
                return False, f"GET {endpoint.label}/models answered {status}"
        except TimeoutError:
            return None, f"no answer to {SLOW_PROBES_DOWN} health probes within {timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"unreachable: {_why(exc)}"

    async def _discover_forever(self) -> None:
        while True:
            self._rediscover.clear()
            if self.config.upstreams:
                await self.discover_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.upstream_discovery_interval):
                    await self._rediscover.wait()

    async def discover_all(self) -> None:
        """List every `[[upstreams]]` endpoint's models, and tell the router when the models
        they give changed. An endpoint that fails keeps its last listing."""
        sources = self.config.upstreams
        await asyncio.gather(*(self._discover(s) for s in sources))
        urls = {s.url for s in sources}
        for url in [u for u in self.listings if u not in urls]:
            del self.listings[url]
        models = discovered_models(sources, {u: lst.listed for u, lst in self.listings.items()},
                                   self.config.models)
        if models != self.discovered:
            self.discovered = models
            logger.info("discovered models: %s", ", ".join(m.name for m in models) or "none",
                        extra={"component": "gateway"})
            if self.on_models is not None:
                self.on_models(models)

    async def _discover(self, source: RemoteSource) -> None:
        listing = self.listings.setdefault(source.url, _Listing())
        endpoint = self.endpoint(source.url, source.api_key)
        timeout = self.config.upstream_probe_timeout
        try:
            async with asyncio.timeout(timeout):
                listed = parse_models(await _get(endpoint, source.url + "/models"))
        except TimeoutError:
            reason = f"no answer to GET /v1/models within {timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"unreachable: {_why(exc)}"
        except ValueError as exc:
            reason = str(exc)
        else:
            listing.listed, listing.ok, listing.reason = listed, True, ""
            listing.checked = self.wall()
            return
        if listing.ok is not False:
            logger.warning("cannot list the models of %s: %s", display_url(source.url), reason,
                           extra={"component": "gateway"})
        listing.ok, listing.reason, listing.checked = False, reason, self.wall()

    # ------------------------------------------------------------------ showing

    def source_status(self) -> list[SourceStatus]:
        out = []
        for source in self.config.upstreams:
            listing = self.listings.get(source.url, _Listing())
            state = "pending" if listing.ok is None else "ok" if listing.ok else "error"
            count = sum(1 for m in self.discovered
                        if any(r.url == source.url for r in m.upstreams))
            out.append(SourceStatus(url=display_url(source.url), state=state, models=count,
                                    reason=listing.reason, checked_at=listing.checked))
        return out

    def retry_after(self) -> int:
        return max(1, math.ceil(self.shared.policy.probe_interval))


async def _status(endpoint: Endpoint, url: str) -> int:
    assert endpoint.session is not None
    async with endpoint.session.get(url) as resp:
        await resp.read()
        return resp.status


async def _get(endpoint: Endpoint, url: str) -> bytes:
    """A GET's body (ValueError for an error status or a body too large to be a listing)."""
    assert endpoint.session is not None
    async with endpoint.session.get(url) as resp:
        if resp.status != 200:
            raise ValueError(f"GET /v1/models answered {resp.status}")
        parts: list[bytes] = []
        size = 0
        while chunk := await resp.content.readany():
            size += len(chunk)
            if size > MAX_LISTING:
                raise ValueError(f"GET /v1/models answered more than {MAX_LISTING} bytes")
            parts.append(chunk)
        return b"".join(parts)


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error or exc)
    return str(exc) or type(exc).__name__


def group_statuses(groups: Sequence[tuple[str, Group]]) -> list[dict[str, object]]:
    """Per model, its members' states (for /health)."""
    return [{"model": name, "ready": group.ready(),
             "members": msgspec.to_builtins(group.status())}
            for name, group in groups]


def metric_rows(groups: Sequence[tuple[str, Group]]) -> list[list[object]]:
    """The rows of vllama.gateway.metrics.UPSTREAM_ROW for these groups."""
    return [[name, m.upstream, m.state, m.in_flight, m.ejections]
            for name, group in groups for m in group.status()]
