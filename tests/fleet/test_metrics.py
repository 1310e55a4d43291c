"""The upstream series of /metrics, summed over gateway processes (each probes on its own)."""

from __future__ import annotations

import msgspec

from vllama.gateway.metrics import Metrics, upstream_lines


def test_each_process_view_is_counted() -> None:
    first, second = Metrics(), Metrics()
    first.upstreams = lambda: [["m", "http://a/v1", "up", 2, 0],
                               ["m", "http://b/v1", "down", 0, 3]]
    second.upstreams = lambda: [["m", "http://a/v1", "up", 1, 0],
                                ["m", "http://b/v1", "ejected", 0, 1]]
    total = Metrics()
    for worker in (first, second):  # what the main process does with the workers' dumps
        total.absorb(msgspec.msgpack.decode(msgspec.msgpack.encode(worker.dump())))
    text = total.render()
    assert 'vllama_upstream_state{model="m",upstream="http://a/v1",state="up"} 2' in text
    assert 'vllama_upstream_state{model="m",upstream="http://a/v1",state="down"} 0' in text
    assert 'vllama_upstream_state{model="m",upstream="http://b/v1",state="down"} 1' in text
    assert 'vllama_upstream_state{model="m",upstream="http://b/v1",state="ejected"} 1' in text
    assert 'vllama_upstream_requests_in_flight{model="m",upstream="http://a/v1"} 3' in text
    assert 'vllama_upstream_ejections_total{model="m",upstream="http://b/v1"} 4' in text
    assert "# TYPE vllama_upstream_ejections_total counter" in text


def test_no_groups_no_series() -> None:
    assert upstream_lines([]) == []
    assert "vllama_upstream" not in Metrics().render()
