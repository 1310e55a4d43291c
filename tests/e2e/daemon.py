"""A real `vllama serve` child for the real-engine tiers: started with a config file on a free
port, waited for until /api/version answers, stopped as a process group (its engines with it).
Shared by tests/e2e/test_lifecycle.py and tests/e2e/test_out_of_the_box.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from tests.conftest import REPO_ROOT, free_port
from tests.e2e.engine import ENGINE_ENV
from tests.served import workers_args
from vllama.supervisor.procs import group_members


@dataclass
class Served:
    url: str
    log: Path
    proc: asyncio.subprocess.Process

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def serve(config: str, tmp: Path, env: dict[str, str] | None = None
                ) -> AsyncIterator[Served]:
    cfg = tmp / "config.toml"
    cfg.write_text(config)
    port = free_port()
    log = tmp / "vllama.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vllama", "serve", "--config", str(cfg), "--port", str(port),
            *workers_args(), stdout=out, stderr=out, cwd=REPO_ROOT, start_new_session=True,
            env={**base, **ENGINE_ENV, **(env or {})})
    served = Served(f"http://127.0.0.1:{port}", log, proc)
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            while True:
                assert proc.returncode is None, served.tail()
                try:
                    async with session.get(served.url + "/api/version") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
        yield served
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(60):
                    await proc.wait()
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]
               ) -> tuple[int, Any]:
    async with session.post(url, data=msgspec.json.encode(body)) as resp:
        return resp.status, msgspec.json.decode(await resp.read())


async def ps(session: aiohttp.ClientSession, served: Served) -> dict[str, dict[str, Any]]:
    async with session.get(served.url + "/api/ps") as resp:
        return {m["name"].removesuffix(":latest"): m for m in (await resp.json())["models"]}


async def engine_pids(session: aiohttp.ClientSession, served: Served) -> dict[str, int]:
    async with session.get(served.url + "/health") as resp:
        return {e["model"]: e["pid"] for e in (await resp.json())["engines"] if e["pid"]}


async def gone(pid: int) -> None:
    async with asyncio.timeout(60):
        while group_members(pid):  # noqa: ASYNC110 - polls /proc from outside
            await asyncio.sleep(0.1)


LOAD = 240.0  # bound on one request that has to load a model first
CHAT = {"messages": [{"role": "user", "content": "hello"}], "stream": False,
        "options": {"num_predict": 4}}


async def chat(session: aiohttp.ClientSession, served: Served, model: str,
               **extra: Any) -> tuple[int, Any]:
    async with asyncio.timeout(LOAD):
        return await post(session, served.url + "/api/chat", {"model": model, **CHAT, **extra})
