"""The gateway worker processes of the main process: started, restarted when one dies (the
others go on serving), stopped in order at shut-down (SIGTERM, a grace period, SIGKILL).

Workers stay in the main process's cgroup (the unit's) and get a parent-death signal, so none
outlives the daemon even if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping, Sequence

from vllama.supervisor.procs import parent_death_signal

log = logging.getLogger("vllama.workers")

RESTART_DELAY = 1.0  # seconds before a dead worker is started again
# systemd's variables are the main process's own: a worker must not notify in its name.
_NOT_FOR_WORKERS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                    "LISTEN_PID", "LISTEN_FDNAMES")


def worker_argv(control: str, worker: int, log_level: str, log_format: str) -> list[str]:
    return [sys.executable, "-m", "vllama", "worker", "--control", control, "--worker",
            str(worker), "--log-level", log_level, "--log-format", log_format]


class WorkerPool:
    def __init__(self, count: int, control: str, environ: Mapping[str, str], *,
                 log_level: str, log_format: str, stop_timeout: float = 10.0) -> None:
        self.count = count
        self.control = control
        self.environ = {k: v for k, v in environ.items() if k not in _NOT_FOR_WORKERS}
        self.log_level = log_level
        self.log_format = log_format
        self.stop_timeout = stop_timeout
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> dict[int, int]:
        return {n: p.pid for n, p in self.procs.items() if p.returncode is None}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep(n), name=f"worker-{n}")
                       for n in range(1, self.count + 1)]

    async def _spawn(self, worker: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *worker_argv(self.control, worker, self.log_level, self.log_format),
            stdin=asyncio.subprocess.DEVNULL, env=self.environ,
            preexec_fn=parent_death_signal(signal.SIGTERM))

    async def _keep(self, worker: int) -> None:
        while not self._stopping:
            proc = await self._spawn(worker)
            self.procs[worker] = proc
            log.info("gateway worker %d started (pid %d)", worker, proc.pid,
                     extra={"component": "workers"})
            code = await proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.error("gateway worker %d (pid %d) exited with %s; starting it again", worker,
                      proc.pid, code, extra={"component": "workers"})
            await asyncio.sleep(RESTART_DELAY)

    async def stop(self) -> None:
        """SIGTERM every worker (each finishes what it serves, within its own shutdown
        timeout), SIGKILL those still there after `stop_timeout`."""
        self._stopping = True
        procs = [p for p in self.procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.stop_timeout)
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def worker_count(setting: int, cpus: Sequence[int]) -> int:
    """`workers` as set, or (0) one per 8 CPUs this process may use, between 1 and 4: on a GPU
    server the gateway shares the cores with the engines' own front ends."""
    if setting > 0:
        return setting
    return max(1, min(4, len(cpus) // 8))
