"""Backoff: exponential, capped, jittered, reset after stable uptime; a start-up loop gives up
in a window, an engine that served never does."""

from __future__ import annotations

import pytest

from vllama.supervisor.backoff import Backoff, BackoffPolicy

POLICY = BackoffPolicy(
    initial=1.0, maximum=10.0, restart_max=5, window=100.0, stable_after=50.0, jitter=0.2
)


def mid() -> float:
    return 0.5  # no jitter


def test_delays_double_up_to_the_cap() -> None:
    b = Backoff(POLICY, mid)
    assert [b.record_failure(float(t), None) for t in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


@pytest.mark.parametrize(("rand", "delay"), [(0.0, 3.2), (1.0, 4.8), (0.5, 4.0)])
def test_jitter_bounds(rand: float, delay: float) -> None:
    b = Backoff(POLICY, lambda: rand)
    assert b.delay_for(3) == pytest.approx(delay)


def test_jitter_never_exceeds_cap() -> None:
    assert Backoff(POLICY, lambda: 1.0).delay_for(10) == 10.0


def test_a_start_up_loop_gives_up_after_restart_max_failures_in_window() -> None:
    b = Backoff(POLICY, mid)
    delays = [b.record_failure(float(t), None) for t in range(6)]
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert delays[5] is None


def test_an_engine_that_served_is_always_restarted_at_the_capped_delay() -> None:
    b = Backoff(POLICY, mid)
    delays = [b.record_failure(float(t), 1.0) for t in range(50)]  # crashes after serving 1 s
    assert None not in delays
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 10.0] and set(delays[4:]) == {10.0}


def test_serving_ends_a_start_up_loop() -> None:
    b = Backoff(POLICY, mid)
    for t in range(5):
        assert b.record_failure(float(t), None) is not None  # five start-up failures
    assert b.record_failure(5.0, 2.0) is not None  # then it served, and crashed
    # The count of start-up failures starts again: five more are allowed.
    assert all(b.record_failure(float(t), None) is not None for t in range(6, 11))
    assert b.record_failure(11.0, None) is None


def test_old_failures_leave_the_window() -> None:
    b = Backoff(POLICY, mid)
    for t in range(5):
        b.record_failure(float(t), None)
    assert b.record_failure(200.0, None) is not None


def test_stable_uptime_resets_the_exponent() -> None:
    b = Backoff(POLICY, mid)
    for t in range(3):
        b.record_failure(float(t), None)
    assert b.streak == 3
    assert b.record_failure(60.0, uptime=55.0) == 1.0
    assert b.streak == 1


def test_restart_max_zero_never_restarts() -> None:
    b = Backoff(BackoffPolicy(restart_max=0), mid)
    assert b.record_failure(0.0, None) is None


def test_reset() -> None:
    b = Backoff(POLICY, mid)
    for t in range(6):
        b.record_failure(float(t), None)
    b.reset()
    assert b.record_failure(7.0, None) == 1.0
