"""The bounded-load hash ring: stable, spread, bounded, and minimal movement."""

from __future__ import annotations

from collections import Counter

import pytest

from vllama.fleet.ring import Ring, load_bound, stable_hash


def test_stable_hash_is_the_same_in_every_process() -> None:
    # A fixed value: Python's hash() would differ per process (PYTHONHASHSEED), and gateway
    # workers must agree on where a conversation goes.
    assert stable_hash(b"conversation") == 0x5299C67A4629BC40  # blake2b-64, big-endian
    assert stable_hash(b"a") != stable_hash(b"b")
    assert 0 <= stable_hash(b"") < 2**64


@pytest.mark.parametrize(
    ("total", "eligible", "factor", "bound"),
    [
        (0, 2, 1.25, 1),  # an idle group: one request each before the bound bites
        (3, 2, 1.25, 3),  # ceil(1.25 * 4 / 2) = 3
        (10, 4, 1.25, 4),  # ceil(1.25 * 11 / 4) = ceil(3.4375)
        (10, 4, 1.0, 3),  # factor 1: never above the average (rounded up)
        (99, 100, 1.25, 2),
        (5, 0, 1.25, 8),  # no eligible member: the bound is moot, but defined
    ],
)
def test_load_bound(total: int, eligible: int, factor: float, bound: int) -> None:
    assert load_bound(total, eligible, factor) == bound


def test_a_key_always_maps_to_the_same_member() -> None:
    ring = Ring(["a", "b", "c"])
    for i in range(100):
        key = stable_hash(f"k{i}".encode())
        first = ring.pick(key, lambda _: True)
        assert first is not None
        assert all(ring.pick(key, lambda _: True) == first for _ in range(3))


def test_keys_spread_over_members() -> None:
    ring = Ring([f"http://10.0.0.{i}:8000/v1" for i in range(4)])
    counts = Counter(ring.pick(stable_hash(f"conversation {i}".encode()), lambda _: True)
                     for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 4000 / 4 * 0.6, counts  # no member starved


def test_losing_a_member_moves_only_its_keys() -> None:
    labels = ["a", "b", "c", "d"]
    ring = Ring(labels)
    keys = [stable_hash(f"k{i}".encode()) for i in range(2000)]
    before = {k: ring.pick(k, lambda _: True) for k in keys}
    after = {k: ring.pick(k, lambda i: i != 1) for k in keys}  # member 1 is down
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == 1 for k in moved)
    # ...and when it comes back, its keys come back to it.
    assert {k: ring.pick(k, lambda _: True) for k in keys} == before


def test_a_loaded_member_passes_its_keys_to_the_next_one_clockwise() -> None:
    ring = Ring(["a", "b", "c"])
    key = stable_hash(b"hot conversation")
    home = ring.pick(key, lambda _: True)
    assert home is not None
    spill = ring.pick(key, lambda i: i != home)
    assert spill is not None and spill != home
    # The spill target is stable too (the next member on the ring, not a random one).
    assert ring.pick(key, lambda i: i != home) == spill


def test_skip_and_none() -> None:
    ring = Ring(["a", "b"])
    key = stable_hash(b"k")
    assert ring.pick(key, lambda _: False) is None
    assert ring.pick(key, lambda _: True, skip=[0, 1]) is None
    only = ring.pick(key, lambda _: True, skip=[0])
    assert only == 1
    assert Ring([]).pick(key, lambda _: True) is None


def test_each_member_is_asked_once() -> None:
    ring = Ring(["a", "b", "c"])
    asked: list[int] = []

    def accepts(i: int) -> bool:
        asked.append(i)
        return False

    assert ring.pick(stable_hash(b"k"), accepts) is None
    assert sorted(asked) == [0, 1, 2]
