"""Render bench results: a table for people, one JSON document for machines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from vllama.bench.driver import LevelResult, Plan
from vllama.bench.stats import Dist


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _dist(d: Dist, fmt: str = "{:.1f}") -> str:
    return "/".join(_num(v, fmt) for v in (d.p50, d.p90, d.p99))


def _added(d: Dist) -> str:
    return "/".join(_num(v, "{:+.2f}") for v in (d.p50, d.p90, d.p99))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def text(plan: Plan, results: Sequence[LevelResult], *, model: str, stream: bool) -> str:
    lines: list[str] = []
    for t in plan.targets:
        lines.append(f"{t.name}: {t.url} ({t.api}, {'stream' if stream else 'no stream'})")
    lines.append(f"model {model}; {plan.requests} requests per level per target per round, "
                 f"{plan.rounds} round(s), warm-up {plan.warmup}")
    header = (f"{'c':>5} {'tgt':<4} {'req/s':>9} {'tok/s':>10} {'frames/s':>10} "
              f"{'TTFT ms p50/p90/p99':>22} {'ITL ms p50/p90/p99':>20} "
              f"{'E2E ms p50/p90/p99':>24} {'err':>5}")
    lines += ["", header]
    for res in results:
        for t in plan.targets:
            s = res.stats[t.name]
            tok = f"{s.output_tokens_per_s:.1f}" + ("" if s.tokens_reported else "*")
            lines.append(
                f"{res.concurrency:>5} {t.name:<4} {s.requests_per_s:>9.2f} {tok:>10} "
                f"{s.frames_per_s:>10.1f} {_dist(s.ttft_ms):>22} {_dist(s.itl_ms, '{:.2f}'):>20} "
                f"{_dist(s.e2e_ms):>24} {s.errors:>5}")
        if res.comparison is not None:
            c = res.comparison
            lines.append(
                f"{'':>5} {'B/A':<4} {_ratio(c.requests_per_s_ratio):>9} "
                f"{_ratio(c.output_tokens_per_s_ratio):>10} {_ratio(c.frames_per_s_ratio):>10} "
                f"{_added(c.ttft_added_ms):>22} {_added(c.itl_added_ms):>20} "
                f"{_added(c.e2e_added_ms):>24}")
    lines.append("")
    if any(not s.tokens_reported for r in results for s in r.stats.values()):
        lines.append("* token count not reported by the server: text frames counted instead")
    if len(plan.targets) == 2:
        lines.append("B/A row: rates as ratios B/A (above 1x: B is faster); latencies as B minus A "
                     "in ms (positive: B is slower)")
    errors = {k: v for r in results for s in r.stats.values() for k, v in s.error_kinds.items()}
    for kind, count in errors.items():
        lines.append(f"error x{count}: {kind}")
    return "\n".join(lines) + "\n"


def as_json(plan: Plan, results: Sequence[LevelResult], *, model: str, stream: bool,
            max_tokens: int, prompt_tokens: int) -> bytes:
    doc: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "max_tokens": max_tokens,
        "prompt_tokens": prompt_tokens,
        "requests": plan.requests,
        "rounds": plan.rounds,
        "warmup": plan.warmup,
        "targets": [{"name": t.name, "url": t.url, "api": t.api} for t in plan.targets],
        "levels": [{"concurrency": r.concurrency, "stats": r.stats,
                    "compare_b_over_a": r.comparison} for r in results],
    }
    return msgspec.json.encode(doc)
