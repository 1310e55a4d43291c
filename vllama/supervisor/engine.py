"""One engine: one `vllm serve` child, its state machine, readiness, restarts and stop.

Every state change goes through `Engine._set_state`, which stamps the time and tells the
listeners (the daemon hooks sd_notify STATUS=, metrics and logs there). One task per engine
(`_run`) owns the child; `stop()` asks it to finish and waits for it.

Decisions:
- A config or capacity failure *during load* is not restarted: the same argv would fail the same
  way (and a capacity failure would thrash the GPU). The engine goes to `failed` with a hint.
  After the engine was ready, every unasked exit is a crash and is always restarted with the
  capped backoff (a runtime OOM or a wedge is transient); only a start-up loop gives up.
- The start-up deadline kills the group and ends in `failed` (class timeout): a load that took
  longer than startup_timeout would take as long again, so a restart loop only burns time.
- The moment the leader exits unasked the engine is `crashed` (not ready: no request goes to a
  dead port), and what is left of the group is SIGKILLed at once: vLLM's API server leaves
  EngineCore and workers alive when it dies, and a crashed group has nothing to drain.
- Ready means the child's own listener answered: the port is chosen free but bound later by the
  child, so a local process could bind it first and receive the engine key and the prompts.
  Every /health probe first checks in /proc that every listener on the port belongs to the
  child's process group; the check is repeated while it serves.
- A ready engine is watched for progress (liveness.py): a wedged engine (vllm#36960) keeps
  answering /health 200; after hang_timeout without evidence of progress it is killed (its
  requests end with an error line, their connections closing) and restarted.
- The child's output is relayed under a line budget: a child that floods its pipes must not
  take the event loop from the gateway; lines over the budget are dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, Protocol

import msgspec

from vllama.errors import ConfigError
from vllama.supervisor import procs
from vllama.supervisor.argv import HardwareInfo, build_argv, build_env
from vllama.supervisor.backoff import Backoff
from vllama.supervisor.classify import (
    Classification,
    ExitClass,
    classify_exit,
    hung_classification,
    port_taken_classification,
    timeout_classification,
)
from vllama.supervisor.liveness import HangWatch, parse_metrics
from vllama.supervisor.output import LineBudget, LineReader, is_access_line, phase_of
from vllama.supervisor.state import (
    SETTLED,
    EngineSettings,
    EngineSpec,
    EngineState,
    EngineStatus,
    ExitInfo,
    check_transition,
)

log = logging.getLogger("vllama.supervisor")
child_log = logging.getLogger("vllama.engine")

Probe = Callable[[int], Awaitable[bool]]
"""`await probe(port)` -> True when vLLM's GET /health on that port answered 200."""

GpuFreed = Callable[[frozenset[int]], bool]
"""`gpu_freed(pids)` -> True when no GPU holds memory for these pids (NVML's view)."""

Listener = Callable[["Engine", EngineState], None]
"""Called as `listener(engine, previous_state)` after every state change."""

PortPicker = Callable[[], int]
"""Chooses the port a new child listens on (a free one; tests pin it)."""


class Liveness(Protocol):
    """The HTTP side of the hang watch (vllama.supervisor.probe.HttpLiveness)."""

    async def metrics(self, port: int, timeout: float) -> str | None:
        """vLLM's /metrics text, None when it does not answer in time."""

    async def tiny_request(self, port: int, model: str, key: str, timeout: float
                           ) -> bool | None:
        """A one-token request: True done, False not done in time, None not possible."""


_STREAM_LIMIT = 1 << 20  # longest child output line we keep whole
_READ_CHUNK = 1 << 16
_READER_DRAIN = 3.0  # bound on waiting for the pipes to reach EOF after the group is gone
_GPU_POLL = 0.5
_WATCH_MAX = 5.0  # the longest pause between two looks at a ready engine

LifeEnd = Literal["exited", "hung", "timeout", "stopped"]


class Engine:
    """Owns one served model's vLLM child. Create, `start()`, later `await stop()`."""

    def __init__(
        self,
        spec: EngineSpec,
        settings: EngineSettings,
        *,
        hardware: HardwareInfo,
        probe: Probe,
        environ: Mapping[str, str],
        cwd: str | None = None,
        gpu_freed: GpuFreed | None = None,
        liveness: Liveness | None = None,
        port_picker: PortPicker = procs.free_port,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """`liveness`: the hang watch's probes (None: only the port is watched)."""
        self.spec = spec
        self._settings = settings
        self._hw = hardware
        self._probe = probe
        self._liveness = liveness
        self._pick_port = port_picker
        self._environ = environ
        self._cwd = cwd
        self._gpu_freed = gpu_freed
        self._clock = clock
        self._wall = wall
        self._backoff = Backoff(settings.backoff, rand)
        self._listeners: list[Listener] = []

        self._state = EngineState.STOPPED
        self._since = wall()
        self._pid: int | None = None
        self._port: int | None = None
        self._restarts = 0
        self._phase = ""
        self._load_started: float | None = None
        self._load_seconds: float | None = None
        self._last_exit: ExitInfo | None = None
        self._down = ""  # what ended the last life, while the group is being killed
        self._retry_at: float | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=settings.tail_lines)
        self._group_pids: frozenset[int] = frozenset()  # every pid seen in the last child's group
        self._watch_paused = False  # parked with vLLM's sleep mode: no tiny requests then
        self.dropped_lines = 0  # child output lines over the budget, over all lives

        self._task: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._stop_event = asyncio.Event()
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ---- observation -------------------------------------------------------------------

    @property
    def settings(self) -> EngineSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: EngineSettings) -> None:
        """Policy changes (reload) apply without a restart."""
        self._settings = settings
        self._backoff.policy = settings.backoff

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is EngineState.READY

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def last_exit(self) -> ExitInfo | None:
        return self._last_exit

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def pause_watch(self, paused: bool) -> None:
        """The scheduler parks (sleep mode) or wakes the engine: a sleeping engine answers no
        request, so the hang watch must not take that for a wedge."""
        self._watch_paused = paused

    def load_elapsed(self) -> float | None:
        if self._load_started is not None:
            return self._clock() - self._load_started
        return self._load_seconds

    def unavailable_reason(self) -> str:
        """Why requests get 503 now; "" when ready. The text goes to clients as is."""
        name = self.spec.name
        st = self._state
        if st is EngineState.READY:
            return ""
        if st in (EngineState.STARTING, EngineState.LOADING):
            elapsed = self.load_elapsed() or 0.0
            phase = self._phase or "starting"
            return f"model '{name}' is loading ({phase}, {elapsed:.0f} s)"
        if st is EngineState.CRASHED:
            return f"model '{name}' is down ({self._down}); restarting"
        if st is EngineState.BACKOFF:
            wait = max(0.0, (self._retry_at or self._clock()) - self._clock())
            return f"model '{name}' {self._went_down()}; backing off, restart in {wait:.0f} s"
        if st is EngineState.FAILED:
            hint = self._last_exit.hint if self._last_exit else "unknown error"
            return f"model '{name}' failed: {hint}"
        return f"model '{name}' is {st.value}"

    def _went_down(self) -> str:
        last = self._last_exit
        if last is None:
            return "crashed"
        if last.cls is ExitClass.HUNG:
            return f"hung (no progress for {self.settings.hang_timeout:g} s)"
        return f"crashed (exit {last.code})"

    def status(self) -> EngineStatus:
        return EngineStatus(
            model=self.spec.name,
            source=self.spec.source,
            state=self._state,
            since=self._since,
            pid=self._pid,
            port=self._port,
            restarts=self._restarts,
            phase=self._phase,
            load_seconds=self.load_elapsed(),
            last_exit=self._last_exit,
            reason=self.unavailable_reason(),
        )

    async def wait_ready(self) -> bool:
        """Wait until the engine is ready (True) or settled otherwise (False: failed or
        stopped). Bound it with `asyncio.timeout()`; cancelling the wait is harmless."""
        while self._state not in SETTLED:
            await asyncio.shield(self._changed)
        return self._state is EngineState.READY

    # ---- the one place state changes -------------------------------------------------

    def _set_state(self, new: EngineState) -> None:
        old = self._state
        if new is old:
            return
        check_transition(old, new)
        self._state = new
        self._since = self._wall()
        log.info(
            "engine %s: %s -> %s",
            self.spec.name,
            old.value,
            new.value,
            extra={"component": "supervisor", "model": self.spec.name},
        )
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)
        for listener in list(self._listeners):
            try:
                listener(self, old)
            except Exception:
                log.exception("engine %s: state listener failed", self.spec.name)

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the child (in the background); `wait_ready()` tells when it serves."""
        if self._task is not None and not self._task.done():
            return
        self._stop_requested = False
        self._stop_event.clear()
        self._backoff.reset()
        self._set_state(EngineState.STARTING)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"engine:{self.spec.name}"
        )

    async def stop(self) -> None:
        """SIGTERM the group, wait stop_timeout, SIGKILL the group, verify nothing is left."""
        self._stop_requested = True
        self._stop_event.set()
        task = self._task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(EngineState.STOPPED)

    async def _run(self) -> None:
        try:
            while not self._stop_requested:
                end, info, uptime = await self._life()
                if end == "stopped" or self._stop_requested:
                    break
                if not await self._after_exit(end, info, uptime):
                    return
        except Exception:
            log.exception("engine %s: supervisor task failed", self.spec.name)
            self._last_exit = ExitInfo(
                None, ExitClass.CRASH, "vllama's supervisor failed: see its log", at=self._wall()
            )
            self._set_state(EngineState.FAILED)
            return
        self._set_state(EngineState.STOPPED)

    async def _after_exit(self, end: LifeEnd, info: ExitInfo, uptime: float | None) -> bool:
        """Decide what follows an unasked end; True to restart (after backoff)."""
        hopeless = info.cls in (ExitClass.CONFIG, ExitClass.CAPACITY)
        if end == "timeout" or (uptime is None and hopeless):
            self._set_state(EngineState.FAILED)
            return False
        self._set_state(EngineState.CRASHED)
        delay = self._backoff.record_failure(self._clock(), uptime)
        if delay is None:
            p = self.settings.backoff
            self._last_exit = msgspec.structs.replace(
                info,
                hint=f"gave up after {p.restart_max} restarts that never became ready within "
                f"{p.window:g} s; last exit: {info.hint}",
            )
            self._set_state(EngineState.FAILED)
            return False
        self._retry_at = self._clock() + delay
        self._set_state(EngineState.BACKOFF)
        if await self._sleep_unless_stopped(delay):
            return False
        await self._wait_gpu_freed()
        self._retry_at = None
        if self._stop_requested:
            return False
        self._restarts += 1
        self._set_state(EngineState.STARTING)
        return True

    async def _sleep_unless_stopped(self, delay: float) -> bool:
        """Sleep `delay` s; True if a stop was asked meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop_event.wait()
        return self._stop_requested

    async def _wait_gpu_freed(self) -> None:
        """A new child that starts while the old one's VRAM is still held would OOM at load."""
        if self._gpu_freed is None or not self._hw.on_gpu:
            return
        pids = self._group_pids
        deadline = self._clock() + self.settings.gpu_free_timeout
        while not self._gpu_freed(pids) and self._clock() < deadline:
            if await self._sleep_unless_stopped(_GPU_POLL):
                return
        if not self._gpu_freed(pids):
            log.warning(
                "engine %s: GPU memory of the old child not freed after %g s; restarting anyway",
                self.spec.name,
                self.settings.gpu_free_timeout,
                extra={"component": "supervisor", "model": self.spec.name},
            )

    # ---- one child's life -------------------------------------------------------------

    async def _life(self) -> tuple[LifeEnd, ExitInfo, float | None]:
        """Spawn, wait for ready, watch; return how it ended, the exit and the uptime after
        ready (None when it never became ready)."""
        self._set_state(EngineState.STARTING)
        self._phase = "starting"
        self._tail.clear()
        port = self._pick_port()
        try:
            argv = build_argv(
                self.spec.vllm_command,
                self.spec.source,
                self.spec.name,
                port,
                self.spec.vllm_args,
                hw=self._hw,
            )
        except ConfigError as exc:
            info = ExitInfo(None, ExitClass.CONFIG, exc.message, at=self._wall())
            self._last_exit = info
            return "exited", info, None  # config class, never ready: not restarted
        env = build_env(self._environ, self._hw, self.spec.api_key, dict(self.spec.env))
        self._load_started = self._clock()
        self._load_seconds = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self._cwd,
                start_new_session=True,
                preexec_fn=procs.parent_death_signal(signal.SIGTERM),
                limit=_STREAM_LIMIT,
            )
        except OSError as exc:  # vllm_command not found or not executable
            self._load_started = None
            hint = f"cannot run {argv[0]!r}: {exc.strerror or exc}; check vllm_command"
            info = ExitInfo(None, ExitClass.CONFIG, hint, at=self._wall())
            self._last_exit = info
            return "exited", info, None
        self._pid, self._port = proc.pid, port
        self._group_pids = frozenset({proc.pid})
        log.info(
            "engine %s: started pid %d on port %d: %s",
            self.spec.name,
            proc.pid,
            port,
            " ".join(argv),
            extra={"component": "supervisor", "model": self.spec.name, "vllm_pid": proc.pid},
        )
        budget = LineBudget(self._clock)
        readers = [
            asyncio.create_task(self._pump(proc.stdout, proc.pid, budget)),
            asyncio.create_task(self._pump(proc.stderr, proc.pid, budget)),
        ]
        exited = asyncio.create_task(procs.wait_exited(proc.pid))
        stop = asyncio.create_task(self._stop_event.wait())
        end: LifeEnd
        uptime: float | None = None
        verdict: Classification | None = None  # why the watch killed it
        try:
            self._set_state(EngineState.LOADING)
            waited = await self._await_ready(exited, stop, proc.pid)
            end = "exited" if waited == "ready" else waited
            if waited == "ready":
                self._load_seconds = self.load_elapsed()
                self._load_started = None
                self._phase = "ready"
                ready_at = self._clock()
                self._set_state(EngineState.READY)
                end, verdict = await self._serve(exited, stop, port, proc.pid)
                uptime = self._clock() - ready_at
            if end in ("exited", "hung") and not self._stop_requested:
                # Not ready from this instant, then SIGKILL: nothing of it is worth a grace.
                self._down = verdict.hint if verdict is not None else "its process exited"
                self._set_state(EngineState.CRASHED)
                await self._end_group_now(proc.pid)
            elif end != "exited":
                # Asked to stop, or the start-up deadline: SIGTERM the group, grace, SIGKILL.
                if self._stop_requested:
                    self._set_state(EngineState.STOPPING)
                await self._end_group(proc.pid, self.settings.stop_timeout)
            await self._leader_gone(proc.pid, exited)
            # The leader is gone; its EngineCore/workers may not be (they outlive it).
            if self._stop_requested:
                await self._end_group(proc.pid, self.settings.stop_timeout)
            else:
                await self._end_group_now(proc.pid)
        except BaseException:
            procs.kill_group_now(proc.pid)
            raise
        finally:
            stop.cancel()
            exited.cancel()
            await self._reap(proc, readers)
            self._report_dropped(budget.due_report(final=True))
            self.dropped_lines += budget.dropped_total
            if self._load_started is not None:
                self._load_seconds = self.load_elapsed()
                self._load_started = None
            self._pid = None
            self._port = None

        if end == "timeout":
            cls = timeout_classification(self.settings.startup_timeout)
        elif verdict is not None and not self._stop_requested:
            cls = verdict
        else:
            cls = classify_exit(proc.returncode, list(self._tail), self._stop_requested)
        info = self._exit_info(proc.returncode, cls)
        self._last_exit = info
        log.log(
            logging.INFO if cls.cls is ExitClass.STOPPED else logging.ERROR,
            "engine %s: pid %d exited with %s (%s): %s",
            self.spec.name,
            proc.pid,
            proc.returncode,
            cls.cls.value,
            cls.hint,
            extra={
                "component": "supervisor",
                "model": self.spec.name,
                "vllm_pid": proc.pid,
                "vllm_exit_code": proc.returncode,
            },
        )
        return end, info, uptime

    async def _serve(
        self, exited: asyncio.Task[None], stop: asyncio.Task[bool], port: int, pgid: int
    ) -> tuple[LifeEnd, Classification | None]:
        """While ready: until the leader exits, a stop is asked, or the watch finds the
        engine wedged or its port taken."""
        watch = asyncio.create_task(self._watch(port, pgid))
        try:
            await asyncio.wait({exited, stop, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if exited.done():
            return "exited", None
        if stop.done():
            return "stopped", None
        return "hung", watch.result()

    async def _await_ready(
        self, exited: asyncio.Task[None], stop: asyncio.Task[bool], pgid: int
    ) -> Literal["ready", "exited", "timeout", "stopped"]:
        assert self._port is not None
        poller = asyncio.create_task(self._poll_health(self._port, pgid))
        try:
            done, _ = await asyncio.wait(
                {exited, stop, poller},
                timeout=self.settings.startup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if exited in done:
            return "exited"  # a failure even if the last probe said ready: it is gone now
        if stop in done:
            return "stopped"
        if poller in done:
            return "ready"
        return "timeout"

    async def _poll_health(self, port: int, pgid: int) -> None:
        """Return once /health answers 200 from the child's own listener. Nothing listening
        is normal while loading (vLLM binds its socket early but listens only once the engine
        is up); a listener outside the child's group is never probed."""
        s = self.settings
        warned = False
        while True:
            owner = procs.port_owner(port, pgid)
            if owner == "group":
                try:
                    async with asyncio.timeout(s.probe_timeout):
                        if await self._probe(port):
                            return
                except (TimeoutError, OSError):
                    pass
            elif owner == "foreign" and not warned:
                warned = True
                log.error(
                    "engine %s: another process listens on its port %d; it is not the engine "
                    "and gets nothing (the engine will fail to bind and be restarted on "
                    "another port)",
                    self.spec.name,
                    port,
                    extra={"component": "supervisor", "model": self.spec.name},
                )
            await asyncio.sleep(s.health_poll_interval)

    def _watch_interval(self) -> float:
        timeout = self.settings.hang_timeout
        return _WATCH_MAX if timeout <= 0 else min(_WATCH_MAX, max(0.05, timeout / 6))

    async def _watch(self, port: int, pgid: int) -> Classification:
        """Why the ready engine must go: another listener on its port, or no evidence of
        progress for hang_timeout (liveness.py). Runs until then; cancelled at the end of
        the life."""
        watch = HangWatch(self.settings.hang_timeout, self._clock())
        while True:
            await asyncio.sleep(self._watch_interval())
            if procs.port_owner(port, pgid) == "foreign":
                return port_taken_classification(port)
            s = self.settings  # a reload may have changed it
            if s.hang_timeout <= 0 or self._liveness is None or self._watch_paused:
                watch = HangWatch(s.hang_timeout, self._clock())  # evidence starts again
                continue
            watch.timeout = s.hang_timeout
            text = await self._liveness.metrics(port, s.probe_timeout)
            now = self._clock()
            if watch.observe(now, parse_metrics(text) if text else None) == "probe":
                # Wait for the answer as long as the engine has left, but at least one probe
                # timeout: a slow host's one-token reply is not a wedge.
                left = max(watch.remaining(now), s.probe_timeout)
                ok: bool | None = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        ok = await self._liveness.tiny_request(
                            port, self.spec.name, self.spec.api_key, left)
                watch.probed(self._clock(), ok is not False)
            if watch.wedged(self._clock()):
                log.error(
                    "engine %s: no progress for %g s (pid %d): killing and restarting it",
                    self.spec.name,
                    s.hang_timeout,
                    pgid,
                    extra={"component": "supervisor", "model": self.spec.name},
                )
                return hung_classification(s.hang_timeout)

    async def _end_group(self, pgid: int, grace: float) -> None:
        self._group_pids = self._group_pids | frozenset(procs.group_members(pgid))
        self._report_left(pgid, await procs.kill_group(pgid, grace))

    async def _end_group_now(self, pgid: int) -> None:
        self._group_pids = self._group_pids | frozenset(procs.group_members(pgid))
        self._report_left(pgid, await procs.kill_group_hard(pgid))

    def _report_left(self, pgid: int, left: list[int]) -> None:
        if left:
            log.error(
                "engine %s: processes %s survived SIGKILL of group %d",
                self.spec.name,
                left,
                pgid,
                extra={"component": "supervisor", "model": self.spec.name},
            )

    async def _leader_gone(self, pid: int, exited: asyncio.Task[None]) -> None:
        """Wait for the leader's exit (it was signalled, or it exited by itself)."""
        try:
            async with asyncio.timeout(self.settings.stop_timeout + 10.0):
                await asyncio.shield(exited)
        except TimeoutError:
            procs.kill_group_now(pid)
            async with asyncio.timeout(10.0):
                await asyncio.shield(exited)

    async def _reap(
        self, proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]
    ) -> None:
        """Collect the exit status and let the readers reach EOF so the last lines are
        classified. Every writer is dead by now, but one that escaped the group (setsid) could
        hold a pipe open forever, hence the bound."""
        try:
            async with asyncio.timeout(_READER_DRAIN):
                await proc.wait()  # returns once exited *and* both pipes are closed
        except TimeoutError:
            # Close our ends so the transport does not stay open while the escapee lives.
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()
        _, pending = await asyncio.wait(readers, timeout=_READER_DRAIN)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _pump(
        self, stream: asyncio.StreamReader | None, pid: int, budget: LineBudget
    ) -> None:
        """Re-emit the child's output line by line under logger vllama.engine, within the
        line budget. Reads whole chunks and yields to the loop after each one: a pipe full of
        lines would otherwise be consumed without ever letting the gateway run."""
        if stream is None:
            return
        reader = LineReader()
        extra = {"component": "vllm", "model": self.spec.name, "vllm_pid": pid}
        partial = b""
        while True:
            data = await stream.read(_READ_CHUNK)
            lines = (partial + data).split(b"\n") if data else [partial] if partial else []
            partial = lines.pop() if data else b""
            if len(partial) > _STREAM_LIMIT:
                partial = b""
                lines.append(b"[vllama: over-long output line dropped]")
            if not child_log.isEnabledFor(logging.DEBUG):
                lines = [raw for raw in lines if not is_access_line(raw)]
            allowed = budget.grant(len(lines))
            for raw in lines[:allowed]:
                self._relay(reader, raw, extra)
            if allowed < len(lines):
                # Over budget: counted, and the last few kept for the crash classification.
                keep = self._tail.maxlen or 0
                for raw in lines[max(allowed, len(lines) - keep):]:
                    self._tail.append(raw.decode("utf-8", errors="replace").rstrip("\r"))
            self._report_dropped(budget.due_report())
            if not data:
                return
            await asyncio.sleep(0)

    def _report_dropped(self, count: int) -> None:
        if count:
            log.warning(
                "engine %s: %d lines of its output dropped (more than %g lines/s)",
                self.spec.name,
                count,
                LineBudget.RATE,
                extra={"component": "supervisor", "model": self.spec.name},
            )

    def _relay(self, reader: LineReader, raw: bytes, extra: dict[str, object]) -> None:
        line = reader.parse(raw.decode("utf-8", errors="replace"))
        self._tail.append(line.text)
        phase = phase_of(line.text)
        if phase is not None and self._state is EngineState.LOADING:
            self._phase = phase
        child_log.log(line.level, "%s", line.text, extra={**extra, "vllm_process": line.process})

    def _exit_info(self, code: int | None, cls: Classification) -> ExitInfo:
        return ExitInfo(code, cls.cls, cls.hint, tuple(self._tail), at=self._wall())
