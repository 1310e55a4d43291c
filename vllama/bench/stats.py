"""Per-request samples and their summary for one (target, concurrency level)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec


@dataclass(slots=True)
class Sample:
    """One request's outcome. Times in seconds (perf_counter)."""

    ok: bool
    latency: float  # start to end of body (or to failure)
    ttft: float | None = None  # None when not streamed or no text arrived
    itls: list[float] = field(default_factory=list)
    frames: int = 0
    output_tokens: int = 0
    tokens_reported: bool = False
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks, the
    same as numpy's default; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Dist(msgspec.Struct):
    """A latency distribution in milliseconds."""

    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    count: int


def dist_ms(values: Sequence[float]) -> Dist:
    ms = [v * 1000.0 for v in values]
    return Dist(p50=percentile(ms, 50), p90=percentile(ms, 90), p99=percentile(ms, 99),
                mean=(sum(ms) / len(ms)) if ms else None, count=len(ms))


class LevelStats(msgspec.Struct):
    """The summary of every request one target got at one concurrency level (all rounds)."""

    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float  # summed over rounds: the time requests were in flight
    requests_per_s: float
    output_tokens_per_s: float
    frames_per_s: float
    output_tokens: int
    tokens_reported: bool  # every ok request reported its token count (else frames counted)
    ttft_ms: Dist
    itl_ms: Dist
    e2e_ms: Dist
    error_kinds: dict[str, int]


def summarize(concurrency: int, samples: Sequence[Sample], wall_s: float) -> LevelStats:
    """Rates use successful requests only, over the wall time of the runs."""
    good = [s for s in samples if s.ok]
    tokens = sum(s.output_tokens for s in good)
    frames = sum(s.frames for s in good)
    wall = wall_s if wall_s > 0 else float("nan")
    kinds = Counter(s.error or "unknown error" for s in samples if not s.ok)
    return LevelStats(
        concurrency=concurrency,
        requests=len(samples),
        ok=len(good),
        errors=len(samples) - len(good),
        wall_s=wall_s,
        requests_per_s=len(good) / wall if good else 0.0,
        output_tokens_per_s=tokens / wall if good else 0.0,
        frames_per_s=frames / wall if good else 0.0,
        output_tokens=tokens,
        tokens_reported=bool(good) and all(s.tokens_reported for s in good),
        ttft_ms=dist_ms([s.ttft for s in good if s.ttft is not None]),
        itl_ms=dist_ms([gap for s in good for gap in s.itls]),
        e2e_ms=dist_ms([s.latency for s in good]),
        error_kinds=dict(kinds.most_common(5)),
    )


class Comparison(msgspec.Struct):
    """B against A at one level: throughput as ratios B/A, latency as differences B-A (ms)."""

    requests_per_s_ratio: float | None
    output_tokens_per_s_ratio: float | None
    frames_per_s_ratio: float | None
    ttft_added_ms: Dist
    itl_added_ms: Dist
    e2e_added_ms: Dist


def _ratio(b: float, a: float) -> float | None:
    return b / a if a > 0 else None


def _minus(b: Dist, a: Dist) -> Dist:
    def sub(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x - y
    return Dist(p50=sub(b.p50, a.p50), p90=sub(b.p90, a.p90), p99=sub(b.p99, a.p99),
                mean=sub(b.mean, a.mean), count=min(a.count, b.count))


def compare(a: LevelStats, b: LevelStats) -> Comparison:
    """Percentile differences, not differences of paired requests: the runs are interleaved,
    not paired, so that is what can be said soundly."""
    return Comparison(
        requests_per_s_ratio=_ratio(b.requests_per_s, a.requests_per_s),
        output_tokens_per_s_ratio=_ratio(b.output_tokens_per_s, a.output_tokens_per_s),
        frames_per_s_ratio=_ratio(b.frames_per_s, a.frames_per_s),
        ttft_added_ms=_minus(b.ttft_ms, a.ttft_ms),
        itl_added_ms=_minus(b.itl_ms, a.itl_ms),
        e2e_added_ms=_minus(b.e2e_ms, a.e2e_ms),
    )
