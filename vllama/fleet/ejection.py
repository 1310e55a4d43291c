"""Passive ejection: a member whose request failed (connection error, 5xx) is left out for a
while, twice as long after each failure in a row (capped), and tried again after that; one
success makes it healthy again. Pure: the caller passes the clock."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float  # seconds out after the first failure
    maximum: float  # the cap

    def delay(self, failures: int) -> float:
        """Seconds out after `failures` failures in a row (>= 1)."""
        if failures <= 0:
            return 0.0
        # 2**n overflows float range past ~1000 failures; the cap is reached long before.
        return min(self.initial * 2.0 ** min(failures - 1, 60), self.maximum)


class Ejection:
    """One member's passive health. Mutated only on the event loop (no lock)."""

    __slots__ = ("ejections", "failures", "reason", "until")

    def __init__(self) -> None:
        self.failures = 0  # failures in a row
        self.until = 0.0  # ejected while now < until
        self.reason = ""
        self.ejections = 0  # times ejected, for /metrics

    def ejected(self, now: float) -> bool:
        return now < self.until

    def failed(self, now: float, reason: str, backoff: Backoff) -> float:
        """Record a failure: eject for the backoff's delay; returns when it ends."""
        self.failures += 1
        self.ejections += 1
        self.reason = reason
        self.until = now + backoff.delay(self.failures)
        return self.until

    def succeeded(self) -> bool:
        """Record a success; True when this ends a run of failures (a state change)."""
        changed = self.failures > 0
        if changed:
            self.failures = 0
            self.until = 0.0
            self.reason = ""
        return changed
