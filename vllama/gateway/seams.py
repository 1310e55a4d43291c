"""What the gateway needs of the objects the daemon hands it: the scheduler, the supervisor and
its engines, the GPU monitor and the model store. Protocols, so the gateway depends on these
few members and nothing else (and tests can hand it small real objects)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from typing import Any, Protocol

from vllama.config import ModelConfig
from vllama.gpu import GpuSnapshot
from vllama.models.facts import ModelFiles
from vllama.models.names import Resolved
from vllama.models.store import LocalModel, Overrides
from vllama.scheduler.state import Lease, SlotStatus
from vllama.supervisor.state import EngineStatus
from vllama.translate.request import ModelCaps
from vllama.wire.ollama import ListModel, ShowResponse


class EngineView(Protocol):
    """A supervised engine (the supervisor's Engine satisfies it)."""

    @property
    def ready(self) -> bool: ...

    @property
    def port(self) -> int | None: ...

    def status(self) -> EngineStatus: ...

    def unavailable_reason(self) -> str: ...


class SupervisorView(Protocol):
    @property
    def ready(self) -> bool: ...

    def get(self, name: str) -> EngineView | None: ...

    def snapshot(self) -> list[EngineStatus]: ...


class SchedulerView(Protocol):
    """The scheduler (vllama.scheduler.Scheduler): leases on models, unloads, what is loaded."""

    async def acquire(self, model: ModelConfig, keep_alive: float | None = None) -> Lease: ...

    def release(self, lease: Lease) -> None: ...

    async def unload(self, key: str, reason: str = "asked") -> bool: ...

    def snapshot(self) -> list[SlotStatus]: ...

    @property
    def queued(self) -> Mapping[str, int]: ...

    @property
    def ready(self) -> bool:
        """Every model that must stay loaded (preloaded, pinned) serves."""

    def unready_reasons(self) -> list[str]:
        """Why not ready (empty when ready)."""


class GpuView(Protocol):
    @property
    def snapshot(self) -> GpuSnapshot: ...


class StoreView(Protocol):
    """The model store (vllama.models.store.ModelStore): names, facts and the cache."""

    def resolve_served(self, name: str) -> Resolved | None: ...

    def set_remote(self, models: Sequence[ModelConfig]) -> None: ...

    def resolve(self, name: str, *, allow_paths: bool = False) -> Resolved | None: ...

    def overrides_for(self, name: str) -> Overrides | None: ...

    def find(self, name: str, *, allow_paths: bool = False) -> LocalModel | None: ...

    def list_models(self) -> list[LocalModel]: ...

    def model_files(self, model: ModelConfig) -> ModelFiles: ...

    def tag_entry(self, found: LocalModel) -> ListModel: ...

    def capabilities(self, found: LocalModel) -> ModelCaps: ...

    def show(self, name: str, *, allow_paths: bool = False, system: str = "",
             options: Mapping[str, Any] | None = None) -> ShowResponse: ...

    def rm(self, name: str, *, running: Collection[str] = ()) -> int: ...

    def cp(self, source: str, destination: str) -> None: ...

    def create(self, name: str, from_: str, *, system: str = "",
               parameters: Mapping[str, Any] | None = None, template: str = "") -> None: ...

    def pull(self, name: str) -> AsyncGenerator[dict[str, Any], None]: ...


