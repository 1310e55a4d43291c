"""Prometheus text exposition without a client library: a few counters and histograms the
gateway updates on every request. Updates are plain dict operations on the event loop thread,
so no lock is needed (and none is taken on the request path).

The request path stores flat tuples of label *values* (one tuple build, one dict update) and
one bucket count per observation (found by bisection); label pairs, cumulative bucket counts
and text are built only at scrape time, which is rare next to requests."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ROUTE_MODEL = ("route", "model")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _pairs(names: tuple[str, ...], values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(zip(names, values, strict=True))


class Histogram:
    """Series keyed by label values (names fixed per histogram). Each row holds one count per
    bucket (not cumulative: one increment per observation), then +Inf-only count, sum, count."""

    def __init__(self, buckets: tuple[float, ...], names: tuple[str, ...] = ROUTE_MODEL) -> None:
        self.buckets = buckets
        self.names = names
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, values: tuple[str, ...], value: float) -> None:
        row = self.series.get(values)
        if row is None:
            # per bucket, over the last bound, sum, count
            row = self.series[values] = [0.0] * (len(self.buckets) + 3)
        row[bisect_left(self.buckets, value)] += 1  # first bound >= value (le semantics)
        row[-2] += value
        row[-1] += 1

    def add(self, values: tuple[str, ...], row: Sequence[float]) -> None:
        """Add another histogram's row (same buckets) to this series."""
        mine = self.series.get(values)
        if mine is None:
            self.series[values] = list(row)
            return
        for i, count in enumerate(row):
            mine[i] += count

    def lines(self, name: str) -> Iterable[str]:
        for values, row in self.series.items():
            labels = _pairs(self.names, values)
            cumulative = 0.0
            for i, bound in enumerate(self.buckets):
                cumulative += row[i]
                yield f"{name}_bucket{_labels((*labels, ('le', f'{bound:g}')))} {cumulative:g}"
            yield f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {row[-1]:g}"
            yield f"{name}_sum{_labels(labels)} {row[-2]:g}"
            yield f"{name}_count{_labels(labels)} {row[-1]:g}"


REQUEST_LABELS = ("route", "method", "status", "model")
TOKEN_LABELS = ("model", "kind")


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int, str], float] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tokens: dict[tuple[str, str], float] = {}
        self.in_flight = 0
        # Gauges owned elsewhere (engines, GPUs) are read at scrape time through collectors.
        self.collectors: list[Callable[[], Iterable[str]]] = []
        # This process's upstream groups, read at scrape time (the router sets it): rows of
        # UPSTREAM_ROW; and the rows other gateway processes sent (absorbed).
        self.upstreams: Callable[[], list[list[Any]]] | None = None
        self.absorbed_upstreams: list[list[Any]] = []

    def request_done(self, route: str, method: str, status: int, model: str,
                     seconds: float) -> None:
        key = (route, method, status, model)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.observe((route, model), seconds)

    def first_token(self, route: str, model: str, seconds: float) -> None:
        self.ttft.observe((route, model), seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        if prompt:
            key = (model, "prompt")
            self.tokens[key] = self.tokens.get(key, 0) + prompt
        if completion:
            key = (model, "completion")
            self.tokens[key] = self.tokens.get(key, 0) + completion

    def dump(self) -> dict[str, Any]:
        """The counts, as plain values another process can add to its own (gateway
        workers: the main process answers /metrics for the whole daemon)."""
        return {"requests": [[*k, v] for k, v in self.requests.items()],
                "latency": [[*k, row] for k, row in self.latency.series.items()],
                "ttft": [[*k, row] for k, row in self.ttft.series.items()],
                "tokens": [[*k, v] for k, v in self.tokens.items()],
                "in_flight": self.in_flight,
                "upstreams": self._upstream_rows()}

    def _upstream_rows(self) -> list[list[Any]]:
        own = self.upstreams() if self.upstreams is not None else []
        return [*own, *self.absorbed_upstreams]

    def absorb(self, data: Mapping[str, Any]) -> None:
        """Add another process's `dump()` to these counts."""
        for route, method, status, model, value in data.get("requests", ()):
            key = (route, method, int(status), model)
            self.requests[key] = self.requests.get(key, 0) + value
        for name, histogram in (("latency", self.latency), ("ttft", self.ttft)):
            for *labels, row in data.get(name, ()):
                histogram.add(tuple(labels), row)
        for model, kind, value in data.get("tokens", ()):
            self.tokens[(model, kind)] = self.tokens.get((model, kind), 0) + value
        self.in_flight += int(data.get("in_flight", 0))
        self.absorbed_upstreams.extend(data.get("upstreams", ()))

    def render(self) -> str:
        requests = (
            f"vllama_requests_total{_labels(_pairs(REQUEST_LABELS, (r, m, str(s), mo)))} {v:g}"
            for (r, m, s, mo), v in self.requests.items())
        tokens = (f"vllama_tokens_total{_labels(_pairs(TOKEN_LABELS, k))} {v:g}"
                  for k, v in self.tokens.items())
        out = [
            "# HELP vllama_requests_total Gateway requests by route, method, status and model.",
            "# TYPE vllama_requests_total counter",
            *requests,
            "# HELP vllama_request_duration_seconds Gateway request latency (to the last byte).",
            "# TYPE vllama_request_duration_seconds histogram",
            *self.latency.lines("vllama_request_duration_seconds"),
            "# HELP vllama_time_to_first_token_seconds Time to the first streamed token.",
            "# TYPE vllama_time_to_first_token_seconds histogram",
            *self.ttft.lines("vllama_time_to_first_token_seconds"),
            "# HELP vllama_tokens_total Tokens processed, from upstream usage.",
            "# TYPE vllama_tokens_total counter",
            *tokens,
            "# HELP vllama_requests_in_flight Requests being served now.",
            "# TYPE vllama_requests_in_flight gauge",
            f"vllama_requests_in_flight {self.in_flight}",
        ]
        out += upstream_lines(self._upstream_rows())
        for collect in self.collectors:
            out.extend(collect())
        return "\n".join(out) + "\n"


def gauge(name: str, help_text: str, rows: Iterable[tuple[tuple[tuple[str, str], ...], float]],
          kind: str = "gauge") -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    out.extend(f"{name}{_labels(labels)} {value:g}" for labels, value in rows)
    return out


# One member of one model's group, as one gateway process sees it.
UPSTREAM_ROW = ("model", "upstream", "state", "in_flight", "ejections")
UPSTREAM_STATES = ("up", "ejected", "down")


def upstream_lines(rows: Iterable[Sequence[Any]]) -> list[str]:
    """The upstream groups' series, summed over the gateway processes that reported them
    (each probes on its own): how many see each member in each state, its requests in
    flight, its ejections."""
    states: dict[tuple[str, str, str], float] = {}
    in_flight: dict[tuple[str, str], float] = {}
    ejections: dict[tuple[str, str], float] = {}
    for model, upstream, state, flying, ejected in rows:
        for name in UPSTREAM_STATES:
            key = (model, upstream, name)
            states[key] = states.get(key, 0) + (name == state)
        in_flight[(model, upstream)] = in_flight.get((model, upstream), 0) + flying
        ejections[(model, upstream)] = ejections.get((model, upstream), 0) + ejected
    if not states:
        return []

    def pairs(key: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        return tuple(zip(("model", "upstream", "state"), key, strict=False))

    out = gauge("vllama_upstream_state", "Gateway processes that see a model's upstream in "
                "each state (up, ejected after failed requests, down by its health probe).",
                [(pairs(k), v) for k, v in states.items()])
    out += gauge("vllama_upstream_requests_in_flight", "Requests in flight to each upstream "
                 "of a model.", [(pairs(k), v) for k, v in in_flight.items()])
    out += gauge("vllama_upstream_ejections_total", "Times an upstream was ejected after a "
                 "failed request.", [(pairs(k), v) for k, v in ejections.items()],
                 kind="counter")
    return out


WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# What the scheduler's events count as (the reason's first word keeps the label set small).
_UNLOAD_REASONS = {"idle": "idle", "keep_alive": "keep_alive", "asked": "asked",
                   "evicted": "evicted", "config": "config", "load": "load_failed"}


class LifecycleMetrics:
    """Model loads, unloads, evictions, sleeps and queue waits, from the scheduler's events;
    the queue depth and model states are read from the scheduler at scrape time."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], float] = {}  # (metric, model, reason)
        self.waits = Histogram(WAIT_BUCKETS, ("model",))

    def record(self, kind: str, model: str, reason: str = "", seconds: float = 0.0) -> None:
        if kind == "waited":
            self.waits.observe((model,), seconds)
            return
        if kind == "evict":  # `model` loads; `reason` lists the models that made room
            for victim in reason.split(", "):
                self._add("evictions", victim, "")
            return
        if kind == "unload":
            reason = _UNLOAD_REASONS.get(reason.split(" ", maxsplit=1)[0].rstrip(":"), "other")
        else:
            reason = ""
        self._add(kind, model, reason)

    def _add(self, metric: str, model: str, reason: str) -> None:
        key = (metric, model, reason)
        self.counts[key] = self.counts.get(key, 0) + 1

    def lines(self, queued: Mapping[str, int], states: Iterable[tuple[str, str]]) -> list[str]:
        def counter(metric: str, name: str, help_text: str, with_reason: bool = False
                    ) -> list[str]:
            rows = [((("model", m), ("reason", r)) if with_reason else (("model", m),), v)
                    for (k, m, r), v in self.counts.items() if k == metric]
            return gauge(name, help_text, rows, kind="counter")

        out = counter("load", "vllama_model_loads_total", "Model loads started.")
        out += counter("load_failed", "vllama_model_load_failures_total",
                       "Model loads that failed.")
        out += counter("unload", "vllama_model_unloads_total",
                       "Models unloaded, by reason (idle, keep_alive, asked, evicted, "
                       "config, load_failed).", with_reason=True)
        out += counter("evictions", "vllama_model_evictions_total",
                       "Models unloaded or put to sleep to make room for another.")
        out += counter("sleep", "vllama_model_sleeps_total", "Models put to sleep (vLLM).")
        out += counter("wake", "vllama_model_wakes_total", "Models woken from sleep.")
        out += gauge("vllama_queue_depth", "Requests waiting for their model to load.",
                     [((("model", m),), float(n)) for m, n in queued.items()])
        out += ["# HELP vllama_queue_wait_seconds Time requests waited for their model.",
                "# TYPE vllama_queue_wait_seconds histogram",
                *self.waits.lines("vllama_queue_wait_seconds")]
        out += gauge("vllama_model_state", "1 for the state each model is in (loading, "
                     "loaded, sleeping, unloading).",
                     [((("model", m), ("state", s)), 1.0) for m, s in states])
        return out
