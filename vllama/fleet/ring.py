"""Consistent hashing with bounded load (Mirrokni, Thorup, Zadimoghaddam, 2016): a key goes to
the first member clockwise from its hash on a ring of virtual nodes, unless that member already
carries more than `factor` times the average load, in which case the walk goes on. The same
conversation prefix thus keeps landing on the same upstream (whose prefix cache holds it) while
no upstream is overloaded; adding or losing a member moves only its own share of keys.

Pure: the ring is built once per group; a lookup is a bisection and a short walk (the first
eligible member under the bound is almost always one of the first few points)."""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence

VNODES = 40  # points per member: load spread within ~10% for a handful of members


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per
    process, and every gateway worker must map a key to the same member)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def load_bound(total: int, eligible: int, factor: float) -> int:
    """The most requests in flight a member may have to take one more: ceil(factor x the
    average with this request counted). Always above the least loaded member's load, so
    a walk over the whole ring finds a taker."""
    return math.ceil(factor * (total + 1) / max(eligible, 1))


class Ring:
    """Member indices on a hash ring. `labels` name the members (their URL and model id), so
    a member keeps its points when others join or leave."""

    __slots__ = ("_hashes", "_owners", "size")

    def __init__(self, labels: Sequence[str], vnodes: int = VNODES) -> None:
        points = sorted((stable_hash(f"{label}#{i}".encode()), index)
                        for index, label in enumerate(labels) for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [owner for _, owner in points]
        self.size = len(labels)

    def pick(self, key: int, accepts: Callable[[int], bool],
             skip: Collection[int] = ()) -> int | None:
        """The first member clockwise from `key` that `accepts` (and is not in `skip`), or
        None when none does. Each member is asked at most once."""
        owners = self._owners
        if not owners:
            return None
        count = len(owners)
        start = bisect_left(self._hashes, key)
        seen: set[int] = set()
        for step in range(count):
            owner = owners[(start + step) % count]
            if owner in seen:
                continue
            seen.add(owner)
            if owner not in skip and accepts(owner):
                return owner
            if len(seen) == self.size:
                break
        return None
