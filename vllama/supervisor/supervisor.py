"""All engines of the daemon: start them, stop them, reload a changed model list."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from vllama.supervisor.engine import Engine, Listener
from vllama.supervisor.state import EngineSettings, EngineSpec, EngineState, EngineStatus

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

    def start(self, specs: Iterable[EngineSpec]) -> None:
        """Create and start engines (they load in the background)."""
        for spec in specs:
            if spec.name in self._engines:
                raise ValueError(f"duplicate engine name {spec.name!r}")
            self._create(spec).start()

    async def wait_ready(self) -> bool:
        """True once every engine is ready; False once all settled and one did not (failed,
        stopped). Bound it with `asyncio.timeout()`."""
        results = await asyncio.gather(*(e.wait_ready() for e in self._engines.values()))
        return all(results)

    async def stop(self) -> None:
        """Stop every engine concurrently (each one: SIGTERM, grace, SIGKILL, verify)."""
        await asyncio.gather(*(e.stop() for e in self._engines.values()))

    async def reload(self, specs: Sequence[EngineSpec]) -> list[str]:
        """Apply a new model list: stop engines removed or changed, start new or changed ones,
        leave identical ones running. Policy settings apply to kept engines at once.
        Returns the names (re)started."""
        wanted = {s.name: s for s in specs}
        # A failed engine is retried even when unchanged: reloading is how an operator says
        # "try again" after fixing what it complained about (freeing the GPU, pulling a model).
        to_stop = [
            e
            for name, e in self._engines.items()
            if name not in wanted or wanted[name] != e.spec or e.state is EngineState.FAILED
        ]
        await asyncio.gather(*(e.stop() for e in to_stop))
        for engine in to_stop:
            del self._engines[engine.name]
        for engine in self._engines.values():
            engine.settings = self.settings
        started: list[str] = []
        for name, spec in wanted.items():
            if name not in self._engines:
                self._create(spec).start()
                started.append(name)
        return started
