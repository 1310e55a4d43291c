"""The scheduler: the one place that decides which engines run (DESIGN.md, "Many models").

Gateway code asks `acquire(model, keep_alive) -> Lease` and `release(lease)`; it never touches
an engine. The supervisor keeps owning each engine's process, readiness and restarts; the
scheduler tells it which engines to launch and retire, and with what placement.

Ollama's lifecycle (reference/scheduler.md §1), without its known failures:
- a model that is not loaded is loaded on the first request; requests that arrive meanwhile
  wait (bounded by `max_queue`, 503 "server busy" beyond) and are all released when the
  engine is ready, or all failed at once with the classified reason when the load fails;
- requests to a loaded model never wait for anything (no lock on that path), and a load
  never waits for another model's load except for the engine start itself on a shared device
  (vLLM's memory profiling fails when two engines start together on one GPU);
- memory is reserved when a load is planned, in the same step as the check (one event loop:
  no await between them), so two loads never count the same free memory; a load that does
  not fit evicts idle models, least recently used first, never a busy or pinned one; when
  nothing can go it waits (bounded by `load_timeout`) without holding anything others need;
- keep_alive runs from the end of the last in-flight request; 0 unloads then; negative never;
  a request's keep_alive replaces the model's;
- an idle model whose keep_alive expires (or that is evicted) is parked with vLLM's sleep mode
  where the engine has it and host memory allows, else its engine is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vllama.config import ModelConfig
from vllama.errors import ServerBusy, Unavailable, VllamaError
from vllama.models.memory import MemoryNeed
from vllama.scheduler.placement import (
    Claim,
    Device,
    LoadedModel,
    NoFit,
    Placement,
    place,
    plan_eviction,
)
from vllama.scheduler.state import Lease, SchedulerEvent, Slot, SlotState, SlotStatus
from vllama.tasks import Tasks
from vllama.translate.models import SERVER_BUSY

log = logging.getLogger("vllama.scheduler")


# ----------------------------------------------------------------------------- seams


class Planner(Protocol):
    """What the scheduler reads of the machine and of a model (vllama.scheduler.capacity)."""

    async def need(self, model: ModelConfig) -> MemoryNeed: ...

    def devices(self) -> Sequence[Device]:
        """The devices as they read now (NVML's GPUs, or host memory)."""

    def max_loaded(self) -> int:
        """Most slots loaded or loading at once; 0: no limit."""

    def can_sleep(self, need: MemoryNeed, parked: int) -> bool:
        """Whether host memory can hold this model's weights while it sleeps, with `parked`
        bytes already held by sleeping engines."""


class EngineHandle(Protocol):
    """What the scheduler needs of a supervised engine."""

    @property
    def ready(self) -> bool: ...

    @property
    def port(self) -> int | None: ...

    async def wait_ready(self) -> bool: ...

    def unavailable_reason(self) -> str: ...


class Engines(Protocol):
    """The supervisor, as the scheduler uses it."""

    def launch(self, model: ModelConfig, placement: Placement, sleepable: bool
               ) -> EngineHandle: ...

    async def retire(self, key: str) -> None: ...

    def get(self, key: str) -> EngineHandle | None: ...

    async def sleep(self, key: str) -> bool:
        """Ask the engine to sleep (level 1); False when it refuses (e.g. the CPU build)."""

    async def wake(self, key: str) -> bool: ...

    async def max_model_len(self, key: str) -> int:
        """The context the ready engine runs with, from its `/v1/models` (0: unknown)."""


@dataclass(frozen=True)
class Policy:
    keep_alive: float = 300.0  # the default, seconds
    max_queue: int = 512
    load_timeout: float = 300.0  # waiting for memory to free up
    sleep: bool = False  # park with sleep mode where the engine supports it
    # After an engine gave up (it never became ready), requests for that model fail at once
    # with the reason for this long; the first one after it loads it again.
    retry_after: float = 60.0


Listener = Callable[[SchedulerEvent], None]
"""Called with every SchedulerEvent; the daemon turns them into STATUS= and metrics."""


# ----------------------------------------------------------------------------- the scheduler


class Scheduler:
    """Owns the slots. Use from the event loop only."""

    def __init__(self, engines: Engines, planner: Planner, policy: Policy, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._engines = engines
        self._planner = planner
        self.policy = policy
        self._clock = clock
        self._wall = wall
        self._slots: dict[str, Slot] = {}
        self._waiting: dict[str, int] = {}  # requests waiting for a load, per model
        self._memory_freed = asyncio.Event()  # set whenever a slot gives memory back
        self._device_locks: dict[str, asyncio.Lock] = {}
        self._tasks = Tasks()
        self._listeners: list[Listener] = []
        self._ids = itertools.count(1)
        self._closed = False
        self._preloaded: set[str] = set()  # models that must serve for the daemon to be ready
        self._failed: dict[str, str] = {}  # preloaded models whose load failed: why
        # Models whose engine gave up: (retry no sooner than, why, the model as configured).
        self._cooling: dict[str, tuple[float, str, ModelConfig]] = {}

    # ---- observation --------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, kind: str, slot: Slot, reason: str = "", seconds: float = 0.0) -> None:
        event = SchedulerEvent(kind, slot.key, reason, seconds)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("scheduler listener failed")

    @property
    def queued(self) -> Mapping[str, int]:
        return dict(self._waiting)

    def snapshot(self) -> list[SlotStatus]:
        return [SlotStatus(model=s.key, source=s.model.source, state=s.state,
                           in_flight=s.in_flight,
                           keep_alive=None if s.pinned else s.keep_alive,
                           expires_at=s.expires_at, reserved=sum(s.reserved.values()),
                           devices=s.devices, reason=s.reason)
                for s in self._slots.values()]

    def slot_state(self, key: str) -> SlotState | None:
        slot = self._slots.get(key)
        return slot.state if slot is not None else None

    # ---- leases ---------------------------------------------------------------------

    async def acquire(self, model: ModelConfig, keep_alive: float | None = None) -> Lease:
        """A lease on a ready engine for `model`, loading it first if needed. Raises
        ServerBusy when the queue is full, Unavailable when it cannot load."""
        if not model.is_local:
            return Lease("", model.upstream.rstrip("/"))
        slot = self._slots.get(model.name)
        if slot is not None and slot.state is SlotState.LOADED:
            engine = self._engines.get(slot.key)
            if engine is not None and engine.ready and engine.port is not None:
                return self._lease(slot, engine.port, keep_alive)  # the fast path: no await
        if sum(self._waiting.values()) >= self.policy.max_queue:
            raise ServerBusy(SERVER_BUSY)
        self._waiting[model.name] = self._waiting.get(model.name, 0) + 1
        started = self._clock()
        try:
            port = await self._until_ready(model, keep_alive)
        finally:
            left = self._waiting[model.name] - 1
            if left:
                self._waiting[model.name] = left
            else:
                del self._waiting[model.name]
        slot = self._slots[model.name]
        self._emit("waited", slot, seconds=self._clock() - started)
        return self._lease(slot, port, keep_alive)

    def _lease(self, slot: Slot, port: int, keep_alive: float | None) -> Lease:
        slot.in_flight += 1
        slot.last_used = self._clock()
        slot.expires_at = None
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        return Lease(slot.key, f"http://127.0.0.1:{port}/v1", next(self._ids),
                     slot.max_model_len)

    def release(self, lease: Lease) -> None:
        """The request is over (finished, failed or the client left)."""
        slot = self._slots.get(lease.key) if lease.key else None
        if slot is None:
            return
        slot.in_flight = max(0, slot.in_flight - 1)
        slot.last_used = self._clock()
        if slot.in_flight == 0:
            self._idle(slot)

    @contextlib.asynccontextmanager
    async def lease(self, model: ModelConfig, keep_alive: float | None = None
                    ) -> AsyncIterator[Lease]:
        held = await self.acquire(model, keep_alive)
        try:
            yield held
        finally:
            self.release(held)

    async def _until_ready(self, model: ModelConfig, keep_alive: float | None) -> int:
        """Wait until the model's engine serves; start or wake what is needed."""
        while True:
            slot = self._slots.get(model.name)
            if slot is None:
                self._check_cooling(model)
                slot = self._begin_load(model, keep_alive, "requested")
            elif slot.state is SlotState.SLEEPING:
                self._begin_wake(slot)
            elif slot.state is SlotState.UNLOADING:
                await slot.gone.wait()
                continue
            elif slot.state is SlotState.LOADED:
                engine = self._engines.get(slot.key)
                if engine is None:  # pragma: no cover - a loaded slot always has one
                    raise Unavailable(f"model '{slot.key}' has no engine")
                if engine.ready and engine.port is not None:
                    return engine.port
                # Restarting after a crash: the supervisor brings it back, or gives up.
                if not await engine.wait_ready():
                    self._drop(slot, engine.unavailable_reason() or "the engine failed")
                    raise Unavailable(engine.unavailable_reason() or
                                      f"model '{slot.key}' failed to restart")
                continue
            await asyncio.shield(slot.ready)  # raises the load's failure for every waiter

    def _check_cooling(self, model: ModelConfig) -> None:
        """Fail at once while a model whose engine gave up cools down (a load that failed the
        same way moments ago would fail again, and hold its waiters tens of seconds); a
        changed configuration of it is tried at once."""
        cooling = self._cooling.get(model.name)
        if cooling is None:
            return
        until, why, configured = cooling
        wait = until - self._clock()
        if configured != model or wait <= 0:
            del self._cooling[model.name]
            return
        exc = Unavailable(f"{why}; vllama tries to load it again in {wait:.0f} s")
        exc.headers = {"Retry-After": str(int(wait) + 1)}
        raise exc

    def _cool(self, model: ModelConfig, why: str) -> None:
        self._cooling[model.name] = (self._clock() + self.policy.retry_after, why, model)

    # ---- keep_alive -----------------------------------------------------------------

    def _idle(self, slot: Slot) -> None:
        """The last request ended: start the keep_alive clock (Ollama's semantics)."""
        if slot.state is not SlotState.LOADED:
            return
        if slot.keep_alive <= 0:
            self._start(self._park(slot, "keep_alive 0", force_stop=True))
            return
        if slot.pinned:
            return
        slot.expires_at = self._wall() + slot.keep_alive
        slot.timer = asyncio.get_running_loop().call_later(
            slot.keep_alive, lambda: self._expire(slot))

    def _expire(self, slot: Slot) -> None:
        slot.timer = None
        if self._slots.get(slot.key) is slot and slot.idle and slot.state is SlotState.LOADED:
            self._start(self._park(slot, "idle"))

    # ---- loading ----------------------------------------------------------------------

    def _begin_load(self, model: ModelConfig, keep_alive: float | None, reason: str) -> Slot:
        slot = Slot(model=model, state=SlotState.LOADING,
                    keep_alive=self.policy.keep_alive if keep_alive is None else keep_alive,
                    last_used=self._clock(), reason=reason)
        self._slots[slot.key] = slot
        log.info("loading %s (%s)", slot.key, reason,
                 extra={"component": "scheduler", "model": slot.key})
        self._emit("load", slot, reason)
        self._start(self._load(slot))
        return slot

    async def _load(self, slot: Slot) -> None:
        try:
            need = await self._planner.need(slot.model)
            placement = await self._reserve(slot, need, on=None)
            sleepable = self.policy.sleep and bool(placement.devices)
            slot.sleepable = sleepable
            async with self._device_lock(placement.devices):
                if slot.state is not SlotState.LOADING:  # unloaded while it waited
                    return
                engine = self._engines.launch(slot.model, placement, sleepable)
                ok = await engine.wait_ready()
            if not ok:
                why = engine.unavailable_reason() or f"model '{slot.key}' failed to load"
                self._cool(slot.model, why)
                raise Unavailable(why)
            # Read once per engine start: a restart after a crash reuses the same flags.
            slot.max_model_len = await self._engines.max_model_len(slot.key)
            if slot.state is not SlotState.LOADING:  # unloaded meanwhile: its waiters know
                return
        except asyncio.CancelledError:
            self._fail(slot, Unavailable(f"model '{slot.key}': vllama is shutting down"))
            raise
        except VllamaError as exc:
            self._fail(slot, exc)
            return
        except Exception as exc:  # a bug: still fail the waiters, never leave them hanging
            log.exception("loading %s failed", slot.key, extra={"component": "scheduler"})
            self._fail(slot, Unavailable(f"model '{slot.key}' failed to load: {exc}"))
            return
        self._loaded(slot)

    def _loaded(self, slot: Slot) -> None:
        slot.set_state(SlotState.LOADED)
        self._failed.pop(slot.key, None)
        slot.reason = ""
        if not slot.ready.done():
            slot.ready.set_result(None)
        log.info("loaded %s", slot.key, extra={"component": "scheduler", "model": slot.key})
        self._emit("loaded", slot)
        if slot.idle:  # preloaded, or every waiter left: the keep_alive clock starts now
            self._idle(slot)

    def _fail(self, slot: Slot, exc: VllamaError) -> None:
        if slot.key in self._preloaded:
            self._failed[slot.key] = exc.message
        log.error("cannot load %s: %s", slot.key, exc.message,
                  extra={"component": "scheduler", "model": slot.key})
        self._emit("load_failed", slot, exc.message)
        if not slot.ready.done():
            slot.ready.set_exception(exc)
            slot.ready.exception()  # retrieved: waiters that left do not log it as lost
        self._start(self._unload(slot, f"load failed: {exc.message}"))

    async def _reserve(self, slot: Slot, need: MemoryNeed, on: tuple[int, ...] | None
                       ) -> Placement:
        """Plan the slot's memory and reserve it in the same step (no await between the
        check and the claim), evicting idle models if needed; wait (up to load_timeout)
        while nothing can go. `on`: the GPUs a sleeping engine is bound to."""
        deadline = self._clock() + self.policy.load_timeout
        tp = len(on) if on else None
        while True:
            if slot.state is not SlotState.LOADING:
                raise Unavailable(f"model '{slot.key}' was unloaded while it waited")
            devices = self._planner.devices()
            fit = place(need, devices, self._claims(exclude=slot), tensor_parallel=tp, only=on)
            over = self._over_count(slot)
            if isinstance(fit, Placement) and not over:
                slot.reserved = dict(fit.reserved)
                slot.devices = fit.devices
                return fit
            victims = self._victims(need, devices, fit, over=over, slot=slot, tp=tp, on=on)
            if victims is None:
                await self._wait_memory(deadline, slot, fit)
                continue
            for victim in victims:  # parked: asleep where the engine can, else stopped
                self._start(self._park(victim, f"evicted for {slot.key}"))
            self._emit("evict", slot, ", ".join(v.key for v in victims))
            await self._wait_memory(deadline, slot, fit)

    def _claims(self, exclude: Slot | None = None) -> list[Claim]:
        """What our slots hold or have reserved, per device (loading ones do not show in
        NVML yet)."""
        return [Claim(device, amount, s.state is SlotState.LOADING)
                for s in self._slots.values() if s is not exclude
                for device, amount in s.reserved.items()]

    def _over_count(self, slot: Slot) -> bool:
        limit = self._planner.max_loaded()
        if not limit:
            return False
        active = [s for s in self._slots.values()
                  if s is not slot and s.state in (SlotState.LOADING, SlotState.LOADED)]
        return len(active) >= limit

    def _victims(self, need: MemoryNeed, devices: Sequence[Device], fit: Placement | NoFit, *,
                 over: bool, slot: Slot, tp: int | None, on: tuple[int, ...] | None
                 ) -> list[Slot] | None:
        """Idle, unpinned loaded slots to stop so `slot` fits, least recently used first;
        None when not enough of them can go (the caller waits)."""
        loaded = [LoadedModel(s.key, dict(s.reserved), s.last_used, s.in_flight, s.pinned,
                              s.state is not SlotState.LOADED)
                  for s in self._slots.values()
                  if s is not slot and s.state in (SlotState.LOADING, SlotState.LOADED)]
        names: list[str] = []
        if isinstance(fit, NoFit):
            planned = plan_eviction(need, devices, loaded, tensor_parallel=tp, only=on)
            if planned is None:
                return None
            names = planned
        if over and not names:
            idle = sorted((m for m in loaded if m.in_flight == 0 and not m.pinned
                           and not m.loading), key=lambda m: m.last_used)
            if not idle:
                return None
            names = [idle[0].name]
        return [self._slots[n] for n in names]

    async def _wait_memory(self, deadline: float, slot: Slot, fit: Placement | NoFit) -> None:
        left = deadline - self._clock()
        if left <= 0:
            why = fit.message if isinstance(fit, NoFit) else (
                f"{self._planner.max_loaded()} models are loaded (max_loaded_models)")
            busy = ", ".join(s.key for s in self._slots.values()
                             if s is not slot and (not s.idle or s.pinned)) or "none"
            raise Unavailable(f"model '{slot.key}' does not fit: {why}; models that cannot be "
                              f"unloaded (busy or kept loaded): {busy}. Stop one (vllama stop "
                              "MODEL), or set memory_budget / max_loaded_models")
        self._memory_freed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, 1.0)):
                await self._memory_freed.wait()

    def _device_lock(self, devices: Iterable[int]) -> asyncio.Lock:
        """Engines that share a device start one at a time; a TP engine locks its first GPU
        (engines on disjoint GPU sets start together)."""
        key = str(min(devices)) if devices else "cpu"
        return self._device_locks.setdefault(key, asyncio.Lock())

    # ---- waking ----------------------------------------------------------------------

    def _begin_wake(self, slot: Slot) -> None:
        slot.set_state(SlotState.LOADING)
        slot.ready = asyncio.get_running_loop().create_future()
        slot.reason = "waking"
        self._emit("wake", slot)
        self._start(self._wake(slot))

    async def _wake(self, slot: Slot) -> None:
        try:
            need = await self._planner.need(slot.model)
            await self._reserve(slot, need, on=slot.devices)
            # The engine keeps the share it started with (its utilization fraction).
            slot.reserved, slot.parked = dict(slot.awake or slot.reserved), 0
            ok = await self._engines.wake(slot.key)
        except VllamaError as exc:
            self._fail(slot, exc)
            return
        except asyncio.CancelledError:
            self._fail(slot, Unavailable(f"model '{slot.key}': vllama is shutting down"))
            raise
        if not ok:
            self._fail(slot, Unavailable(f"model '{slot.key}' did not wake from sleep"))
            return
        self._loaded(slot)

    # ---- unloading ---------------------------------------------------------------------

    async def _park(self, slot: Slot, reason: str, *, force_stop: bool = False) -> None:
        """Give an idle slot's GPU memory back: sleep where it can, else stop."""
        if self._slots.get(slot.key) is not slot or slot.state not in (SlotState.LOADED,
                                                                        SlotState.SLEEPING):
            return
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        if not force_stop and slot.state is SlotState.LOADED and slot.sleepable:
            need = await self._planner.need(slot.model)
            if (self._slots.get(slot.key) is slot and slot.idle
                    and slot.state is SlotState.LOADED
                    and self._planner.can_sleep(need, self._parked_bytes())):
                slot.set_state(SlotState.SLEEPING)
                slot.expires_at = None
                awake, slot.reserved, slot.parked = slot.reserved, {}, need.weights_bytes
                if await self._engines.sleep(slot.key):
                    slot.awake = awake
                    log.info("%s sleeps (%s)", slot.key, reason,
                             extra={"component": "scheduler", "model": slot.key})
                    self._emit("sleep", slot, reason)
                    self._memory_freed.set()
                    return
                # Refused (the CPU build, or sleep mode off in the engine): stop it instead.
                slot.reserved, slot.parked = awake, 0
        await self._unload(slot, reason)

    def _parked_bytes(self) -> int:
        return sum(s.parked for s in self._slots.values() if s.state is SlotState.SLEEPING)

    async def _unload(self, slot: Slot, reason: str) -> None:
        if slot.state is SlotState.UNLOADING:
            await slot.gone.wait()
            return
        slot.set_state(SlotState.UNLOADING)
        slot.reason = reason
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        log.info("unloading %s (%s)", slot.key, reason,
                 extra={"component": "scheduler", "model": slot.key})
        self._emit("unload", slot, reason)
        try:
            await self._engines.retire(slot.key)
        finally:
            self._drop(slot, reason)

    def _drop(self, slot: Slot, reason: str) -> None:
        """The slot is gone: its memory is free, its waiters learn why."""
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
        slot.reserved = {}
        if not slot.ready.done():
            slot.ready.set_exception(Unavailable(f"model '{slot.key}' was unloaded: {reason}"))
            slot.ready.exception()
        slot.gone.set()
        self._memory_freed.set()

    async def unload(self, key: str, reason: str = "asked") -> bool:
        """Unload a model now (keep_alive 0 with no prompt, `vllama stop`). In-flight requests
        finish first: the model unloads when the last one ends. False when not loaded."""
        slot = self._slots.get(key)
        if slot is None or slot.state is SlotState.UNLOADING:
            return False
        if not slot.idle:
            slot.keep_alive = 0.0  # the last request to finish unloads it
            return True
        await self._stop_slot(slot, reason)
        return True

    # ---- lifecycle ---------------------------------------------------------------------

    def preload(self, models: Iterable[ModelConfig], keep_alive: Callable[[ModelConfig], float]
                ) -> list[Slot]:
        """Start loading models at start-up (or after a reload); their slots. Until they serve
        (and while a pinned one is down) the daemon is not ready."""
        slots = []
        self._preloaded = set()
        for model in models:
            self._preloaded.add(model.name)
            self._failed.pop(model.name, None)
            self._cooling.pop(model.name, None)  # asked for explicitly: try at once
            slot = self._slots.get(model.name)
            if slot is None:
                slot = self._begin_load(model, keep_alive(model), "preload")
            slots.append(slot)
        return slots

    async def wait_loaded(self, slots: Iterable[Slot]) -> bool:
        results = await asyncio.gather(*(asyncio.shield(s.ready) for s in slots),
                                       return_exceptions=True)
        return not any(isinstance(r, BaseException) for r in results)

    @property
    def ready(self) -> bool:
        """Every preloaded model loaded (one that unloaded since, idle or asked to, no longer
        counts), none of them failed, and every pinned one serving."""
        return not self.unready_reasons()

    def unready_reasons(self) -> list[str]:
        reasons = [f"model '{name}' failed to load: {why}" for name, why in self._failed.items()]
        for name in sorted(self._preloaded):
            slot = self._slots.get(name)
            if slot is None:
                continue
            if slot.state is SlotState.LOADING and slot.reason == "preload":
                reasons.append(self._loading_text(slot))
            elif slot.state is SlotState.LOADED and slot.pinned:
                engine = self._engines.get(name)
                if engine is not None and not engine.ready:
                    reasons.append(engine.unavailable_reason())
        return reasons

    def _loading_text(self, slot: Slot) -> str:
        """The engine's own account of its load (phase, seconds) once it runs."""
        engine = self._engines.get(slot.key)
        reason = engine.unavailable_reason() if engine is not None else ""
        return reason or f"model '{slot.key}' is loading ({slot.reason})"

    def status_text(self) -> str:
        """One line for systemd's STATUS=: what is not ready or loading and why, else what
        is loaded."""
        parts = self.unready_reasons()
        for slot in self._slots.values():
            if slot.state is SlotState.LOADING and slot.key not in self._preloaded:
                parts.append(self._loading_text(slot))
            elif slot.state is SlotState.LOADED:
                # Restarting after a crash (or backing off before it), pinned or not.
                engine = self._engines.get(slot.key)
                reason = engine.unavailable_reason() if engine is not None else ""
                if reason and reason not in parts:
                    parts.append(reason)
        if parts:
            return "; ".join(parts)
        loaded = [s.key for s in self._slots.values() if s.state is SlotState.LOADED]
        sleeping = [s.key for s in self._slots.values() if s.state is SlotState.SLEEPING]
        text = "ready: " + (", ".join(loaded) or "no model loaded")
        return text + (f" (sleeping: {', '.join(sleeping)})" if sleeping else "")

    def on_engine_change(self, engine: EngineHandle, previous: object) -> None:
        """Supervisor listener: an engine that gave up (failed after restarts) takes its slot
        with it; a sleeping engine that restarted is no longer asleep (and would hold GPU
        memory nobody counts), so it is stopped."""
        key = getattr(engine, "name", "")
        slot = self._slots.get(key)
        if slot is None:
            return
        state = getattr(engine, "state", None)
        if slot.state is SlotState.LOADED and str(state) == "failed":
            reason = engine.unavailable_reason() or "the engine failed"
            if key in self._preloaded:
                self._failed[key] = reason
            self._cool(slot.model, reason)
            self._start(self._unload(slot, reason))
        elif slot.state is SlotState.SLEEPING and str(state) == "starting":
            self._start(self._unload(slot, "the sleeping engine restarted"))

    async def retire_changed(self, wanted: Mapping[str, ModelConfig],
                             gone: Mapping[str, ModelConfig]) -> list[str]:
        """A config reload: stop the configured models whose settings changed or that left
        the config (the next request, or the preload, starts them anew)."""
        changed = [s for s in self._slots.values()
                   if (s.key in wanted and wanted[s.key] != s.model) or s.key in gone]
        await asyncio.gather(*(self._stop_slot(s, "config changed") for s in changed))
        return [s.key for s in changed]

    async def _stop_slot(self, slot: Slot, reason: str) -> None:
        if slot.state is SlotState.LOADING:
            await self._unload(slot, reason)
        else:
            await self._park(slot, reason, force_stop=True)

    async def close(self) -> None:
        """Shut-down: stop the background work; the supervisor stops the engines."""
        self._closed = True
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        await self._tasks.aclose()

    def _start(self, coro: Coroutine[object, object, None]) -> None:
        if self._closed:
            coro.close()
            return
        # A fresh context: a load a request started must not carry that request's id into
        # the engine's log lines for the rest of its life.
        self._tasks.start(coro, context=contextvars.Context())


__all__ = ["Engines", "Lease", "Planner", "Policy", "Scheduler", "ServerBusy"]
