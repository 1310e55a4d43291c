"""Profile vllama's relay path with py-spy under benchmark load, and summarise the hot frames.

    python -m benchmarks.profile [--scenario stream|nostream|openai] [--duration 20]

Starts the synthetic upstream (CPU 1) and vllama (CPU 0, in front of it), drives load from
CPU 1 with `vllama bench`'s driver while `py-spy record` samples the vllama process, then
prints the frames with the most samples: self time (where the CPU actually went) and inclusive
time of vllama's own functions. The raw py-spy file stays in --out for flamegraph tools.
Needs py-spy (`.venv/bin/pip install py-spy`) and permission to ptrace (root in a container).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks import procs
from benchmarks.run import CLIENT_CPU, GATEWAY_CPU, Run, Scale, synthetic, targets, vllama
from vllama.bench.driver import Plan, run_plan

SCENARIOS = {
    # name: (api at vllama, path suffix, stream)
    "stream": ("ollama", "", True),  # /api/chat streamed: the NDJSON relay
    "nostream": ("ollama", "", False),  # /api/chat, one JSON reply
    "openai": ("openai", "/v1", True),  # /v1/chat/completions passed through
}


# Leaves of threads that are waiting, not working, which py-spy still counts as active: an
# idle executor thread blocks in queue.get in C (the GPU monitor's asyncio.to_thread pool).
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py",)


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive sample counts per frame from py-spy's raw (collapsed) output."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    if not total:
        return "no samples (is py-spy allowed to ptrace?)\n"

    def pct(n: int) -> str:
        return f"{100.0 * n / total:5.1f}%"

    lines = [f"{total} busy samples ({idle} samples of idle executor threads left out)", "",
             f"top {top} frames by self time:"]
    lines += [f"  {pct(n)}  {frame}" for frame, n in self_counts.most_common(top)]
    lines += ["", f"top {top} vllama functions by inclusive time:"]
    ours = [(f, n) for f, n in incl.most_common() if "vllama/" in f and "vllama/bench" not in f]
    lines += [f"  {pct(n)}  {frame}" for frame, n in ours[:top]]
    return "\n".join(lines) + "\n"


async def load(plan_args: dict[str, object], until: float) -> int:
    done = 0
    while time.monotonic() < until:
        plan = Plan(**plan_args)  # type: ignore[arg-type]
        [res] = await run_plan(plan)
        done += sum(s.ok for s in res.stats.values())
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="stream")
    parser.add_argument("--duration", type=int, default=20, help="seconds to sample")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per reply")
    parser.add_argument("--batch", type=int, default=1,
                        help="SSE events per upstream write (1: like vLLM)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(procs.REPO / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        parser.error("py-spy not found: .venv/bin/pip install py-spy")
    out = args.out or Path(tempfile.mkdtemp(prefix="vllama-profile-"))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    run = Run(scale=Scale(), out=out, logs=out / "logs")
    api, suffix, stream = SCENARIOS[args.scenario]
    procs.pin_self({CLIENT_CPU})
    raw = out / f"pyspy-{args.scenario}.txt"
    with contextlib.ExitStack() as stack:
        _, up = stack.enter_context(synthetic(run, "upstream", batch=args.batch,
                                              cpu=CLIENT_CPU))
        gw_child, gw = stack.enter_context(
            vllama(run, "vllama", {"synthetic": up + "/v1"}, GATEWAY_CPU))
        plan_args: dict[str, object] = {
            "targets": targets([("vllama", gw + suffix, api)], model="synthetic",
                               tokens=args.tokens, stream=stream),
            "levels": [args.concurrency], "requests": args.concurrency * 4, "timeout": 120}
        asyncio.run(load(plan_args, time.monotonic() + 2))  # warm-up
        spy_proc = subprocess.Popen(
            [spy, "record", "-p", str(gw_child.pid), "-d", str(args.duration), "-r",
             str(args.rate), "-f", "raw", "-F", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            requests = asyncio.run(load(plan_args, time.monotonic() + args.duration + 1))
            _, err = spy_proc.communicate(timeout=args.duration + 60)
        finally:
            if spy_proc.poll() is None:
                spy_proc.kill()
                spy_proc.wait()
    if spy_proc.returncode != 0 or not raw.exists():
        print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
        return 1
    report = (f"scenario {args.scenario}: c={args.concurrency}, {args.tokens} tokens, "
              f"{args.batch} SSE events per upstream write, "
              f"{requests} requests in {args.duration} s of sampling; raw: {raw}\n\n"
              + summarize(raw, args.top))
    (out / f"profile-{args.scenario}.txt").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
