"""Picking a member: health, ejection, least load with ties in turn, affinity within the bound.
A Group over endpoints without sessions and a hand-moved clock: no I/O."""

from __future__ import annotations

from collections import Counter

from vllama.fleet.ejection import Backoff
from vllama.fleet.members import Endpoint, Group, Member, Policy, Shared


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def group_of(count: int, *, affinity: bool = True, load: float = 1.25,
             local: bool = False) -> tuple[Group, list[Member], Clock]:
    clock = Clock()
    shared = Shared(Policy(backoff=Backoff(1.0, 8.0), affinity=affinity, affinity_load=load),
                    clock)
    members = [Member(None, "m")] if local else []
    members += [Member(Endpoint(f"http://10.0.0.{i}:8000/v1", "", None), "m")
                for i in range(count)]
    return Group("m", members, shared), members, clock


def take(group: Group, key: bytes | None = None) -> Member:
    """Pick and hold (a request in flight), as upstream_call does."""
    member = group.pick(key)
    assert member is not None
    member.in_flight += 1
    group.in_flight += 1
    return member


def test_least_loaded_and_ties_take_turns() -> None:
    group, members, _ = group_of(3, affinity=False)
    first = [take(group) for _ in range(3)]
    assert sorted(m.label for m in first) == sorted(m.label for m in members)  # one each
    members[1].in_flight = 0
    group.in_flight = 2
    assert group.pick(None) is members[1]  # the idle one
    for m in members:
        m.in_flight = 0
    picks = Counter(group.pick(None).label for _ in range(300))  # type: ignore[union-attr]
    assert len(picks) == 3 and min(picks.values()) == 100  # idle members share the work


def test_a_down_member_gets_nothing_and_comes_back() -> None:
    group, members, _ = group_of(2)
    members[0].endpoint.up = False  # type: ignore[union-attr]
    group.shared.changed()  # what a probe does on a change
    assert {group.pick(bytes([i])) for i in range(50)} == {members[1]}
    members[0].endpoint.up = True  # type: ignore[union-attr]
    group.shared.changed()
    assert {group.pick(bytes([i])) for i in range(50)} == set(members)


def test_every_member_down_leaves_none() -> None:
    group, members, _ = group_of(2)
    for m in members:
        m.endpoint.up = False  # type: ignore[union-attr]
    group.shared.changed()
    assert group.pick(b"k") is None and group.pick(None) is None
    assert not group.ready()


def test_an_ejected_member_is_left_out_until_its_backoff_ends() -> None:
    group, members, clock = group_of(2, affinity=False)
    group.failed(members[0], "connection refused")
    assert members[0].state(clock.now) == "ejected"
    assert {group.pick(None) for _ in range(10)} == {members[1]}
    clock.now += 1.0  # the first ejection lasts initial = 1 s; no version change needed
    assert {group.pick(None) for _ in range(10)} == set(members)
    group.failed(members[0], "connection refused")  # tried again, failed again: 2 s
    clock.now += 1.5
    assert {group.pick(None) for _ in range(10)} == {members[1]}
    clock.now += 0.5
    assert members[0] in {group.pick(None) for _ in range(10)}
    group.succeeded(members[0])
    assert (members[0].out.failures, members[0].state(clock.now)) == (0, "up")


def test_a_group_never_ejects_its_last_members() -> None:
    # One upstream that answered 500 once is still tried: refusing would only turn one
    # failure into many. (Down by probe is different: see above.)
    group, members, _ = group_of(1)
    group.failed(members[0], "500")
    assert group.pick(None) is members[0]
    group, members, _ = group_of(2)
    group.failed(members[0], "500")
    group.failed(members[1], "500")
    assert group.pick(None) in members
    assert group.ready()


def test_tried_members_are_not_picked_again() -> None:
    group, members, _ = group_of(3)
    first = group.pick(b"conversation")
    assert first is not None
    second = group.pick(b"conversation", [first])
    assert second is not None and second is not first
    third = group.pick(b"conversation", [first, second])
    assert third is not None and third not in (first, second)
    assert group.pick(b"conversation", members) is None


def test_affinity_keeps_a_conversation_on_one_member() -> None:
    group, _, _ = group_of(3)
    homes = {}
    for i in range(30):
        key = f"conversation {i}".encode()
        homes[key] = group.pick(key)
    assert len(set(homes.values())) == 3  # conversations spread
    for key, home in homes.items():  # ... and each comes back to its member
        assert group.pick(key) is home


def test_affinity_yields_to_the_load_bound() -> None:
    group, members, _ = group_of(2, load=1.25)
    key = b"one very popular conversation"
    home = group.pick(key)
    assert home is not None
    held = [take(group, key) for _ in range(8)]
    # The bound is ceil(1.25 * (n + 1) / 2): the home member takes up to that, the other
    # one the rest, so neither goes past 1.25x the average.
    assert Counter(m is home for m in held) == Counter({True: 5, False: 3})
    other = next(m for m in members if m is not home)
    assert other.in_flight == 3
    for m in members:  # the load is gone: the conversation goes home again
        m.in_flight = 0
    group.in_flight = 0
    assert group.pick(key) is home


def test_least_loaded_ignores_the_key() -> None:
    group, members, _ = group_of(2, affinity=False)
    picks = {group.pick(b"same conversation") for _ in range(4)}
    assert picks == set(members)


def test_a_local_member_is_never_down() -> None:
    group, members, _ = group_of(1, local=True)
    assert members[0].local and members[0].label == "local"
    members[1].endpoint.up = False  # type: ignore[union-attr]
    group.shared.changed()
    assert group.pick(None) is members[0]
    assert group.ready()
    assert [s.state for s in group.status()] == ["up", "down"]
