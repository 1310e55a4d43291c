"""All engines of the daemon: launch one, retire one, stop them all. Which engines run is the
scheduler's decision; how each runs (process group, readiness, restarts) is the engine's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vllama.supervisor.engine import Engine, Listener
from vllama.supervisor.state import EngineSettings, EngineSpec, EngineStatus

EngineFactory = Callable[[EngineSpec, EngineSettings], Engine]
"""Builds an Engine with the daemon's probe, hardware, environ, gpu_freed already bound."""


class Supervisor:
    """Owns the engines by served name. Use from the event loop only."""

    def __init__(self, factory: EngineFactory, settings: EngineSettings) -> None:
        self._factory = factory
        self.settings = settings
        self._engines: dict[str, Engine] = {}
        self._listeners: list[Listener] = []

    # ---- lookup ---------------------------------------------------------------------

    @property
    def engines(self) -> dict[str, Engine]:
        return dict(self._engines)

    def get(self, name: str) -> Engine | None:
        return self._engines.get(name)

    @property
    def ready(self) -> bool:
        """Every engine serves (vacuously true without engines)."""
        return all(e.ready for e in self._engines.values())

    def snapshot(self) -> list[EngineStatus]:
        return [e.status() for e in self._engines.values()]

    def status_text(self) -> str:
        """One line for systemd's STATUS=: what is not ready and why, else what serves."""
        engines = list(self._engines.values())
        if not engines:
            return "ready: no local models"
        waiting = [e.unavailable_reason() for e in engines if not e.ready]
        if waiting:
            return "; ".join(waiting)
        return "ready: " + ", ".join(e.name for e in engines)

    def add_listener(self, listener: Listener) -> None:
        """Hook every engine's state changes, present and future."""
        self._listeners.append(listener)
        for engine in self._engines.values():
            engine.add_listener(listener)

    # ---- lifecycle ------------------------------------------------------------------

    def _create(self, spec: EngineSpec) -> Engine:
        engine = self._factory(spec, self.settings)
        for listener in self._listeners:
            engine.add_listener(listener)
        self._engines[spec.name] = engine
        return engine

    def launch(self, spec: EngineSpec) -> Engine:
        """Create and start an engine (it loads in the background; `wait_ready()` tells when
        it serves). The scheduler decides when; a name has at most one engine."""
        if spec.name in self._engines:
            raise ValueError(f"engine {spec.name!r} already runs; retire it first")
        engine = self._create(spec)
        engine.start()
        return engine

    async def retire(self, name: str) -> None:
        """Stop an engine (SIGTERM, grace, SIGKILL, verified) and forget it."""
        engine = self._engines.get(name)
        if engine is None:
            return
        try:
            await engine.stop()
        finally:
            if self._engines.get(name) is engine:
                del self._engines[name]

    async def wait_ready(self) -> bool:
        """True once every engine is ready; False once all settled and one did not (failed,
        stopped). Bound it with `asyncio.timeout()`."""
        results = await asyncio.gather(*(e.wait_ready() for e in self._engines.values()))
        return all(results)

    async def stop(self) -> None:
        """Stop every engine concurrently (each one: SIGTERM, grace, SIGKILL, verify)."""
        await asyncio.gather(*(e.stop() for e in self._engines.values()))
        self._engines.clear()
