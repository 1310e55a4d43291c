"""A/B the gateway's per-request cost: an earlier tree vs this one, interleaved in one run.

    git archive REV | tar -x -C /tmp/vllama-base      # the code to compare against
    python -m benchmarks.ab --base /tmp/vllama-base [--scenario S] [--rounds 3]

Starts the synthetic upstream (CPU 1) and, each pinned to CPU 0 in front of it: vllama from
--base, vllama from this tree, this tree on uvloop, and this tree with log_level = "warning"
(no access log). Scenarios: short requests (2-token streams at c = 32, or 64-token
`stream: false` at c = 64) make the per-request set-up dominate; `relay` measures the per-token
cost (256-token streams); `ttft` the added time to first token when 32 streams paced at one
token per 5 ms start together (added = the gateway's percentile minus the upstream's).
Reports requests/s over the upstream alone and each gateway's CPU time per request (user +
system from /proc, around exactly its runs), the number that does not depend on other load on
a shared machine. A vllama child runs with its
cwd in its tree, so `python -m vllama` imports that tree's package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks import procs
from benchmarks.run import (
    CLIENT_CPU,
    GATEWAY_CPU,
    UVLOOP_MAIN,
    CpuMeter,
    Run,
    Scale,
    free_port,
    has_uvloop,
    synthetic,
    targets,
    vllama_config,
)
from vllama.bench.driver import Plan, run_plan
from vllama.bench.stats import compare


@contextlib.contextmanager
def gateway(run: Run, name: str, up: str, tree: Path, *, uvloop: bool = False,
            settings: Sequence[str] = ()) -> Iterator[tuple[procs.Child, str]]:
    port = free_port()
    cfg = vllama_config(run.logs / f"{name}.toml", port, {"synthetic": up + "/v1"}, settings)
    entry = ["-c", UVLOOP_MAIN] if uvloop else ["-m", "vllama"]
    argv = [procs.python(), *entry, "serve", "--config", str(cfg)]
    with procs.started(name, argv, logdir=run.logs, cpu=GATEWAY_CPU, cwd=tree) as child:
        base = f"http://127.0.0.1:{port}"
        procs.wait_http(child, base + "/api/version", timeout=60)
        yield child, base


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True,
                        help="a tree holding the vllama package to compare against")
    parser.add_argument("--scenario", choices=("stream", "nostream", "relay", "ttft"),
                        default="stream",
                        help="stream: 2-token streams, c = 32; nostream: 64-token stream:false, "
                        "c = 64; relay: 256-token streams, c = 32 (per-token cost); ttft: "
                        "32-token streams at one token per 5 ms, c = 32 (added TTFT)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (args.base / "vllama" / "__init__.py").exists():
        parser.error(f"no vllama package under {args.base}")
    out = args.out or Path(tempfile.mkdtemp(prefix="vllama-ab-"))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    run = Run(scale=Scale(), out=out, logs=out / "logs")
    stream = args.scenario != "nostream"
    procs.pin_self({CLIENT_CPU})
    with contextlib.ExitStack() as stack:
        delay = 0.005 if args.scenario == "ttft" else 0.0
        _, up = stack.enter_context(synthetic(run, "upstream", batch=1 if stream else 16,
                                              delay=delay, cpu=CLIENT_CPU))
        gateways = [("base", {"tree": args.base.resolve()}),
                    ("tree", {"tree": procs.REPO}),
                    ("tree log=warning", {"tree": procs.REPO,
                                          "settings": ['log_level = "warning"']})]
        if has_uvloop():
            gateways.insert(2, ("tree+uvloop", {"tree": procs.REPO, "uvloop": True}))
        pids: dict[str, int] = {}
        specs = [("upstream", up + "/v1", "openai")]
        for i, (name, how) in enumerate(gateways):
            child, url = stack.enter_context(gateway(run, f"gw{i}", up, **how))
            pids[name] = child.pid
            specs.append((name, url, "ollama"))
        meter = CpuMeter(pids)
        c, tokens, n = {"stream": (32, 2, 512), "nostream": (64, 64, 1000),
                        "relay": (32, 256, 128), "ttft": (32, 32, 64)}[args.scenario]
        plan = Plan(targets=targets(specs, model="synthetic", tokens=tokens, stream=stream),
                    levels=[c], requests=n, rounds=args.rounds, warmup=32, timeout=120,
                    observer=meter)
        [r] = asyncio.run(run_plan(plan))
    u = r.stats["upstream"]
    lines = [f"scenario {args.scenario}: c = {c}, {tokens}-token replies, {n} requests per "
             f"target per round, {args.rounds} interleaved rounds; logs in {out}", "",
             "| target | req/s | ratio to upstream | gateway CPU us per request | "
             "frames per gateway CPU-s | E2E p50 ms | added TTFT p50 / p90 / p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in r.stats.items():
        used = meter.seconds.get((name, c))
        cpu = f"{used * 1e6 / s.ok:.0f}" if used and s.ok else "-"
        fps = f"{s.frames_per_s * s.wall_s / used:.0f}" if used else "-"
        e2e = "-" if s.e2e_ms.p50 is None else f"{s.e2e_ms.p50:.2f}"
        t = compare(u, s).ttft_added_ms if stream and s is not u else None
        added = "-" if t is None or t.p50 is None else f"{t.p50:.2f} / {t.p90:.2f} / {t.p99:.2f}"
        lines.append(f"| {name} | {s.requests_per_s:.0f} | "
                     f"{s.requests_per_s / u.requests_per_s:.3f}x | {cpu} | {fps} | {e2e} | "
                     f"{added} | {s.errors} |")
    report = "\n".join(lines) + "\n"
    (out / f"ab-{args.scenario}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
