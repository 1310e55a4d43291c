"""`vllama serve` as systemd runs it, with the fake vLLM as a real child engine: readiness
through a real NOTIFY_SOCKET, STATUS lines, reload on SIGHUP, a crash under streaming load
(no hung client, no orphan), stop leaving nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.engine import group_members
from tests.served import FAKE, Served, serve_notified, workers_args, write_config


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    cfg = tmp_path / "config.toml"
    write_config(cfg, extra_args=["--fake-startup-delay", "2", "--fake-spawn-child",
                                  "--fake-tokens", "400", "--fake-token-delay", "0.01"])
    with serve_notified(cfg, tmp_path) as served:
        yield served


async def get_json(url: str) -> Any:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        assert resp.status == 200
        return msgspec.json.decode(await resp.read())


async def health(url: str) -> tuple[int, dict[str, object]]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(url + "/health") as resp:
        return resp.status, msgspec.json.decode(await resp.read())


def test_ready_status_watchdog_reload_stop(served: Served) -> None:
    status = served.wait_for("STATUS=")
    assert "loading" in status or "starting" in status
    code, doc = asyncio.run(health(served.url))
    assert code == 503 and doc["status"] == "unavailable"  # bound before the model answered
    ready = served.wait_for("READY=1")
    assert "ready: tiny" in ready
    assert any("WATCHDOG=1" in m for m in served.datagrams(1.5))
    code, doc = asyncio.run(health(served.url))
    assert code == 200
    engine = doc["engines"][0]  # type: ignore[index]
    assert engine["state"] == "ready" and engine["restarts"] == 0
    first_pid = engine["pid"]
    ps = asyncio.run(get_json(served.url + "/api/ps"))
    [running] = ps["models"]
    # No GPU here: the engine's group lives in RAM, so size is its resident memory.
    assert running["name"] == "tiny:latest" and running["size"] > 0
    assert running["size_vram"] == 0

    # SIGHUP with unchanged settings: RELOADING=1 + MONOTONIC_USEC, READY=1, no restart.
    served.messages.clear()
    served.proc.send_signal(signal.SIGHUP)
    reloading = served.wait_for("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    served.wait_for("READY=1")
    code, doc = asyncio.run(health(served.url))
    assert doc["engines"][0]["pid"] == first_pid  # type: ignore[index]

    # Changed engine args: only that engine restarts.
    write_config(served.config, extra_args=["--fake-startup-delay", "1", "--fake-spawn-child"])
    served.messages.clear()
    served.proc.send_signal(signal.SIGHUP)
    served.wait_for("RELOADING=1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, doc = asyncio.run(health(served.url))
        engine = doc["engines"][0]  # type: ignore[index]
        if code == 200 and engine["pid"] != first_pid:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"engine never restarted after reload: {doc}")
    assert not group_members(first_pid), "the old engine's group must be gone"

    # Stop: STOPPING=1, exit 0, nothing of the engine's group survives.
    pid = engine["pid"]
    served.messages.clear()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert any("STOPPING=1" in m for m in served.datagrams())
    assert not group_members(pid)


async def _stream_chat(url: str, model: str = "tiny") -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        body = {"model": model, "messages": [{"role": "user", "content": "go"}]}
        async with session.post(url + "/api/chat", json=body) as resp:
            if resp.status != 200:
                return [{"status": resp.status, **msgspec.json.decode(await resp.read())}]
            async for line in resp.content:
                lines.append(msgspec.json.decode(line))
    return lines


async def _kill_under_load(served: Served, pid: int) -> list[list[dict[str, object]]]:
    tasks = [asyncio.ensure_future(_stream_chat(served.url)) for _ in range(8)]
    await asyncio.sleep(1.0)  # streams are flowing
    os.kill(pid, signal.SIGKILL)  # only the API server: its EngineCore-like child survives
    _, pending = await asyncio.wait(tasks, timeout=60)
    assert not pending, f"{len(pending)} clients hung; log:\n{served.log.read_text()[-4000:]}"
    return [t.result() for t in tasks]


def test_kill_9_under_streaming_load(served: Served) -> None:
    served.wait_for("READY=1")
    _, doc = asyncio.run(health(served.url))
    pid = doc["engines"][0]["pid"]  # type: ignore[index]
    results = asyncio.run(_kill_under_load(served, pid))
    for lines in results:  # every client got an answer, none hung
        assert lines, "a client got nothing"
        last = lines[-1]
        assert "error" in last, last
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and group_members(pid):
        time.sleep(0.2)
    assert not group_members(pid), "the dead engine's group (its child) must be killed"
    # The engine comes back by itself; new requests get 503 with the reason meanwhile.
    deadline = time.monotonic() + 60
    saw_503 = False
    while time.monotonic() < deadline:
        code, doc = asyncio.run(health(served.url))
        engine = doc["engines"][0]  # type: ignore[index]
        saw_503 = saw_503 or code == 503
        if code == 200 and engine["restarts"] == 1:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"engine did not come back: {doc}")
    assert engine["last_exit"]["cls"] == "crash"
    lines = asyncio.run(_stream_chat(served.url))
    assert lines[-1]["done"] is True


def test_preload_false_does_not_hold_up_ready(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(timeout=30)
    served.config.write_text(
        f'vllm_command = "{FAKE}"\nhealth_poll_interval = 0.2\n\n'
        '[[models]]\nname = "fast"\nsource = "/models/fast"\n'
        'vllm_args = ["--fake-startup-delay", "0.5"]\n\n'
        '[[models]]\nname = "slow"\nsource = "/models/slow"\npreload = false\n'
        'vllm_args = ["--fake-startup-delay", "2"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    env["NOTIFY_SOCKET"] = served.notify.getsockname()
    served.messages.clear()
    with served.log.open("ab") as out:
        served.proc = subprocess.Popen(
            [sys.executable, "-m", "vllama", "serve", "--config", str(served.config),
             "--port", str(served.port), *workers_args()], stdout=out,
            stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True)
    served.wait_for("READY=1", timeout=20)
    code, doc = asyncio.run(health(served.url))
    states = {e["model"]: e["state"] for e in doc["engines"]}  # type: ignore[attr-defined]
    # preload = false: not started at all until a request wants it; the daemon is ready
    assert states == {"fast": "ready"} and code == 200
    lines = asyncio.run(_stream_chat(served.url, model="slow"))  # loads it, then answers
    assert lines[-1]["done"] is True
    ps = asyncio.run(get_json(served.url + "/api/ps"))
    assert {m["name"]: m["state"] for m in ps["models"]} == {"fast:latest": "loaded",
                                                              "slow:latest": "loaded"}
