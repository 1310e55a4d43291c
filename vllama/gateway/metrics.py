"""Prometheus text exposition without a client library: a few counters and histograms the
gateway updates on every request. Updates are plain dict operations on the event loop thread,
so no lock is needed (and none is taken on the request path)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.series: dict[tuple[tuple[str, str], ...], list[float]] = {}

    def observe(self, labels: tuple[tuple[str, str], ...], value: float) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)  # buckets, sum, count
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                row[i] += 1
        row[-2] += value
        row[-1] += 1

    def lines(self, name: str) -> Iterable[str]:
        for labels, row in self.series.items():
            for i, bound in enumerate(self.buckets):
                yield f"{name}_bucket{_labels((*labels, ('le', f'{bound:g}')))} {row[i]:g}"
            yield f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {row[-1]:g}"
            yield f"{name}_sum{_labels(labels)} {row[-2]:g}"
            yield f"{name}_count{_labels(labels)} {row[-1]:g}"


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[tuple[str, str], ...], float] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tokens: dict[tuple[tuple[str, str], ...], float] = {}
        self.in_flight = 0
        # Gauges owned elsewhere (engines, GPUs) are read at scrape time through collectors.
        self.collectors: list[Callable[[], Iterable[str]]] = []

    def request_done(self, route: str, method: str, status: int, model: str,
                     seconds: float) -> None:
        key = (("route", route), ("method", method), ("status", str(status)), ("model", model))
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.observe((("route", route), ("model", model)), seconds)

    def first_token(self, route: str, model: str, seconds: float) -> None:
        self.ttft.observe((("route", route), ("model", model)), seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        for kind, n in (("prompt", prompt), ("completion", completion)):
            if n:
                key = (("model", model), ("kind", kind))
                self.tokens[key] = self.tokens.get(key, 0) + n

    def render(self) -> str:
        out = [
            "# HELP vllama_requests_total Gateway requests by route, method, status and model.",
            "# TYPE vllama_requests_total counter",
            *(f"vllama_requests_total{_labels(k)} {v:g}" for k, v in self.requests.items()),
            "# HELP vllama_request_duration_seconds Gateway request latency (to the last byte).",
            "# TYPE vllama_request_duration_seconds histogram",
            *self.latency.lines("vllama_request_duration_seconds"),
            "# HELP vllama_time_to_first_token_seconds Time to the first streamed token.",
            "# TYPE vllama_time_to_first_token_seconds histogram",
            *self.ttft.lines("vllama_time_to_first_token_seconds"),
            "# HELP vllama_tokens_total Tokens processed, from upstream usage.",
            "# TYPE vllama_tokens_total counter",
            *(f"vllama_tokens_total{_labels(k)} {v:g}" for k, v in self.tokens.items()),
            "# HELP vllama_requests_in_flight Requests being served now.",
            "# TYPE vllama_requests_in_flight gauge",
            f"vllama_requests_in_flight {self.in_flight}",
        ]
        for collect in self.collectors:
            out.extend(collect())
        return "\n".join(out) + "\n"


def gauge(name: str, help_text: str, rows: Iterable[tuple[tuple[tuple[str, str], ...], float]],
          kind: str = "gauge") -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    out.extend(f"{name}{_labels(labels)} {value:g}" for labels, value in rows)
    return out
