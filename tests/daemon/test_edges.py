"""`vllama serve` as a real child, its edges seen from outside: `host = ""` in the config file
binds loopback only, the daemon serves through the guarded server (a half-sent head gets its
408), a keyed daemon stays probeable on /health, and the Host guard is on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.live_gateway import exchange
from tests.served import stop_daemon


def listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                addr, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.add(addr)
    return found


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[int]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'host = ""\napi_key = "k1"\nclient_header_timeout = 0.5\n'
                   f'models_dir = "{tmp_path}/hf"\nstate_dir = "{tmp_path}/state"\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    log = tmp_path / "vllama.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vllama", "serve", "--config", str(cfg),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO_ROOT, start_new_session=True)
    try:
        for _ in range(600):  # polls (bounded) until the daemon listens
            assert proc.poll() is None, log.read_text()[-3000:]
            if listeners(port):
                break
            time.sleep(0.05)
        yield port
    finally:
        stop_daemon(proc)


def test_serve_edges(daemon: int) -> None:
    assert listeners(daemon) == {"0100007F"}  # 127.0.0.1, not every interface

    async def check() -> None:
        health = await exchange(daemon, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert health.status == 200
        assert health.json() == {"status": "ok"}
        tags = await exchange(daemon, b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tags.status == 401
        rebound = await exchange(daemon, b"GET /health HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        assert rebound.status == 403
        slow = await exchange(daemon, b"GET /api/version HTTP/1.1\r\nHost: loc",
                              wait_close=True)
        assert slow.status == 408 and slow.closed

    asyncio.run(check())
