"""Slowloris against a real `vllama serve`: 500 connections trickle request headers (and come
back when closed, as an attacker does) while normal requests keep answering within 1 s, the
issue's acceptance bound (the only timed assertion here).

Twice: with room for every connection (the unit's LimitNOFILE=65536 gives 4096), where every
normal request must answer within the bound; and at `ulimit -n 1024`, the usual shell default
(the issue's run starved real requests at 256), where 500 tricklers exceed the descriptor
budget (384) and the limit makes room by closing the longest-trickling connection. There the
closed attackers reconnect at once, a flood through the listen queue, so a normal connection's
SYN may wait for the kernel's one-second retransmit now and then: every normal request must
still be answered, and the median within the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import REPO_ROOT, free_port
from tests.fake_vllm import FakeScript, make_app
from tests.live_gateway import exchange
from tests.served import stop_daemon

TRICKLERS = 500
BOUND_S = 1.0  # the acceptance criterion for a normal request under attack
ATTACK_S = 4.0  # how long normal requests are sent while the tricklers trickle
HEAD = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
GENERATE = b'{"model":"fake","prompt":"hello","stream":false}'
NORMAL = (
    b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(GENERATE)).encode() + b"\r\n\r\n" + GENERATE,
)


@pytest.fixture(autouse=True)
def enough_open_files() -> Iterator[None]:
    """500 client sockets here and 500 in the daemon (which inherits this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_daemon(tmp_path: Path, upstream: str, open_files: int | None) -> tuple[
        subprocess.Popen[bytes], int]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'models_dir = "{tmp_path}/hf"\nstate_dir = "{tmp_path}/state"\n\n'
                   f'[[models]]\nname = "fake"\nupstream = "{upstream}"\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    argv = [sys.executable, "-m", "vllama", "serve", "--config", str(cfg), "--port", str(port),
            "--log-format", "json"]
    if open_files is not None:  # as the run did: ulimit -n, then the daemon
        argv = ["bash", "-c", f'ulimit -n {open_files} && exec "$0" "$@"', *argv]
    with (tmp_path / "vllama.log").open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO_ROOT, start_new_session=True)
    return proc, port


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):  # polls; bounded so that a daemon that never listens fails
        assert proc.poll() is None, tail(log)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            reply = await exchange(port, NORMAL[0])
            if reply.status == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("vllama serve never answered: " + tail(log))


async def trickle(port: int, stop: asyncio.Event, connects: list[int]) -> None:
    """One attacker connection: a header byte a second, reconnecting whenever closed."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        connects[0] += 1
        try:
            writer.write(HEAD)
            while not stop.is_set() and not reader.at_eof():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(4096), 1.0)
                writer.write(b"a")
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


async def normal_requests(port: int, until: float) -> list[tuple[float, int]]:
    """(seconds, status) of each normal request, one at a time on fresh connections."""
    out = []
    i = 0
    while time.monotonic() < until:
        started = time.perf_counter()
        reply = await exchange(port, NORMAL[i % len(NORMAL)])
        out.append((time.perf_counter() - started, reply.status))
        i += 1
        await asyncio.sleep(0.1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("open_files", [None, 1024], ids=["room-for-all", "ulimit-1024"])
async def test_normal_requests_answer_under_slowloris(
        tmp_path: Path, aiohttp_server: Callable[..., Any], open_files: int | None) -> None:
    fake: TestServer = await aiohttp_server(make_app(FakeScript(served_names=["fake"])))
    proc, port = start_daemon(tmp_path, str(fake.make_url("/v1")), open_files)
    try:
        await wait_listening(port, proc, tmp_path / "vllama.log")
        stop = asyncio.Event()
        connects = [0]
        attackers = [asyncio.create_task(trickle(port, stop, connects))
                     for _ in range(TRICKLERS)]
        for _ in range(600):  # polls (bounded) until every attacker has connected once
            if connects[0] >= TRICKLERS:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # and is trickling
        timings = await normal_requests(port, time.monotonic() + ATTACK_S)
        scrape = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n"
                                b"Connection: close\r\n\r\n")
        stop.set()
        await asyncio.gather(*attackers)
    finally:
        stop_daemon(proc)
    statuses = {status for _, status in timings}
    seconds = sorted(took for took, _ in timings)
    assert statuses == {200}, timings
    if open_files is None:
        assert seconds[-1] < BOUND_S, f"slowest normal request {seconds[-1]:.3f} s: {timings}"
    else:
        median = seconds[len(seconds) // 2]
        assert median < BOUND_S, f"median normal request {median:.3f} s: {timings}"
    text = scrape.body.decode()
    open_now = metric(text, "vllama_connections_open")
    evicted = metric(text, 'vllama_connections_closed_total{reason="evicted"}')
    if open_files is None:
        assert open_now >= TRICKLERS  # every trickler held its connection: a real attack
        assert evicted == 0
    else:
        assert open_now < TRICKLERS  # the cap (384 of 1024 descriptors) held
        assert evicted > 0  # normal requests got in by closing tricklers
    assert metric(text, 'vllama_connections_closed_total{reason="refused"}') == 0
