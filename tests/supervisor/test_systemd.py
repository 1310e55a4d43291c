"""sd_notify against a real AF_UNIX datagram socket; watchdog interval table."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllama.systemd import Notifier, watchdog_interval, watchdog_loop


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify")
        sock.bind(name)
    else:
        name = f"@vllama-test-{os.getpid()}-{id(sock)}"
        sock.bind(b"\0" + name[1:].encode())
    sock.settimeout(5)
    with sock:
        yield name, sock


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages(listener: tuple[str, socket.socket]) -> None:
    name, sock = listener
    with Notifier(name) as n:
        assert n.enabled
        assert n.ready()
        assert recv(sock) == "READY=1"
        n.ready(status="ready: tiny")
        assert recv(sock) == "READY=1\nSTATUS=ready: tiny"
        n.status("loading tiny\n40 s")
        assert recv(sock) == "STATUS=loading tiny 40 s"
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        n.reloading()
        fields = recv(sock).split("\n")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert fields[0] == "RELOADING=1"
        key, _, usec = fields[1].partition("=")
        assert key == "MONOTONIC_USEC" and before <= int(usec) <= after
        n.stopping()
        assert recv(sock) == "STOPPING=1"
        n.watchdog()
        assert recv(sock) == "WATCHDOG=1"
        n.extend_timeout(30_000_000)
        assert recv(sock) == "EXTEND_TIMEOUT_USEC=30000000"
        n.errno(78, status="bad config")
        assert recv(sock) == "ERRNO=78\nSTATUS=bad config"


def test_unset_is_a_noop() -> None:
    for value in (None, "", "vsock:2:1234"):
        n = Notifier(value)
        assert not n.enabled
        assert n.ready() is False
        n.close()


def test_errors_are_ignored(tmp_path: Path) -> None:
    with Notifier(str(tmp_path / "nobody-listens")) as n:
        assert n.enabled
        assert n.ready() is False
        assert n.status("still fine") is False


async def test_watchdog_loop_pings_from_the_loop(listener: tuple[str, socket.socket]) -> None:
    name, sock = listener
    with Notifier(name) as n:
        task = asyncio.create_task(watchdog_loop(n, 0.01))
        try:
            got = [await asyncio.to_thread(recv, sock) for _ in range(3)]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert got == ["WATCHDOG=1"] * 3


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "", 15.0),
        (30_000_000, 1234, 15.0),
        ("30000000", "1234", 15.0),
        ("30000000", "999", None),  # the watchdog belongs to another process
        ("30000000", "0", 15.0),
        (None, None, None),
        ("", "1234", None),
        ("0", None, None),
        ("garbage", None, None),
        ("1000", None, 0.0005),
    ],
)
def test_watchdog_interval(
    usec: int | str | None, pid: int | str | None, expected: float | None
) -> None:
    assert watchdog_interval(usec, pid, 1234) == expected


def test_notify_never_blocks_when_nobody_reads(tmp_path: Path) -> None:
    """A receiver that stops reading (full queue) must not stall the event loop: sends are
    dropped instead (found when a test stopped draining the socket and the gateway froze)."""
    path = tmp_path / "notify"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    try:
        notifier = Notifier(str(path))
        results = [notifier.watchdog() for _ in range(5000)]
        notifier.close()
    finally:
        sink.close()
    assert results[0] is True
    assert False in results  # the queue filled up and later sends were dropped, not blocked
