"""Endpoints, members and groups: the routing state of upstream groups in one gateway process.

An `Endpoint` is one remote base URL with its key: one connection pool and one active health
state (its probes), shared by every model reached there. A `Member` is one way to serve a
model: an endpoint and the model id it knows there, or the local engine (through the
scheduler's lease). A `Group` is a model's members and picks one per request.

Everything here is mutated on the event loop only, so nothing takes a lock; a pick is
O(members) at worst and O(1) in the common case (the eligible members are cached until a health
change or an ejection's end).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from vllama.fleet.ejection import Backoff, Ejection
from vllama.fleet.ring import Ring, load_bound, stable_hash


@dataclass(frozen=True)
class Policy:
    """The routing settings (from the config; replaced whole on reload)."""

    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0))
    affinity: bool = True
    affinity_bytes: int = 2000
    affinity_load: float = 1.25
    probe_interval: float = 5.0  # also the Retry-After of a model whose members are all down


class Shared:
    """What every group of a process reads: the policy, the clock, and a version that moves
    on every health change (groups cache their eligible members against it)."""

    __slots__ = ("clock", "policy", "version")

    def __init__(self, policy: Policy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.version = 0

    def changed(self) -> None:
        self.version += 1


def display_url(url: str) -> str:
    """A URL without any user:password part (what /health, /api/ps and logs show)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class MemberStatus(msgspec.Struct):
    """One member of a model's group, as /health and /api/ps show it."""

    upstream: str  # the base URL (without credentials), or "local"
    model: str  # the model id it knows
    state: str  # up, ejected (after failed requests, until it is tried again), down (probe)
    in_flight: int
    failures: int = 0  # failed requests in a row
    ejections: int = 0
    reason: str = ""
    checked_at: float | None = None  # wall time of the last probe


class Endpoint:
    """One remote OpenAI base URL (`http://h:8000/v1`) and its key."""

    __slots__ = ("api_key", "checked", "label", "probe", "reason", "root", "session", "slow",
                 "up", "url")

    def __init__(self, url: str, api_key: str, session: aiohttp.ClientSession | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.session = session
        # vLLM (and most servers) answer /health at the root, beside /v1.
        self.root = self.url[:-3] if self.url.endswith("/v1") else self.url
        self.label = display_url(self.url)
        self.up: bool | None = None  # None: not probed yet (counts as up)
        self.reason = ""
        self.checked: float | None = None  # wall time of the last probe
        self.probe = "/health"  # "/models" once /health turned out not to exist
        self.slow = 0  # probes in a row that got no answer in time


class Member:
    """One way a group serves its model: a remote endpoint, or the local engine."""

    __slots__ = ("context", "context_retry", "endpoint", "in_flight", "label", "model_id", "out")

    def __init__(self, endpoint: Endpoint | None, model_id: str) -> None:
        self.endpoint = endpoint
        self.model_id = model_id
        # A remote member's max_model_len from its /v1/models (0: not read yet, or unknown
        # until the monotonic time context_retry).
        self.context = 0
        self.context_retry = 0.0
        self.label = endpoint.label if endpoint is not None else "local"
        self.in_flight = 0
        self.out = Ejection()

    @property
    def local(self) -> bool:
        return self.endpoint is None

    @property
    def down(self) -> bool:
        """Its endpoint's last probe failed."""
        return self.endpoint is not None and self.endpoint.up is False

    def state(self, now: float) -> str:
        if self.down:
            return "down"
        return "ejected" if self.out.ejected(now) else "up"

    def reason(self, now: float) -> str:
        if self.down and self.endpoint is not None:
            return self.endpoint.reason
        return self.out.reason if self.out.ejected(now) else ""


_load = attrgetter("in_flight")


class Group:
    """A model's members, and the pick of one per request."""

    __slots__ = ("_cache", "_expires", "_index", "_turn", "_version", "in_flight", "members",
                 "name", "ring", "shared")

    def __init__(self, name: str, members: Sequence[Member], shared: Shared) -> None:
        self.name = name
        self.members = tuple(members)
        self.shared = shared
        self.ring = Ring([f"{m.label}\0{m.model_id}" for m in self.members]) \
            if len(self.members) > 1 else None
        self._index = {id(m): i for i, m in enumerate(self.members)}
        self.in_flight = 0
        self._turn = itertools.count()
        self._version = -1
        self._expires = 0.0
        self._cache: tuple[tuple[Member, ...], frozenset[int]] = ((), frozenset())

    def eligible(self, now: float) -> tuple[Member, ...]:
        """Members a request may go to: not down, not ejected. When every live member is
        ejected they are all eligible again (a group never ejects its last members: a
        request is better tried than refused); empty only when every member is down."""
        return self._eligible(now)[0]

    def _eligible(self, now: float) -> tuple[tuple[Member, ...], frozenset[int]]:
        if self._version == self.shared.version and now < self._expires:
            return self._cache
        live = [m for m in self.members if not m.down]
        ok = [m for m in live if not m.out.ejected(now)] or live
        ends = [m.out.until for m in live if m.out.ejected(now)]
        self._expires = min(ends) if ends and len(ok) < len(live) else math.inf
        self._version = self.shared.version
        self._cache = (tuple(ok), frozenset(self._index[id(m)] for m in ok))
        return self._cache

    def ready(self) -> bool:
        """At least one member is not down (the model can serve)."""
        return any(not m.down for m in self.members)

    def pick(self, key: bytes | None, tried: Collection[Member] = ()) -> Member | None:
        """The member for a request with this affinity key (None: by load alone), never one
        already tried for it; None when no member is left."""
        now = self.shared.clock()
        ok, indices = self._eligible(now)
        if not ok:
            return None
        if len(ok) == 1:
            only = ok[0]
            return None if only in tried else only
        policy = self.shared.policy
        if key is not None and policy.affinity and self.ring is not None:
            bound = load_bound(self.in_flight, len(ok), policy.affinity_load)
            members = self.members
            skip = [self._index[id(m)] for m in tried]
            index = self.ring.pick(stable_hash(key),
                                   lambda i: i in indices and members[i].in_flight < bound,
                                   skip)
            if index is not None:
                return members[index]
        return self._least_loaded(ok, tried)

    def _least_loaded(self, ok: Sequence[Member], tried: Collection[Member]) -> Member | None:
        """Fewest requests in flight; ties go round in turn (a scan starting at a rotating
        offset), so idle members share the work."""
        count = len(ok)
        start = next(self._turn) % count
        if not tried:  # the common case, scanned in C: from the offset on, then the rest
            head = min(ok[start:], key=_load)
            if start == 0:
                return head
            tail = min(ok[:start], key=_load)
            return tail if tail.in_flight < head.in_flight else head
        best: Member | None = None
        for step in range(count):
            member = ok[(start + step) % count]
            if member in tried:
                continue
            if best is None or member.in_flight < best.in_flight:
                best = member
        return best

    def status(self) -> list[MemberStatus]:
        now = self.shared.clock()
        return [MemberStatus(upstream=m.label, model=m.model_id, state=m.state(now),
                             in_flight=m.in_flight, failures=m.out.failures,
                             ejections=m.out.ejections, reason=m.reason(now),
                             checked_at=m.endpoint.checked if m.endpoint else None)
                for m in self.members]

    def failed(self, member: Member, reason: str) -> None:
        """A request to `member` failed before its first byte: eject it for a while."""
        member.out.failed(self.shared.clock(), reason, self.shared.policy.backoff)
        self.shared.changed()

    def succeeded(self, member: Member) -> None:
        """A request to `member` was answered: whatever slow probes suggested, it serves."""
        if member.endpoint is not None:
            member.endpoint.slow = 0
        if member.out.failures and member.out.succeeded():
            self.shared.changed()
