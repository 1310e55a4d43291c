"""Drive targets with concurrent requests: one request, one level, interleaved rounds."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp

from vllama.bench.protocol import StreamParser, parse_whole, request_body, resolve_url
from vllama.bench.stats import Comparison, LevelStats, Sample, compare, summarize


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint under test and exactly what it is sent."""

    name: str  # "A", "B": how reports refer to it
    url: str  # full request URL (see protocol.resolve_url)
    api: str  # "ollama" | "openai"
    body: bytes
    stream: bool
    api_key: str = ""

    @classmethod
    def build(cls, name: str, url: str, *, api: str, endpoint: str, model: str, prompt: str,
              max_tokens: int, stream: bool, api_key: str = "") -> Target:
        return cls(name=name, url=resolve_url(url, api, endpoint), api=api,
                   body=request_body(api, endpoint, model=model, prompt=prompt,
                                        max_tokens=max_tokens, stream=stream),
                   stream=stream, api_key=api_key)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


async def one_request(session: aiohttp.ClientSession, target: Target, timeout: float) -> Sample:
    """Send one request and time it. Never raises for a request failure: it is a sample."""
    start = time.perf_counter()
    try:
        async with session.post(target.url, data=target.body, headers=target.headers(),
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                text = (await resp.read())[:200].decode("utf-8", "replace").strip()
                return Sample(ok=False, latency=time.perf_counter() - start,
                              error=f"HTTP {resp.status}: {text}")
            if target.stream:
                return await _read_stream(resp, target.api, start)
            body = await resp.read()
            end = time.perf_counter()
            whole = parse_whole(target.api, body)
            if whole.error is not None:
                return Sample(ok=False, latency=end - start, error=whole.error)
            return Sample(ok=True, latency=end - start, frames=1,
                          output_tokens=whole.reported_tokens if whole.reported_tokens
                          is not None else int(whole.has_text),
                          tokens_reported=whole.reported_tokens is not None)
    except TimeoutError:
        return Sample(ok=False, latency=time.perf_counter() - start,
                      error=f"timeout after {timeout:g} s")
    except aiohttp.ClientError as exc:
        return Sample(ok=False, latency=time.perf_counter() - start,
                      error=f"{type(exc).__name__}: {exc}"[:200])


async def _read_stream(resp: aiohttp.ClientResponse, api: str, start: float) -> Sample:
    parser = StreamParser(api=api, start=start)
    clock = time.perf_counter
    async for data in resp.content.iter_any():
        parser.feed(data, clock())
        if parser.error is not None:
            break  # leaving the `async with` closes the connection
    end = clock()
    if parser.error is None:
        parser.finish()
    if parser.error is not None:
        return Sample(ok=False, latency=end - start, error=parser.error)
    reported = parser.reported_tokens
    return Sample(
        ok=True, latency=end - start,
        ttft=None if parser.first_text is None else parser.first_text - start,
        itls=parser.itls, frames=parser.frames,
        output_tokens=reported if reported is not None else parser.text_frames,
        tokens_reported=reported is not None)


@dataclass(slots=True)
class Progress:
    """Live counters for the progress line (one per run, not module state)."""

    label: str = ""
    total: int = 0
    done: int = 0
    errors: int = 0


async def run_level(session: aiohttp.ClientSession, target: Target, *, requests: int,
                    concurrency: int, timeout: float,
                    progress: Progress | None = None) -> tuple[list[Sample], float]:
    """`requests` requests with at most `concurrency` in flight. Returns the samples and the
    wall time from the first send to the last completion."""
    samples: list[Sample] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sample = await one_request(session, target, timeout)
            samples.append(sample)
            if progress is not None:
                progress.done += 1
                progress.errors += not sample.ok

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, requests)):
            group.create_task(worker())
    return samples, time.perf_counter() - start


@dataclass(slots=True)
class LevelResult:
    concurrency: int
    stats: dict[str, LevelStats]  # by target name, all rounds pooled
    comparison: Comparison | None = None
    # the same per round: ratios of adjacent runs are robust to bursts of outside load
    rounds: list[dict[str, LevelStats]] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    """What to run: targets (1 or 2), levels, requests per level per round, rounds."""

    targets: Sequence[Target]
    levels: Sequence[int]
    requests: int
    rounds: int = 1
    warmup: int = 0
    timeout: float = 300.0
    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=dict)
    # Called with ("start" | "end", target, level) around each measured run, e.g. to read the
    # CPU time a server process used for exactly that run.
    observer: Callable[[str, Target, int], None] | None = None


def round_order(targets: Sequence[Target], round_index: int) -> list[Target]:
    """A B, then B A, ...: alternating who goes first cancels linear drift of the machine
    (thermal, other load) between the two targets, not only their interleaving."""
    order = list(targets)
    return order if round_index % 2 == 0 else order[::-1]


async def run_plan(plan: Plan, *, progress_to: TextIO | None = None) -> list[LevelResult]:
    """Run every level, each target `rounds` times, interleaved. One ClientSession whose
    connector allows exactly the highest concurrency, so the client never queues."""
    limit = max(plan.levels)
    # Idle connections are dropped after 4 s, before uvicorn (vLLM, most Python servers)
    # closes them at 5 s: reusing one the server is closing fails the request, and with
    # interleaved targets connections do sit idle while the other target runs.
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=4)
    progress = Progress()
    ticker = (asyncio.create_task(_tick(progress, progress_to))
              if progress_to is not None else None)
    results: list[LevelResult] = []
    try:
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            if plan.warmup > 0:
                for target in plan.targets:
                    _reset(progress, f"warm-up {target.name}", plan.warmup)
                    await run_level(session, target, requests=plan.warmup,
                                    concurrency=min(plan.warmup, limit), timeout=plan.timeout,
                                    progress=progress)
            for level in plan.levels:
                walls = {t.name: 0.0 for t in plan.targets}
                pooled: dict[str, list[Sample]] = {t.name: [] for t in plan.targets}
                per_round: list[dict[str, LevelStats]] = []
                for r in range(plan.rounds):
                    per_round.append({})
                    for target in round_order(plan.targets, r):
                        _reset(progress, f"c={level} {target.name} round {r + 1}/{plan.rounds}",
                               plan.requests)
                        if plan.observer is not None:
                            plan.observer("start", target, level)
                        samples, wall = await run_level(
                            session, target, requests=plan.requests, concurrency=level,
                            timeout=plan.timeout, progress=progress)
                        if plan.observer is not None:
                            plan.observer("end", target, level)
                        pooled[target.name].extend(samples)
                        walls[target.name] += wall
                        per_round[-1][target.name] = summarize(level, samples, wall)
                stats = {name: summarize(level, pooled[name], walls[name]) for name in pooled}
                for name, samples in pooled.items():
                    plan.samples[(name, level)] = samples
                result = LevelResult(level, stats, rounds=per_round)
                if len(plan.targets) == 2:
                    a, b = plan.targets
                    result.comparison = compare(stats[a.name], stats[b.name])
                results.append(result)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            assert progress_to is not None
            progress_to.write("\r\x1b[K")
            progress_to.flush()
    return results


def _reset(progress: Progress, label: str, total: int) -> None:
    progress.label, progress.total, progress.done, progress.errors = label, total, 0, 0


async def _tick(progress: Progress, out: TextIO, every: float = 0.25) -> None:
    while True:
        out.write(f"\r\x1b[K{progress.label}: {progress.done}/{progress.total} done, "
                  f"{progress.errors} errors")
        out.flush()
        await asyncio.sleep(every)


def progress_stream(enabled: bool | None) -> TextIO | None:
    """Where live progress goes: stderr when it is a terminal (or when forced)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return sys.stderr if enabled else None
