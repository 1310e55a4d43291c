"""The Engine and Supervisor with the fake vLLM as a real child process.

Each engine runs `python -m tests.fake_vllm serve ...` in its own process group; the tests check
states, classification, restarts and that no process of the group outlives a stop or a crash.
Backoff and timeouts are small so the whole module takes seconds, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import REPO_ROOT
from vllama.supervisor import (
    BackoffPolicy,
    Engine,
    EngineSettings,
    EngineSpec,
    EngineState,
    ExitClass,
    HardwareInfo,
    Supervisor,
    health_probe,
)
from vllama.supervisor.procs import group_members

pytestmark = pytest.mark.timeout(60)

FAKE = (sys.executable, "-m", "tests.fake_vllm")
CPU = HardwareInfo(mem_available=1 << 30, cpus=(0, 1))
WAIT = 30.0  # bound on any single wait for a state: generous for 2 busy cores


def settings(**kw: Any) -> EngineSettings:
    policy: dict[str, Any] = {
        "initial": 0.05,
        "maximum": 0.2,
        "restart_max": 3,
        "window": 60.0,
        "stable_after": 300.0,
        "jitter": 0.0,
    }
    policy.update({k[len("bo_") :]: v for k, v in kw.items() if k.startswith("bo_")})
    rest = {k: v for k, v in kw.items() if not k.startswith("bo_")}
    base: dict[str, Any] = {
        "startup_timeout": 25.0,
        "stop_timeout": 3.0,
        "health_poll_interval": 0.1,
        "probe_timeout": 1.0,
        "backoff": BackoffPolicy(**policy),
        **rest,
    }
    return EngineSettings(**base)


def child_environ() -> dict[str, str]:
    # The test runner's own FAKE_VLLM_* or systemd variables must not steer the child.
    return {k: v for k, v in os.environ.items() if not k.startswith("FAKE_VLLM_")}


Make = Callable[..., Engine]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def make(session: aiohttp.ClientSession) -> AsyncIterator[Make]:
    """Build engines on the fake; every one is stopped at teardown."""
    engines: list[Engine] = []

    def build(
        *args: str,
        name: str = "fake",
        command: tuple[str, ...] = FAKE,
        st: EngineSettings | None = None,
    ) -> Engine:
        engine = Engine(
            EngineSpec(name=name, source="/models/fake", vllm_command=command, vllm_args=args),
            st or settings(),
            hardware=CPU,
            probe=health_probe(session),
            environ=child_environ(),
            cwd=str(REPO_ROOT),
        )
        engines.append(engine)
        return engine

    yield build
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(e.stop() for e in engines))


class Recorder:
    """Every state an engine passes through, in order."""

    def __init__(self, engine: Engine) -> None:
        self.states: list[EngineState] = []
        engine.add_listener(lambda e, old: self.states.append(e.state))


async def until(cond: Callable[[], bool], within: float = WAIT) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - polls processes and states from outside
            await asyncio.sleep(0.02)


async def settled_ready(engine: Engine) -> bool:
    async with asyncio.timeout(WAIT):
        return await engine.wait_ready()


def alive(pid: int) -> bool:
    """Running (zombies count as gone: they hold nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


async def all_gone(pids: set[int]) -> bool:
    try:
        await until(lambda: not any(alive(p) for p in pids), within=10)
    except TimeoutError:
        return False
    return True


async def test_slow_start_loads_then_serves(make: Make, session: aiohttp.ClientSession) -> None:
    engine = make("--fake-startup-delay", "1.5")
    rec = Recorder(engine)
    engine.start()
    await until(lambda: engine.state is EngineState.LOADING)
    # While loading: a 503 reason naming the phase, and a live child with its port.
    await until(lambda: engine.status().phase not in ("", "starting"), within=WAIT)
    status = engine.status()
    assert status.pid is not None and status.port is not None
    assert engine.unavailable_reason().startswith("model 'fake' is loading (")
    assert not engine.ready
    assert await settled_ready(engine)
    assert rec.states[:3] == [EngineState.STARTING, EngineState.LOADING, EngineState.READY]
    assert engine.unavailable_reason() == ""
    assert engine.status().load_seconds is not None
    async with session.get(f"http://127.0.0.1:{engine.port}/v1/models") as resp:
        body = await resp.json()
    assert [m["id"] for m in body["data"]] == ["fake"]
    pid = engine.status().pid
    assert pid is not None
    await engine.stop()
    assert engine.state is EngineState.STOPPED
    assert rec.states[-2:] == [EngineState.STOPPING, EngineState.STOPPED]
    assert engine.last_exit is not None and engine.last_exit.cls is ExitClass.STOPPED
    assert group_members(pid) == []
    assert engine.status().pid is None


async def test_crash_at_load_backs_off_then_gives_up(make: Make) -> None:
    engine = make("--fake-fail-at-start", "crash", st=settings(bo_restart_max=2))
    rec = Recorder(engine)
    engine.start()
    assert not await settled_ready(engine)
    assert engine.state is EngineState.FAILED
    assert engine.restarts == 2  # 3 children: the first and 2 restarts
    assert rec.states.count(EngineState.BACKOFF) == 2
    assert rec.states.count(EngineState.CRASHED) == 3
    last = engine.last_exit
    assert last is not None and last.cls is ExitClass.CRASH and last.code == 1
    assert "gave up after 2 restarts" in last.hint
    assert any("Traceback" in line for line in last.lines)
    assert engine.unavailable_reason().startswith("model 'fake' failed: gave up")


@pytest.mark.parametrize(
    ("kind", "cls", "expect"),
    [
        ("config", ExitClass.CONFIG, ("vllm_args", "unrecognized arguments")),
        ("nomem", ExitClass.CAPACITY, ("--max-model-len", "No available memory")),
        ("model", ExitClass.CONFIG, ("config.json", "Invalid repository ID")),
    ],
)
async def test_load_failures_that_would_repeat_are_not_restarted(
    make: Make, kind: str, cls: ExitClass, expect: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    hint, line = expect
    caplog.set_level(logging.DEBUG, logger="vllama")
    engine = make("--fake-fail-at-start", kind)
    rec = Recorder(engine)
    engine.start()
    assert not await settled_ready(engine)
    # The child's output is re-emitted line by line, tagged, with the level mapped.
    child = [r for r in caplog.records if r.name == "vllama.engine"]
    failing = [r for r in child if line in r.getMessage()]
    assert failing and all(r.levelno == logging.ERROR for r in failing)
    assert {(r.component, r.model) for r in child} == {("vllm", "fake")}  # type: ignore[attr-defined]
    assert all(isinstance(r.vllm_pid, int) for r in child)  # type: ignore[attr-defined]
    assert engine.state is EngineState.FAILED
    assert engine.restarts == 0
    assert EngineState.BACKOFF not in rec.states
    last = engine.last_exit
    assert last is not None and last.cls is cls and last.code != 0
    assert hint in last.hint
    assert any(line in x for x in last.lines)
    assert engine.unavailable_reason() == f"model 'fake' failed: {last.hint}"


async def test_hang_at_start_hits_the_deadline_and_leaves_nothing(make: Make) -> None:
    engine = make("--fake-hang-at-start", "--fake-spawn-child", st=settings(startup_timeout=3.0))
    engine.start()
    await until(lambda: engine.status().pid is not None)
    pgid = engine.status().pid
    assert pgid is not None
    assert not await settled_ready(engine)
    last = engine.last_exit
    assert engine.state is EngineState.FAILED
    assert last is not None and last.cls is ExitClass.TIMEOUT and "startup_timeout" in last.hint
    assert last.code is not None  # it was terminated, not left running
    assert group_members(pgid) == []


async def test_crash_at_runtime_restarts_and_rc0_is_a_crash(make: Make) -> None:
    engine = make("--fake-exit-after", "1.0", st=settings(bo_restart_max=5))
    rec = Recorder(engine)
    engine.start()
    assert await settled_ready(engine)
    first_pid = engine.status().pid
    # The state leaves READY the moment the leader exits; the exit is recorded once reaped.
    await until(lambda: engine.last_exit is not None, within=WAIT)
    info = engine.last_exit
    assert (
        info is not None and info.code == 0 and info.cls is ExitClass.CRASH
    )  # vLLM exits 0 after engine death
    assert any("EngineCore encountered an issue" in x for x in info.lines)
    await until(lambda: engine.restarts >= 1 and engine.state is EngineState.READY)
    assert engine.status().pid != first_pid  # a new child
    i = rec.states.index(EngineState.CRASHED)
    assert rec.states[i : i + 5] == [
        EngineState.CRASHED,
        EngineState.BACKOFF,
        EngineState.STARTING,
        EngineState.LOADING,
        EngineState.READY,
    ]
    assert engine.status().restarts >= 1


async def test_unavailable_reason_during_backoff(make: Make) -> None:
    engine = make("--fake-fail-at-start", "crash", st=settings(bo_initial=30.0, bo_maximum=30.0))
    engine.start()
    await until(lambda: engine.state is EngineState.BACKOFF)
    reason = engine.unavailable_reason()
    assert reason.startswith("model 'fake' crashed (exit 1); backing off, restart in ")
    assert "loading" not in reason
    await engine.stop()  # a stop interrupts the backoff at once
    assert engine.state is EngineState.STOPPED


async def test_stop_kills_the_whole_group(make: Make) -> None:
    engine = make("--fake-spawn-child")
    engine.start()
    assert await settled_ready(engine)
    pgid = engine.status().pid
    assert pgid is not None
    await until(lambda: len(group_members(pgid)) >= 2)
    members = set(group_members(pgid))
    await engine.stop()
    assert group_members(pgid) == []
    assert await all_gone(members)


async def test_sigkill_of_the_leader_kills_its_orphans(make: Make) -> None:
    engine = make("--fake-spawn-child", st=settings(bo_restart_max=5))
    engine.start()
    assert await settled_ready(engine)
    pgid = engine.status().pid
    assert pgid is not None
    await until(lambda: len(group_members(pgid)) >= 2)
    orphans = set(group_members(pgid)) - {pgid}
    os.kill(pgid, signal.SIGKILL)  # like vLLM's API server dying: EngineCore stays behind
    await until(lambda: engine.last_exit is not None, within=WAIT)
    info = engine.last_exit
    assert info is not None and info.code == -signal.SIGKILL and info.cls is ExitClass.CRASH
    assert await all_gone(orphans)
    assert group_members(pgid) == []
    await until(lambda: engine.state is EngineState.READY and engine.restarts == 1)


async def test_restart_on_gpu_waits_for_the_memory_to_be_freed(
    session: aiohttp.ClientSession,
) -> None:
    calls: list[frozenset[int]] = []

    def gpu_freed(pids: frozenset[int]) -> bool:
        calls.append(pids)
        return len(calls) >= 3  # NVML shows the old child's memory for a while

    gpu = HardwareInfo(gpu_count=1, gpu_name="NVIDIA L4", gpu_memory_total=24 << 30)
    engine = Engine(
        EngineSpec(
            name="g", source="/m/g", vllm_command=FAKE, vllm_args=("--fake-exit-after", "0.5")
        ),
        settings(bo_restart_max=5),
        hardware=gpu,
        probe=health_probe(session),
        environ=child_environ(),
        cwd=str(REPO_ROOT),
        gpu_freed=gpu_freed,
    )
    try:
        engine.start()
        assert await settled_ready(engine)
        first = engine.status().pid
        await until(lambda: engine.restarts >= 1)
        assert len(calls) >= 3
        assert first is not None and all(first in pids for pids in calls[:3])
    finally:
        async with asyncio.timeout(WAIT):
            await engine.stop()


async def test_missing_command_is_a_config_failure(make: Make) -> None:
    engine = make(command=("/nonexistent/vllm",))
    engine.start()
    assert not await settled_ready(engine)
    last = engine.last_exit
    assert last is not None and last.cls is ExitClass.CONFIG and "vllm_command" in last.hint


async def test_removed_flag_fails_before_spawning(make: Make) -> None:
    engine = make("--disable-log-requests")
    engine.start()
    assert not await settled_ready(engine)
    last = engine.last_exit
    assert last is not None and last.cls is ExitClass.CONFIG
    assert "--enable-log-requests" in last.hint and last.code is None  # nothing was spawned


async def test_supervisor_launch_retire_stop(session: aiohttp.ClientSession) -> None:
    def factory(spec: EngineSpec, st: EngineSettings) -> Engine:
        return Engine(
            spec,
            st,
            hardware=CPU,
            probe=health_probe(session),
            environ=child_environ(),
            cwd=str(REPO_ROOT),
        )

    sup = Supervisor(factory, settings())
    seen: list[tuple[str, EngineState]] = []
    sup.add_listener(lambda e, old: seen.append((e.name, e.state)))
    a = EngineSpec(name="a", source="/m/a", vllm_command=FAKE)
    b = EngineSpec(name="b", source="/m/b", vllm_command=FAKE)
    try:
        sup.launch(a)
        sup.launch(b)
        with pytest.raises(ValueError, match="already runs"):
            sup.launch(a)  # one engine per name: the scheduler retires before it relaunches
        assert not sup.ready
        assert sup.status_text().startswith("model 'a' is loading (")
        async with asyncio.timeout(WAIT):
            assert await sup.wait_ready()
        assert sup.ready
        assert sup.status_text() == "ready: a, b"
        snap = {s.model: s for s in sup.snapshot()}
        assert {s.state for s in snap.values()} == {EngineState.READY}
        pid_a, pid_b = snap["a"].pid, snap["b"].pid
        assert pid_a is not None and pid_b is not None

        await sup.retire("b")
        assert group_members(pid_b) == []  # the retired engine's child is gone
        assert sorted(sup.engines) == ["a"] and sup.get("b") is None
        assert ("b", EngineState.READY) in seen and ("b", EngineState.STOPPED) in seen
        await sup.retire("b")  # retiring what is not there is a no-op
        b2 = EngineSpec(
            name="b", source="/m/b", vllm_command=FAKE, vllm_args=("--max-model-len", "512")
        )
        sup.launch(b2)
        async with asyncio.timeout(WAIT):
            assert await sup.wait_ready()
        snap = {s.model: s for s in sup.snapshot()}
        assert snap["a"].pid == pid_a  # untouched
        assert snap["b"].pid not in (None, pid_b)
    finally:
        pids = [s.pid for s in sup.snapshot() if s.pid is not None]
        async with asyncio.timeout(WAIT):
            await sup.stop()
    assert all(group_members(p) == [] for p in pids)
    assert sup.snapshot() == []


async def test_parent_death_signal_reaches_the_child() -> None:
    """If vllama dies without stopping its engines, the kernel SIGTERMs the child."""
    script = (
        "import asyncio, sys\n"
        "from vllama.supervisor.procs import parent_death_signal\n"
        "async def main():\n"
        "    p = await asyncio.create_subprocess_exec('sleep', '60', start_new_session=True,"
        " preexec_fn=parent_death_signal())\n"
        "    print(p.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=str(REPO_ROOT)
    )
    assert parent.stdout is not None
    grandchild = 0
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), WAIT)
        grandchild = int(line)
        assert alive(grandchild)
        parent.kill()
        await parent.wait()
        assert await all_gone({grandchild})
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if grandchild and alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
