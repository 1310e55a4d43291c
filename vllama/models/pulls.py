"""Pulls in progress: one download per repo however many clients ask, blocking hub and cache
work on threads of their own, and nothing that outlives its clients or holds up a shut-down.

- `PullPool`: at most `size` daemon threads run the blocking calls of every pull (hub requests,
  hashing, cache writes). Not asyncio's default executor, which /api/tags, show, delete, copy
  and alias lookups share: a hub that never answers must not take their threads. A thread
  keeps its slot until its call returns (a cancelled waiter does not free it), so stuck calls
  bound the pool instead of growing it; daemon threads never delay the interpreter's exit.
- `Pulls`: the jobs by repo. A second client pulling the same repo follows the running job
  (it sees the latest progress of every file, then the rest); the job is cancelled when its
  last client goes away; `close()` (shut-down) cancels every job and does not wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from vllama.errors import UpstreamError, VllamaError

T = TypeVar("T")

Progress = dict[str, Any]
JobSource = Callable[[Callable[[], list[str]]], AsyncGenerator[Progress, None]]
"""Starts the pull of one repo: given the names its clients asked for (read at the end, to
record them all), an async generator of progress objects."""

POOL_THREADS = 8
_ABANDON_WAIT = 5.0  # how long the last client waits for an abandoned job to clean up


class PullPool:
    """Runs blocking calls on at most `size` daemon threads (see the module doc)."""

    def __init__(self, size: int = POOL_THREADS) -> None:
        self.size = size
        self._slots: asyncio.Semaphore | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        slots = self._slots
        await slots.acquire()
        done: asyncio.Future[T] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            slots.release()
            if done.done():  # the waiter was cancelled
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)

        def work() -> None:
            value: Any = None
            error: BaseException | None = None
            try:
                value = fn()
            except BaseException as exc:  # handed to the waiter
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, value, error)

        try:
            threading.Thread(target=work, name="vllama-pull", daemon=True).start()
        except BaseException:
            slots.release()
            raise
        return await done


def _key(item: Progress) -> str:
    """Progress of one file replaces its earlier progress; statuses follow each other."""
    return str(item.get("digest") or item.get("status"))


class _Follower:
    """One client of a job: what it has not seen yet (newest progress per file)."""

    def __init__(self, backlog: dict[str, Progress]) -> None:
        self.pending = dict(backlog)
        self.wake = asyncio.Event()
        self.finished = False
        self.error: VllamaError | None = None
        if backlog:
            self.wake.set()


class _Job:
    def __init__(self, source: JobSource) -> None:
        self.names: list[str] = []
        self.followers: list[_Follower] = []
        self.latest: dict[str, Progress] = {}
        self.abandoned = False
        self.cancelled_because = "the pull was cancelled"
        self.task = asyncio.get_running_loop().create_task(self._run(source), name="pull")

    @property
    def joinable(self) -> bool:
        return not self.abandoned and not self.task.done()

    async def _run(self, source: JobSource) -> None:
        error: VllamaError | None = None
        try:
            async with contextlib.aclosing(source(lambda: list(self.names))) as progress:
                async for item in progress:
                    self._publish(item)
        except VllamaError as exc:
            error = exc
        except asyncio.CancelledError:
            error = UpstreamError(self.cancelled_because)
            raise
        except Exception as exc:  # a bug or a disk error: every follower learns it
            error = VllamaError(f"pull failed: {exc}")
        finally:
            for follower in self.followers:
                follower.finished, follower.error = True, error
                follower.wake.set()

    def _publish(self, item: Progress) -> None:
        key = _key(item)
        self.latest.pop(key, None)
        self.latest[key] = item
        for follower in self.followers:
            follower.pending.pop(key, None)
            follower.pending[key] = item
            follower.wake.set()

    def follow(self, name: str) -> _Follower:
        if name not in self.names:
            self.names.append(name)
        follower = _Follower(self.latest)
        self.followers.append(follower)
        return follower

    def leave(self, follower: _Follower) -> bool:
        """True when that was the last follower of an unfinished job: it is cancelled."""
        self.followers.remove(follower)
        if self.followers or self.task.done():
            return False
        self.abandoned = True
        self.task.cancel()
        return True


class Pulls:
    """The pulls of one daemon (or one CLI command). Use from its event loop only."""

    def __init__(self, pool: PullPool | None = None) -> None:
        self.pool = pool or PullPool()
        self._jobs: dict[str, _Job] = {}
        self._closing = False

    @property
    def running(self) -> list[str]:
        return [key for key, job in self._jobs.items() if job.joinable]

    async def follow(self, key: str, name: str, source: JobSource
                     ) -> AsyncGenerator[Progress, None]:
        """The progress of pulling repo `key` for a client that asked for it as `name`:
        joins the running job of that repo, else starts one with `source`."""
        if self._closing:
            raise UpstreamError("vllama is shutting down")
        job = self._jobs.get(key)
        if job is None or not job.joinable:
            job = self._jobs[key] = _Job(source)
            job.task.add_done_callback(lambda _: self._forget(key, job))
        follower = job.follow(name)
        try:
            while True:
                await follower.wake.wait()
                follower.wake.clear()
                items = list(follower.pending.values())
                follower.pending.clear()
                for item in items:
                    yield item
                if follower.finished and not follower.pending:
                    if follower.error is not None:
                        raise type(follower.error)(follower.error.message,
                                                   status=follower.error.status)
                    return
        finally:
            if job.leave(follower) and not self._closing:
                # The last client left: let the downloads stop and their partial files go
                # before the caller looks at the cache (bounded: a stuck hub read is not
                # waited for).
                await asyncio.wait({job.task}, timeout=_ABANDON_WAIT)

    def _forget(self, key: str, job: _Job) -> None:
        if self._jobs.get(key) is job:
            del self._jobs[key]
        if not job.task.cancelled():
            job.task.exception()  # retrieved: a failure already reached its followers

    async def close(self) -> None:
        """Shut-down: cancel every pull; wait a moment for them to notice, never longer."""
        self._closing = True
        tasks = [job.task for job in self._jobs.values()]
        for job in self._jobs.values():
            job.abandoned = True
            job.cancelled_because = "vllama is shutting down: pull again once it is back"
            job.task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for task in tasks:
            task.cancel()  # again: a job waiting out its threads' clean-up stops now
