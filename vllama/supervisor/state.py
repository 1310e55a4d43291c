"""Value types of the supervisor: what an engine runs, its policy, its state and its status."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Protocol

import msgspec

from vllama.supervisor.backoff import BackoffPolicy
from vllama.supervisor.classify import ExitClass


class EngineState(enum.StrEnum):
    STARTING = "starting"  # choosing a port, spawning
    LOADING = "loading"  # child alive, /health not 200 yet
    READY = "ready"  # /health answered 200
    CRASHED = "crashed"  # child exited unasked (momentary: backoff or failed follows)
    BACKOFF = "backoff"  # waiting before the restart
    FAILED = "failed"  # gave up: config/capacity error, start-up deadline or crash loop
    STOPPING = "stopping"
    STOPPED = "stopped"


# States in which the engine will not change again by itself.
SETTLED = frozenset({EngineState.READY, EngineState.FAILED, EngineState.STOPPED})


class EngineSpec(msgspec.Struct, frozen=True):
    """Everything the child's argv and environment depend on: a change means a restart."""

    name: str  # the served model name clients use
    source: str  # HF repo id or local directory
    vllm_command: tuple[str, ...] = ("vllm",)
    vllm_args: tuple[str, ...] = ()
    api_key: str = ""  # given to the child as VLLM_API_KEY (never argv)


class EngineSettings(msgspec.Struct, frozen=True):
    """Policy: timeouts and restart behaviour. Changing it needs no restart."""

    startup_timeout: float = 3600.0
    stop_timeout: float = 30.0
    health_poll_interval: float = 1.0
    probe_timeout: float = 3.0
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


class ModelLike(Protocol):
    """The fields of config.ModelConfig the supervisor needs (no import of config)."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def upstream(self) -> str: ...
    @property
    def vllm_args(self) -> tuple[str, ...]: ...


def specs_from_models(
    models: Iterable[ModelLike],
    vllm_command: tuple[str, ...],
    common_args: tuple[str, ...] = (),
    api_key: str = "",
) -> list[EngineSpec]:
    """Engine specs for the models vllama runs itself (those with an `upstream` are remote).

    `common_args` (config's global vllm_args) come first so a model's own args override them.
    """
    return [
        EngineSpec(
            name=m.name,
            source=m.source,
            vllm_command=vllm_command,
            vllm_args=(*common_args, *m.vllm_args),
            api_key=api_key,
        )
        for m in models
        if not m.upstream
    ]
