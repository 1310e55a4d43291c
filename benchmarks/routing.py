"""Routing cost of upstream groups: does picking one of 100 upstreams cost more than picking
one of 1? (issue 15: "routing cost with 100 fake upstreams stays flat").

    .venv/bin/python -m benchmarks.routing            # about 2 minutes on 2 cores
    .venv/bin/python -m benchmarks.routing --quick    # checks that it runs

Two parts, printed as Markdown:

1. The pick alone, in this process: `Group.pick` for a chat request (its affinity key read
   from a 1 KB body as the gateway does, then the pick), with 2 requests in flight per
   member (each pick takes one, the oldest is released), for groups of 1, 2, 10 and 100
   members, under both routings. Median of 5 runs of N picks, in microseconds per request.
2. Through the gateway: one `vllama serve` (a child process) with four models, groups of 1,
   2, 10 and 100 members, over one synthetic upstream process listening on 100 ports
   (`benchmarks/synthetic_upstream.py`'s app: 8 tokens, no delay); `vllama bench`'s driver
   sends `/api/chat` (`stream: false`) at concurrency 16 to each model in turn, rounds
   interleaved with the order reversed every other round. Reported: requests/s, p50 latency,
   and the gateway's CPU milliseconds per request (user + system from /proc, during exactly
   that model's runs): the number that would grow if routing were O(upstreams) per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web

from benchmarks.procs import python, started, wait_http
from benchmarks.synthetic_upstream import Settings
from benchmarks.synthetic_upstream import make_app as upstream_app
from vllama.bench.driver import Target, run_level
from vllama.bench.stats import summarize
from vllama.fleet.affinity import affinity_key
from vllama.fleet.members import Endpoint, Group, Member, Policy, Shared

SIZES = (1, 2, 10, 100)
CHAT = msgspec.json.encode({
    "model": "m", "stream": True,
    "messages": [{"role": "system", "content": "You are a careful assistant. " * 20},
                 {"role": "user", "content": "Explain B-trees in one paragraph, please."}]})


def _group(size: int, affinity: bool) -> Group:
    shared = Shared(Policy(affinity=affinity), time.monotonic)
    members = [Member(Endpoint(f"http://10.0.{i // 250}.{i % 250}:8000/v1", "", None), "m")
               for i in range(size)]
    return Group("m", members, shared)


def pick_cost_us(size: int, affinity: bool, picks: int) -> float:
    """Microseconds per request: key + pick + the in-flight bookkeeping upstream_call does."""
    group = _group(size, affinity)
    bodies = [CHAT.replace(b"Explain", f"Explain {i}".encode()) for i in range(64)]
    flying: deque[Member] = deque()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(picks):
            key = affinity_key(bodies[i & 63], 2000) if affinity and size > 1 else None
            member = group.pick(key)
            assert member is not None
            member.in_flight += 1
            group.in_flight += 1
            flying.append(member)
            if len(flying) > 2 * size:
                done = flying.popleft()
                done.in_flight -= 1
                group.in_flight -= 1
        runs.append((time.perf_counter() - start) / picks * 1e6)
    return statistics.median(runs)


async def serve_upstreams(ports: list[int]) -> None:
    """One process, one synthetic app, many listening ports (many fake upstreams)."""
    runner = web.AppRunner(upstream_app(Settings(tokens=8)), access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def _free_ports(count: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def through_gateway(pid: int, url: str, requests: int, rounds: int
                          ) -> dict[int, tuple[list[float], list[float], float, int]]:
    targets = {size: Target.build(f"g{size}", url, api="ollama", endpoint="chat",
                                  model=f"g{size}", prompt="Explain B-trees.", max_tokens=8,
                                  stream=False) for size in SIZES}
    results: dict[int, tuple[list[float], list[float], float, int]] = {
        s: ([], [], 0.0, 0) for s in SIZES}
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:
        for target in targets.values():  # warm-up: pools, code paths
            await run_level(session, target, requests=64, concurrency=16, timeout=60)
        for r in range(rounds):
            order = list(SIZES) if r % 2 == 0 else list(reversed(SIZES))
            for size in order:
                cpu0 = _cpu(pid)
                samples, wall = await run_level(session, targets[size], requests=requests,
                                                concurrency=16, timeout=60)
                cpu = _cpu(pid) - cpu0
                stats = summarize(16, samples, wall)
                rps, p50, used, errors = results[size]
                rps.append(stats.requests_per_s)
                p50.append(stats.e2e_ms.p50 or 0.0)
                results[size] = (rps, p50, used + cpu, errors + stats.errors)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve-upstreams", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstreams:
        asyncio.run(serve_upstreams([int(p) for p in args.serve_upstreams.split(",")]))
        return 0
    picks = 2000 if args.quick else 20000
    requests, rounds = (64, 1) if args.quick else (400, 4)

    print("## The pick alone (microseconds per request, median of 5 runs)\n")
    print("| members | least_loaded | affinity (key + pick) |")
    print("| ---: | ---: | ---: |")
    for size in SIZES:
        print(f"| {size} | {pick_cost_us(size, False, picks):.2f} | "
              f"{pick_cost_us(size, True, picks):.2f} |")

    ports = _free_ports(100)
    logdir = Path(tempfile.mkdtemp(prefix="vllama-routing-"))
    gateway_port = _free_ports(1)[0]
    models = "".join(
        f'[[models]]\nname = "g{size}"\nupstreams = {msgspec.json.encode(urls).decode()}\n'
        'upstream_model = "synthetic"\n\n'
        for size in SIZES
        for urls in [[f"http://127.0.0.1:{p}/v1" for p in ports[:size]]])
    config = logdir / "config.toml"
    config.write_text(f'log_level = "warning"\nworkers = 1\n\n{models}')
    with started("upstreams", [python(), "-m", "benchmarks.routing", "--serve-upstreams",
                               ",".join(map(str, ports))], logdir=logdir) as ups, \
            started("vllama", [python(), "-m", "vllama", "serve", "--config", str(config),
                               "--port", str(gateway_port)], logdir=logdir) as gw:
        wait_http(ups, f"http://127.0.0.1:{ports[-1]}/health", 60)
        url = f"http://127.0.0.1:{gateway_port}"
        wait_http(gw, url + "/health", 60)
        results = asyncio.run(through_gateway(gw.pid, url, requests, rounds))
    print(f"\n## Through the gateway (`/api/chat`, stream false, c = 16, {rounds} x {requests} "
          "requests per model)\n")
    print("| members | requests/s (median round) | p50 latency ms (median round) | "
          "gateway CPU ms per request | errors |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for size in SIZES:
        rps, p50, cpu, errors = results[size]
        print(f"| {size} | {statistics.median(rps):.0f} | {statistics.median(p50):.2f} | "
              f"{cpu / (requests * rounds) * 1000:.3f} | {errors} |")
    print(f"\nlogs and config: {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
