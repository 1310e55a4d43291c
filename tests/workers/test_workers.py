"""Several gateway workers on one port: a real `vllama serve --workers 2` with the fake vLLM as
its engine. Requests spread over both; /metrics and /health answer for the whole daemon from
either; READY=1 waits for every worker; a worker killed under load takes only its own streams
with it, its leases are released, and it comes back; a wedged worker stops the watchdog; stop
leaves no process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.e2e.engine import group_members
from tests.served import Served, serve_notified, write_config

pytestmark = pytest.mark.timeout(120)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def worker_pids(served: Served) -> dict[int, int]:
    """worker number -> pid, from the daemon's log ("gateway worker N started (pid P)")."""
    pids: dict[int, int] = {}
    for line in served.log.read_text().splitlines():
        if line.startswith("{"):
            doc = msgspec.json.decode(line)
            message = str(doc.get("msg", ""))
            if message.startswith("gateway worker") and "started (pid" in message:
                number = int(message.split()[2])
                pids[number] = int(message.rsplit("pid ", 1)[1].rstrip(")"))
    return pids


def served_by(served: Served) -> list[int]:
    """The worker of every access log line, in order."""
    out = []
    for line in served.log.read_text().splitlines():
        if line.startswith("{"):
            doc = msgspec.json.decode(line)
            if doc.get("logger") == "vllama.access":
                out.append(int(doc.get("worker", 0)))
    return out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    cfg = tmp_path / "config.toml"
    write_config(cfg, extra_args=["--fake-tokens", "200", "--fake-token-delay", "0.01"])
    with serve_notified(cfg, tmp_path, extra=["--workers", "2"]) as s:
        s.wait_for("READY=1")
        yield s


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, msgspec.json.decode(await resp.read()) if resp.content_type == \
            "application/json" else await resp.text()


async def _many(url: str, n: int) -> list[int]:
    """n requests, each on a new connection (the kernel spreads connections, not requests)."""
    statuses = []
    for _ in range(n):
        async with aiohttp.ClientSession() as session, session.get(url + "/api/version") as r:
            statuses.append(r.status)
    return statuses


def test_requests_spread_and_metrics_cover_the_daemon(served: Served) -> None:
    assert sorted(worker_pids(served)) == [1, 2]
    assert asyncio.run(_many(served.url, 40)) == [200] * 40
    time.sleep(0.3)  # the access log lines of the last requests
    assert set(served_by(served)) == {1, 2}  # SO_REUSEPORT spread them
    for _ in range(4):  # whichever worker answers the scrape, it counts every worker's
        status, text = asyncio.run(_get(served.url + "/metrics"))
        assert status == 200
        assert ('vllama_requests_total{route="/api/version",method="GET",status="200",'
                'model=""} 40') in text
        assert 'vllama_engine_state{model="tiny",state="ready"} 1' in text
    status, doc = asyncio.run(_get(served.url + "/health"))
    assert status == 200 and doc["engines"][0]["state"] == "ready"
    # READY=1 came only after both workers listened
    ready = next(i for i, m in enumerate(served.messages) if "READY=1" in m)
    assert ready >= 0 and len(worker_pids(served)) == 2


async def _streams(url: str, n: int) -> list[str]:
    """n streamed chats at once; how each ended: done, or broken (the connection went)."""
    async def one() -> str:
        try:
            async with aiohttp.ClientSession() as session, \
                    session.post(url + "/api/chat", json=CHAT) as resp:
                last: dict[str, Any] = {}
                async for line in resp.content:
                    last = msgspec.json.decode(line)
                return "done" if last.get("done") else "error" if "error" in last else "cut"
        except aiohttp.ClientError:
            return "broken"

    return list(await asyncio.gather(*(one() for _ in range(n))))


def test_a_killed_worker_takes_only_its_streams_and_comes_back(served: Served) -> None:
    pids = worker_pids(served)

    async def scenario() -> list[str]:
        streams = asyncio.ensure_future(_streams(served.url, 12))
        await asyncio.sleep(0.8)  # every stream is mid-way (200 tokens at 10 ms)
        os.kill(pids[1], signal.SIGKILL)
        return await streams

    outcomes = asyncio.run(scenario())
    assert "done" in outcomes  # the other worker's streams finished
    assert {"broken", "cut"} & set(outcomes)  # the killed worker's ended
    deadline = time.monotonic() + 30
    while worker_pids(served).get(1, pids[1]) == pids[1]:  # restarted, with a new pid
        assert time.monotonic() < deadline, served.log.read_text()[-3000:]
        time.sleep(0.1)
    # Its leases were released: nothing stays in flight once the survivors are done (the
    # workers' mirror of the main process's state refreshes every second).
    deadline = time.monotonic() + 10
    while True:
        status, doc = asyncio.run(_get(served.url + "/health"))
        assert status == 200
        if [m["in_flight"] for m in doc["models"]] == [0]:
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)
    assert asyncio.run(_many(served.url, 10)) == [200] * 10
    assert served.proc.poll() is None  # the main process never noticed beyond a log line


def test_a_wedged_worker_stops_the_watchdog(served: Served) -> None:
    served.datagrams(1.5)
    assert any("WATCHDOG=1" in m for m in served.messages)
    pid = worker_pids(served)[2]
    os.kill(pid, signal.SIGSTOP)
    try:
        served.messages.clear()
        served.datagrams(0.5)  # a ping already under way may still land
        served.messages.clear()
        served.datagrams(3.0)  # longer than the 2 s watchdog: no ping without worker 2
        assert not any("WATCHDOG=1" in m for m in served.messages)
    finally:
        os.kill(pid, signal.SIGCONT)
    served.messages.clear()
    served.datagrams(2.0)
    assert any("WATCHDOG=1" in m for m in served.messages)


def test_stop_leaves_no_worker_and_no_engine(served: Served) -> None:
    pids = worker_pids(served)
    _, doc = asyncio.run(_get(served.url + "/health"))
    engine = doc["engines"][0]["pid"]
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    for pid in [*pids.values(), engine]:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or reaped soon
    assert group_members(engine) == []
