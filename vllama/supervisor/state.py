"""Value types of the supervisor: what an engine runs, its policy, its state and its status."""

from __future__ import annotations

import enum

import msgspec

from vllama.supervisor.backoff import BackoffPolicy
from vllama.supervisor.classify import ExitClass


class EngineState(enum.StrEnum):
    STARTING = "starting"  # choosing a port, spawning
    LOADING = "loading"  # child alive, /health not 200 yet (or not from the child's group)
    READY = "ready"  # the child's own listener answered /health with 200
    # The leader exited unasked, or the engine was found wedged: entered at once, before what
    # is left of the group is killed, so no request goes to a dead port meanwhile
    # (momentary: backoff or failed follows).
    CRASHED = "crashed"
    BACKOFF = "backoff"  # waiting before the restart
    FAILED = "failed"  # gave up: config/capacity error, start-up deadline or start-up loop
    STOPPING = "stopping"
    STOPPED = "stopped"


# States in which the engine will not change again by itself.
SETTLED = frozenset({EngineState.READY, EngineState.FAILED, EngineState.STOPPED})

_S = EngineState
# Every allowed state change (llama-swap's isValidTransition). FAILED is reachable from
# anywhere (the supervisor task itself failing), and STOPPED from anywhere (stop() may be
# called at any moment). CRASHED never goes to STOPPING: a stop asked while a crashed group
# is being killed has nothing left to stop, so it ends in STOPPED directly.
TRANSITIONS: dict[EngineState, frozenset[EngineState]] = {
    _S.STOPPED: frozenset({_S.STARTING}),
    _S.STARTING: frozenset({_S.LOADING, _S.CRASHED, _S.STOPPING}),
    _S.LOADING: frozenset({_S.READY, _S.CRASHED, _S.STOPPING}),
    _S.READY: frozenset({_S.CRASHED, _S.STOPPING}),
    _S.CRASHED: frozenset({_S.BACKOFF}),
    _S.BACKOFF: frozenset({_S.STARTING}),
    _S.FAILED: frozenset({_S.STARTING}),
    _S.STOPPING: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A state change the table does not allow: a bug in the supervisor."""


def check_transition(old: EngineState, new: EngineState) -> None:
    if new in (_S.FAILED, _S.STOPPED) or new in TRANSITIONS[old]:
        return
    raise InvalidTransition(f"engine state {old.value} -> {new.value} is not allowed")


class EngineSpec(msgspec.Struct, frozen=True):
    """Everything the child's argv and environment depend on: a change means a restart."""

    name: str  # the served model name clients use
    source: str  # HF repo id or local directory
    vllm_command: tuple[str, ...] = ("vllm",)
    vllm_args: tuple[str, ...] = ()
    api_key: str = ""  # given to the child as VLLM_API_KEY (never argv)
    # Extra environment for the child: its placement (CUDA_VISIBLE_DEVICES) and switches
    # such as VLLM_SERVER_DEV_MODE for sleep mode.
    env: tuple[tuple[str, str], ...] = ()


class EngineSettings(msgspec.Struct, frozen=True):
    """Policy: timeouts and restart behaviour. Changing it needs no restart."""

    startup_timeout: float = 3600.0
    stop_timeout: float = 30.0
    health_poll_interval: float = 1.0
    probe_timeout: float = 3.0
    # Seconds a ready engine may show no progress (token counters still while requests run,
    # or a one-token request not done while idle) before it is killed and restarted; 0: off.
    hang_timeout: float = 30.0
    backoff: BackoffPolicy = BackoffPolicy()
    gpu_free_timeout: float = 60.0  # bound on waiting for NVML to show the old child's memory gone
    tail_lines: int = 50


class ExitInfo(msgspec.Struct, frozen=True):
    code: int | None  # returncode; negative = killed by that signal; None = still running
    cls: ExitClass
    hint: str
    lines: tuple[str, ...] = ()  # the last lines the child printed
    at: float = 0.0  # wall-clock time (unix seconds)


class EngineStatus(msgspec.Struct, frozen=True):
    """One engine as /health and `vllama ps` show it."""

    model: str
    source: str
    state: EngineState
    since: float  # wall-clock time of the last state change (unix seconds)
    pid: int | None
    port: int | None
    restarts: int
    phase: str
    load_seconds: float | None  # time spent loading so far, or what the last load took
    last_exit: ExitInfo | None
    reason: str  # why it cannot serve now ("" when ready)
