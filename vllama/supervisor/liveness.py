"""Is a ready engine still working? (pure: the engine feeds it samples and times).

vLLM's /health answers 200 as long as its API server runs, even when the engine core is wedged
(a GPU hang, a deadlock: vllm#36960), and so does /metrics. What proves life is progress:
- while requests run (vLLM's own gauges say so), its token counters must rise;
- while it is idle, a tiny real request (one token) must complete.
An engine that shows no such evidence for `timeout` seconds is wedged. The gauges of a wedged
core freeze too (at "idle" when it wedged idle), so a frozen idle engine is caught by the tiny
request, a frozen busy one by the counters.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# Counters that rise with every engine step that does work (vLLM V1 metric names).
_PROGRESS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total",
             "vllm:iteration_tokens_total_count")
_BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting")


class Sample(msgspec.Struct, frozen=True):
    busy: bool  # requests running or waiting, by the engine's own gauges
    progress: float  # the sum of its work counters


def parse_metrics(text: str) -> Sample | None:
    """The sample in vLLM's Prometheus text; None when it carries none of the metrics (not a
    vLLM, or a version that renamed them: then only the tiny request tells)."""
    busy = 0.0
    progress = 0.0
    seen = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, rest = line.partition("{")
        if not rest:  # no labels: "name value"
            name, _, rest = line.partition(" ")
        else:
            rest = rest.rpartition("}")[2]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if name in _PROGRESS:
            progress += value
            seen = True
        elif name in _BUSY:
            busy += value
            seen = True
    return Sample(busy > 0, progress) if seen else None


Step = Literal["alive", "probe", "wait"]


class HangWatch:
    """Evidence of life for one ready engine. `timeout` seconds without any is a wedge."""

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self.last_alive = now  # becoming ready is evidence
        self._progress: float | None = None

    def observe(self, now: float, sample: Sample | None) -> Step:
        """One look at the metrics (None: they did not answer, or carry nothing we know).
        "alive": the counters moved; "probe": idle by its gauges and the evidence is getting
        old, so send a tiny request; "wait": nothing to conclude yet."""
        if sample is not None:
            moved = self._progress is not None and sample.progress != self._progress
            self._progress = sample.progress
            if moved:
                self.last_alive = now
                return "alive"
            if sample.busy:
                return "wait"  # work is pending and nothing moves: only time tells
        # Idle (or metrics we cannot read): probe once half the allowance is gone, so an idle
        # engine costs one tiny request per timeout/2 and a wedge is still caught in time.
        if now - self.last_alive >= self.timeout / 2:
            return "probe"
        return "wait"

    def probed(self, now: float, ok: bool) -> None:
        if ok:
            self.last_alive = now

    def remaining(self, now: float) -> float:
        """Seconds left before the engine counts as wedged."""
        return self.last_alive + self.timeout - now

    def wedged(self, now: float) -> bool:
        return self.remaining(now) <= 0
