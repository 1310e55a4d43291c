"""Passive ejection: backoff doubling to a cap, and a success ends it."""

from __future__ import annotations

import pytest

from vllama.fleet.ejection import Backoff, Ejection


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (50, 30.0), (5000, 30.0)],
)
def test_backoff_doubles_to_the_cap(failures: int, delay: float) -> None:
    assert Backoff(1.0, 30.0).delay(failures) == delay


def test_a_failure_ejects_until_the_delay_ends() -> None:
    out = Ejection()
    backoff = Backoff(2.0, 10.0)
    assert not out.ejected(100.0)
    assert out.failed(100.0, "refused", backoff) == 102.0
    assert out.ejected(101.9) and not out.ejected(102.0)
    assert out.reason == "refused"
    # Tried again after the delay and failed again: out twice as long.
    assert out.failed(102.0, "refused", backoff) == 106.0
    assert out.failed(106.0, "refused", backoff) == 114.0
    assert out.failed(114.0, "refused", backoff) == 124.0  # capped at 10 s
    assert (out.failures, out.ejections) == (4, 4)


def test_a_success_ends_the_run() -> None:
    out = Ejection()
    backoff = Backoff(1.0, 30.0)
    assert not out.succeeded()  # nothing to end
    out.failed(0.0, "503", backoff)
    out.failed(1.0, "503", backoff)
    assert out.succeeded()
    assert (out.failures, out.until, out.reason) == (0, 0.0, "")
    assert not out.ejected(1.5)
    assert out.ejections == 2  # the count for /metrics stays
    assert out.failed(5.0, "503", backoff) == 6.0  # a new run starts from the first delay


def test_zero_initial_means_no_ejection() -> None:
    out = Ejection()
    out.failed(10.0, "x", Backoff(0.0, 30.0))
    assert not out.ejected(10.0)
