"""The statistics of `vllama bench`: percentiles, rates and comparisons, checked exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllama.bench.stats import Sample, compare, percentile, summarize


def test_percentile_known_values() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=50),
       st.sampled_from([0, 1, 10, 50, 90, 99, 100]))
def test_percentile_matches_numpy(values: list[float], q: int) -> None:
    result = percentile(values, q)
    assert result == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_summarize_rates_and_distributions() -> None:
    samples = [
        Sample(ok=True, latency=0.010, ttft=0.001, itls=[0.002, 0.004], frames=4,
               output_tokens=3, tokens_reported=True),
        Sample(ok=True, latency=0.030, ttft=0.003, itls=[0.006], frames=3, output_tokens=2,
               tokens_reported=True),
        Sample(ok=False, latency=0.5, error="HTTP 500: x"),
        Sample(ok=False, latency=0.5, error="HTTP 500: x"),
        Sample(ok=False, latency=0.1, error="timeout after 1 s"),
    ]
    s = summarize(8, samples, wall_s=0.5)
    assert (s.concurrency, s.requests, s.ok, s.errors) == (8, 5, 2, 3)
    assert s.requests_per_s == pytest.approx(4.0)  # 2 ok / 0.5 s
    assert s.output_tokens_per_s == pytest.approx(10.0)  # 5 tokens / 0.5 s
    assert s.frames_per_s == pytest.approx(14.0)
    assert s.output_tokens == 5 and s.tokens_reported
    assert s.ttft_ms.p50 == pytest.approx(2.0) and s.ttft_ms.count == 2
    assert s.itl_ms.count == 3 and s.itl_ms.p50 == pytest.approx(4.0)  # pooled gaps
    assert s.e2e_ms.mean == pytest.approx(20.0)  # failures excluded
    assert s.error_kinds == {"HTTP 500: x": 2, "timeout after 1 s": 1}


def test_summarize_counts_frames_when_tokens_unreported() -> None:
    s = summarize(1, [Sample(ok=True, latency=1.0, output_tokens=4, tokens_reported=False)], 1.0)
    assert not s.tokens_reported


def test_summarize_nothing_ok() -> None:
    s = summarize(1, [Sample(ok=False, latency=1.0, error="e")], 1.0)
    assert (s.requests_per_s, s.ttft_ms.p50, s.errors) == (0.0, None, 1)


def test_compare_ratios_and_added_latency() -> None:
    def level(tokens: int, ttft: float, wall: float) -> Sample:
        return Sample(ok=True, latency=ttft * 2, ttft=ttft, output_tokens=tokens,
                      tokens_reported=True)

    a = summarize(4, [level(100, 0.010, 1.0)], wall_s=1.0)
    b = summarize(4, [level(100, 0.012, 1.0)], wall_s=1.25)
    c = compare(a, b)
    assert c.output_tokens_per_s_ratio == pytest.approx(0.8)
    assert c.requests_per_s_ratio == pytest.approx(0.8)
    assert c.ttft_added_ms.p50 == pytest.approx(2.0)
    assert c.e2e_added_ms.p99 == pytest.approx(4.0)
    empty = summarize(4, [Sample(ok=False, latency=1.0, error="e")], 1.0)
    assert compare(empty, b).output_tokens_per_s_ratio is None
    assert compare(empty, b).ttft_added_ms.p50 is None
