"""The scheduler's value types: a slot (one model it has placed), the slot states with their
table of allowed changes, and a lease (what a request holds while it runs).

A slot's state says what the scheduler wants of the model; the engine's own state (supervisor)
says what its process is doing. A LOADED slot whose engine is restarting after a crash is
still loaded: requests wait for the engine rather than start another one.
"""

from __future__ import annotations

import asyncio
import enum
import math
from dataclasses import dataclass, field

import msgspec

from vllama.config import ModelConfig


class SlotState(enum.StrEnum):
    LOADING = "loading"  # memory reserved; the engine starts (or wakes from sleep)
    LOADED = "loaded"  # the engine serves
    SLEEPING = "sleeping"  # vLLM sleep mode: weights in host memory, GPU memory free
    UNLOADING = "unloading"  # the engine is being stopped; the slot goes when it is gone


_S = SlotState
# Every allowed change (llama-swap's isValidTransition). A slot that reaches UNLOADING only
# leaves the table: a new load makes a new slot.
TRANSITIONS: dict[SlotState, frozenset[SlotState]] = {
    _S.LOADING: frozenset({_S.LOADED, _S.UNLOADING}),
    _S.LOADED: frozenset({_S.SLEEPING, _S.UNLOADING}),
    _S.SLEEPING: frozenset({_S.LOADING, _S.UNLOADING}),
    _S.UNLOADING: frozenset(),
}


class InvalidSlotTransition(RuntimeError):
    """A change the table does not allow: a bug in the scheduler."""


@dataclass(eq=False)
class Slot:
    """One model the scheduler placed. Owned by the Scheduler: only it changes a slot."""

    model: ModelConfig
    state: SlotState
    keep_alive: float  # seconds after the last request ends; math.inf = forever
    # Bytes reserved per device (a GPU index, or placement.HOST) while the slot holds memory.
    reserved: dict[int, int] = field(default_factory=dict)
    # While sleeping: host bytes its weights hold, and what it held on its GPUs awake.
    parked: int = 0
    awake: dict[int, int] = field(default_factory=dict)
    devices: tuple[int, ...] = ()  # GPUs the engine runs on (CUDA_VISIBLE_DEVICES)
    in_flight: int = 0
    last_used: float = 0.0  # monotonic; orders eviction (least recently used first)
    expires_at: float | None = None  # wall clock of the keep_alive deadline, None: none
    reason: str = ""  # why it loads / unloads, for STATUS=, logs and /api/ps
    sleepable: bool = False  # the engine was started with sleep mode on
    max_model_len: int = 0  # the context the engine runs with (its /v1/models); 0: unknown
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None

    @property
    def key(self) -> str:
        return self.model.name

    @property
    def pinned(self) -> bool:
        return self.keep_alive == math.inf

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def set_state(self, new: SlotState) -> None:
        if new is self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise InvalidSlotTransition(f"model {self.key}: {self.state.value} -> {new.value} "
                                        "is not allowed")
        self.state = new


@dataclass(frozen=True)
class Lease:
    """What a request holds while it runs: where to send it. Plain values, so a lease can
    cross a process boundary (gateway workers)."""

    key: str  # the slot's model name ("" for a remote upstream, which has no slot)
    base_url: str  # the OpenAI base URL (…/v1)
    id: int = 0
    # The engine's context (its /v1/models max_model_len); 0: unknown. /v1/completions needs
    # it: vLLM caps a request without max_tokens at 16 tokens.
    max_model_len: int = 0


class SlotStatus(msgspec.Struct, frozen=True):
    """One slot as /api/ps, /health, `vllama ps` and the metrics show it."""

    model: str
    source: str
    state: SlotState
    in_flight: int
    keep_alive: float | None  # seconds; None = forever
    expires_at: float | None  # wall clock; None while busy, loading, or kept forever
    reserved: int  # bytes reserved in all
    devices: tuple[int, ...]
    reason: str


class SchedulerEvent(msgspec.Struct, frozen=True):
    """What the scheduler did, for logs, STATUS= and metrics. `kind`: load, loaded,
    load_failed, unload, sleep, wake, evict (model: the one loading; reason: who went), waited
    (a request waited `seconds` for its model)."""

    kind: str
    model: str
    reason: str = ""
    seconds: float = 0.0
