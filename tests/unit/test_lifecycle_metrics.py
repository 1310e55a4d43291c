"""The scheduler's events as Prometheus series (pure)."""

from __future__ import annotations

from vllama.gateway.metrics import LifecycleMetrics


def test_events_become_counters_gauges_and_a_histogram() -> None:
    m = LifecycleMetrics()
    for kind, model, reason in [("load", "a", "requested"), ("loaded", "a", ""),
                                ("load", "b", "requested"), ("evict", "b", "a"),
                                ("unload", "a", "evicted for b"), ("unload", "b", "idle"),
                                ("unload", "b", "keep_alive 0"), ("sleep", "c", "idle"),
                                ("wake", "c", ""), ("load_failed", "d", "out of memory"),
                                ("unload", "d", "load failed: out of memory")]:
        m.record(kind, model, reason)
    m.record("waited", "a", seconds=2.0)
    m.record("waited", "a", seconds=0.05)
    text = "\n".join(m.lines({"b": 3}, [("a", "loaded"), ("c", "sleeping")]))
    for line in [
        'vllama_model_loads_total{model="a"} 1',
        'vllama_model_loads_total{model="b"} 1',
        'vllama_model_load_failures_total{model="d"} 1',
        'vllama_model_unloads_total{model="a",reason="evicted"} 1',
        'vllama_model_unloads_total{model="b",reason="idle"} 1',
        'vllama_model_unloads_total{model="b",reason="keep_alive"} 1',
        'vllama_model_unloads_total{model="d",reason="load_failed"} 1',
        'vllama_model_evictions_total{model="a"} 1',
        'vllama_model_sleeps_total{model="c"} 1',
        'vllama_model_wakes_total{model="c"} 1',
        'vllama_queue_depth{model="b"} 3',
        'vllama_queue_wait_seconds_count{model="a"} 2',
        'vllama_queue_wait_seconds_bucket{model="a",le="0.1"} 1',
        'vllama_model_state{model="c",state="sleeping"} 1',
        "# TYPE vllama_queue_wait_seconds histogram",
        "# TYPE vllama_model_unloads_total counter",
    ]:
        assert line in text.splitlines(), line
