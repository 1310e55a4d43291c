"""Engine faults with the fake vLLM as a real child (issue 12): a squatter on the engine's
port, the leader's death seen at once, the restart policy, a wedged or stopped engine, an
engine that floods its output."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import REPO_ROOT, free_port
from tests.supervisor.test_engine import (
    CPU,
    FAKE,
    WAIT,
    Recorder,
    all_gone,
    child_environ,
    settings,
    until,
)
from vllama.supervisor import (
    Engine,
    EngineSettings,
    EngineSpec,
    EngineState,
    ExitClass,
    HttpLiveness,
    health_probe,
)
from vllama.supervisor.output import LineBudget
from vllama.supervisor.procs import group_members, port_owner

pytestmark = pytest.mark.timeout(90)

KEY = "engine-key-never-for-squatters"


class Squatter:
    """A local process's server that got the engine's port first: answers everything with
    200 and remembers what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []  # method, path, Authorization

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path,
                              request.headers.get("Authorization", "")))
        return web.json_response({})


@pytest.fixture
async def squatter() -> AsyncIterator[tuple[Squatter, int]]:
    sq = Squatter()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sq.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield sq, port
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_engine(session: aiohttp.ClientSession, *args: str, st: EngineSettings | None = None,
                ports: Iterator[int] | None = None, watch: bool = True) -> Engine:
    extra: dict[str, Any] = {"port_picker": ports.__next__} if ports is not None else {}
    return Engine(
        EngineSpec(name="fake", source="/models/fake", vllm_command=FAKE, vllm_args=args,
                   api_key=KEY),
        st or settings(),
        hardware=CPU,
        probe=health_probe(session),
        liveness=HttpLiveness(session) if watch else None,
        environ=child_environ(),
        cwd=str(REPO_ROOT),
        **extra,
    )


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(e.stop() for e in made))


async def settled(engine: Engine) -> bool:
    async with asyncio.timeout(WAIT):
        return await engine.wait_ready()


# ---- item 2: port squatting ---------------------------------------------------------------


def test_port_owner_tells_the_group_from_a_stranger() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert port_owner(port, os.getpgid(0)) == "none"  # bound, not listening: as vLLM loads
        sock.listen()
        # Our own group holds it; a group we are not in does not.
        assert port_owner(port, os.getpgid(0)) == "group"
        assert port_owner(port, 1) == "foreign"


async def test_a_squatter_on_the_port_is_never_called_ready(
    session: aiohttp.ClientSession, squatter: tuple[Squatter, int], engines: list[Engine]
) -> None:
    sq, port = squatter
    engine = make_engine(session, st=settings(bo_restart_max=1),
                         ports=iter([port] * 10))
    engines.append(engine)
    rec = Recorder(engine)
    engine.start()
    assert not await settled(engine)
    assert EngineState.READY not in rec.states
    assert engine.state is EngineState.FAILED
    last = engine.last_exit
    assert last is not None and any("Address already in use" in x or "Errno 98" in x
                                    for x in last.lines)
    # The squatter answered on the port all along, but was never even probed: no key, no
    # prompt, not a single request reached it.
    assert sq.requests == []


async def test_the_port_is_checked_again_on_every_restart(
    session: aiohttp.ClientSession, squatter: tuple[Squatter, int], engines: list[Engine]
) -> None:
    sq, taken = squatter
    first = free_port()
    engine = make_engine(session, st=settings(bo_restart_max=1), ports=iter([first] + [taken] * 9))
    engines.append(engine)
    engine.start()
    assert await settled(engine) and engine.port == first
    pid = engine.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await until(lambda: engine.state is EngineState.FAILED)  # restarts land on the taken port
    assert engine.restarts >= 1
    assert sq.requests == []


# ---- item 11: the leader's death seen at once ---------------------------------------------


async def test_leader_death_is_seen_at_once_and_the_rest_killed_without_grace(
    session: aiohttp.ClientSession, engines: list[Engine]
) -> None:
    # A child that ignores SIGTERM and a long stop_timeout: only an immediate SIGKILL gets
    # rid of it before the grace would end.
    engine = make_engine(session, "--fake-spawn-child", "--fake-child-ignores-term",
                         st=settings(stop_timeout=30.0, bo_restart_max=5))
    engines.append(engine)
    left_ready: list[float] = []
    engine.add_listener(lambda e, old: left_ready.append(time.monotonic())
                        if old is EngineState.READY else None)
    engine.start()
    assert await settled(engine)
    pgid = engine.status().pid
    assert pgid is not None
    await until(lambda: len(group_members(pgid)) >= 2)
    orphans = set(group_members(pgid)) - {pgid}
    killed = time.monotonic()
    os.kill(pgid, signal.SIGKILL)
    await until(lambda: bool(left_ready), within=5)
    assert left_ready[0] - killed < 1.0  # the bound: not ready within 1 s
    assert engine.state is EngineState.CRASHED or engine.state is EngineState.BACKOFF
    assert engine.unavailable_reason().startswith("model 'fake' ")
    assert await all_gone(orphans)
    assert time.monotonic() - killed < 30.0  # well before stop_timeout: no grace was given
    await until(lambda: engine.state is EngineState.READY and engine.restarts == 1)


# ---- item 12: restart policy --------------------------------------------------------------


async def test_an_engine_that_served_is_restarted_however_often_it_crashes(
    session: aiohttp.ClientSession, engines: list[Engine]
) -> None:
    engine = make_engine(session, "--fake-exit-after", "0.3", st=settings(bo_restart_max=1))
    engines.append(engine)
    rec = Recorder(engine)
    engine.start()
    await until(lambda: engine.restarts >= 4)  # the old policy gave up after the second
    assert EngineState.FAILED not in rec.states
    assert rec.states.count(EngineState.READY) >= 4


async def test_backing_off_says_so(session: aiohttp.ClientSession, engines: list[Engine]) -> None:
    engine = make_engine(session, "--fake-exit-after", "0.3",
                         st=settings(bo_initial=30.0, bo_maximum=30.0))
    engines.append(engine)
    engine.start()
    await until(lambda: engine.state is EngineState.BACKOFF)
    reason = engine.status().reason
    assert reason.startswith("model 'fake' crashed (exit 0); backing off, restart in ")
    assert "loading" not in reason


# ---- item 10: hung engines ----------------------------------------------------------------


async def _stream(session: aiohttp.ClientSession, port: int) -> list[bytes]:
    """A streamed completion straight to the engine: the chunks until the stream ends."""
    chunks: list[bytes] = []
    body = {"model": "fake", "prompt": "go", "max_tokens": 500, "stream": True}
    try:
        async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=body,
                                headers={"Authorization": f"Bearer {KEY}"}) as resp:
            async for chunk in resp.content.iter_any():
                chunks.append(chunk)
    except aiohttp.ClientError:
        chunks.append(b"<connection broken>")
    return chunks


async def test_a_wedged_engine_is_killed_and_restarted(
    session: aiohttp.ClientSession, engines: list[Engine]
) -> None:
    engine = make_engine(session, "--fake-tokens", "500", "--fake-token-delay", "0.05",
                         st=settings(hang_timeout=1.5, bo_restart_max=5))
    engines.append(engine)
    engine.start()
    assert await settled(engine)
    port = engine.port
    assert port is not None
    stream = asyncio.ensure_future(_stream(session, port))
    await asyncio.sleep(0.5)  # tokens flow: that is progress, no wedge
    assert engine.state is EngineState.READY
    async with session.post(f"http://127.0.0.1:{port}/fake/wedge") as resp:
        assert resp.status == 200
    # /health still answers 200 from the wedged engine (vllm#36960)...
    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
        assert resp.status == 200
    # ...but it is found out, its request ends, and it comes back.
    async with asyncio.timeout(WAIT):
        chunks = await stream
    assert b"[DONE]" not in b"".join(chunks)
    await until(lambda: engine.restarts == 1 and engine.state is EngineState.READY)
    last = engine.last_exit
    assert last is not None and last.cls is ExitClass.HUNG and "no progress" in last.hint


async def test_a_stopped_idle_engine_is_found_by_the_tiny_request(
    session: aiohttp.ClientSession, engines: list[Engine]
) -> None:
    engine = make_engine(session, "--fake-spawn-child", st=settings(hang_timeout=1.5,
                                                                     bo_restart_max=5))
    engines.append(engine)
    engine.start()
    assert await settled(engine)
    pgid = engine.status().pid
    assert pgid is not None
    await until(lambda: len(group_members(pgid)) >= 2)
    members = set(group_members(pgid))
    os.killpg(pgid, signal.SIGSTOP)  # the whole engine stops; nothing answers any more
    await until(lambda: engine.state is not EngineState.READY)
    assert await all_gone(members)  # a stopped group is SIGKILLed: no orphans
    await until(lambda: engine.restarts == 1 and engine.state is EngineState.READY)
    last = engine.last_exit
    assert last is not None and last.cls is ExitClass.HUNG and last.code == -signal.SIGKILL


async def test_a_healthy_engine_is_left_alone(
    session: aiohttp.ClientSession, engines: list[Engine]
) -> None:
    # Slow tokens (0.3 s apart) while busy, then idle: neither is a wedge at hang_timeout 1.
    engine = make_engine(session, "--fake-token-delay", "0.3", "--fake-tokens", "12",
                         st=settings(hang_timeout=1.0))
    engines.append(engine)
    engine.start()
    assert await settled(engine)
    port = engine.port
    assert port is not None
    chunks = await _stream(session, port)
    assert b"[DONE]" in b"".join(chunks)  # 12 tokens over ~3.6 s: never cut
    await asyncio.sleep(3.0)  # idle for three timeouts: tiny requests keep proving it alive
    assert engine.state is EngineState.READY and engine.restarts == 0
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    # The stream's 12 tokens, and more from the tiny requests of the idle watch.
    tokens = [line for line in text.splitlines()
              if line.startswith("vllm:generation_tokens_total")]
    assert tokens and float(tokens[0].split()[-1]) > 13


async def test_a_sleeping_engine_is_not_taken_for_a_wedged_one(
    session: aiohttp.ClientSession, engines: list[Engine]
) -> None:
    engine = make_engine(session, st=settings(hang_timeout=0.6, bo_restart_max=5))
    engines.append(engine)
    engine.start()
    assert await settled(engine)
    port = engine.port
    engine.pause_watch(True)  # what the scheduler does before POST /sleep
    async with session.post(f"http://127.0.0.1:{port}/fake/wedge") as resp:
        assert resp.status == 200
    await asyncio.sleep(2.0)
    assert engine.state is EngineState.READY and engine.restarts == 0
    engine.pause_watch(False)
    await until(lambda: engine.restarts == 1)


# ---- item 18b: an engine that floods its output -------------------------------------------


async def test_a_flooding_engine_is_relayed_within_the_line_budget(
    session: aiohttp.ClientSession, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vllama")
    engine = make_engine(session, "--fake-flood", watch=False)
    engines.append(engine)
    started = time.monotonic()
    engine.start()
    assert await settled(engine)
    # The loop stays free while the flood goes on: the engine's port answers the gateway's
    # requests, and the budget keeps the relayed lines near its rate.
    for _ in range(20):
        async with session.get(f"http://127.0.0.1:{engine.port}/health") as resp:
            assert resp.status == 200
        await asyncio.sleep(0.1)
    await engine.stop()
    elapsed = time.monotonic() - started
    relayed = [r for r in caplog.records if r.name == "vllama.engine"]
    assert len(relayed) <= LineBudget.BURST + LineBudget.RATE * elapsed
    assert engine.dropped_lines > 10 * LineBudget.BURST  # the flood was real, and counted
    reports = [r.getMessage() for r in caplog.records
               if "lines of its output dropped" in r.getMessage()]
    assert reports and sum(int(m.split(": ")[1].split()[0]) for m in reports) == \
        engine.dropped_lines
