"""Restart policy for one engine (pure: times and randomness are passed in).

Exponential delay with a cap and jitter, so engines that crashed together do not restart in
lockstep; the exponent resets once a child has run stably. An engine that has served is always
restarted (a runtime crash or a wedge is transient, and giving up would take a healthy model
away for good). Only a start-up loop gives up: too many children inside a window that never
became ready would fail the same way again, burning GPU time.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec


class BackoffPolicy(msgspec.Struct, frozen=True):
    initial: float = 1.0
    maximum: float = 60.0
    restart_max: int = 5  # start-up failures allowed within `window`; the next one gives up
    window: float = 600.0
    stable_after: float = 300.0  # uptime after which a child counts as healthy again
    jitter: float = 0.2  # +-20 % of the delay


class Backoff:
    """Failure history of one engine. One instance per engine; not shared."""

    def __init__(self, policy: BackoffPolicy, rand: Callable[[], float]) -> None:
        self.policy = policy
        self._rand = rand
        self._failures: list[float] = []  # start-up failures still inside the window
        self._streak = 0  # consecutive failures since the last stable run: the exponent

    @property
    def streak(self) -> int:
        return self._streak

    def delay_for(self, streak: int) -> float:
        """Delay before restart number `streak` (1-based), jittered, never above the cap."""
        p = self.policy
        base = min(p.maximum, p.initial * (2.0 ** max(streak - 1, 0)))
        jittered = base * (1.0 + p.jitter * (2.0 * self._rand() - 1.0))
        return max(0.0, min(p.maximum, jittered))

    def record_failure(self, now: float, uptime: float | None) -> float | None:
        """Note a failure at `now` of a child that served for `uptime` s (None: it never
        became ready); the delay before the restart, or None when the engine should give
        up, which only a start-up loop does."""
        p = self.policy
        if uptime is not None:
            self._failures.clear()  # it served: the start-up loop, if any, is over
            if uptime >= p.stable_after:
                self._streak = 0
        else:
            self._failures = [t for t in self._failures if now - t < p.window]
            self._failures.append(now)
            if len(self._failures) > p.restart_max:
                return None
        self._streak += 1
        return self.delay_for(self._streak)

    def reset(self) -> None:
        self._failures.clear()
        self._streak = 0
