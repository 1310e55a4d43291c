"""A scheduler over real parts: the Supervisor running the fake vLLM as real child processes,
the model store over generated tiny models, and the Capacity planner over host memory with a
`memory_budget` (or over injected NVML snapshots standing in for GPUs, which CI lacks).

Each fake engine needs about 167 MiB by the arithmetic (2.5 MB of weights, the 64 MiB KV cache
the common flags fix, 100 MiB of overhead), so the default budget of 400 MiB holds two of them.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import REPO_ROOT
from tests.tinymodel import generate
from vllama.config import Config, ModelConfig
from vllama.daemon import engine_get
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services
from vllama.gpu import GpuInfo, GpuSnapshot
from vllama.models.store import ModelStore
from vllama.scheduler.capacity import Capacity
from vllama.scheduler.engines import SupervisedEngines
from vllama.scheduler.scheduler import Policy, Scheduler
from vllama.supervisor import (
    BackoffPolicy,
    Engine,
    EngineSettings,
    EngineSpec,
    HardwareInfo,
    Supervisor,
    health_probe,
)
from vllama.supervisor.procs import group_members

MiB = 1 << 20
GiB = 1 << 30
FAKE = (sys.executable, "-m", "tests.fake_vllm")
WAIT = 30.0  # bound on any single wait: generous for 2 busy cores
PER_ENGINE = 167 * MiB  # about what one fake engine needs by the arithmetic


def gpus(*sizes_gib: float, free_gib: float | None = None) -> GpuSnapshot:
    """An NVML snapshot of empty GPUs of these sizes (free memory: all, or `free_gib`)."""
    return GpuSnapshot(True, "", tuple(
        GpuInfo(index=i, name="NVIDIA H100 80GB HBM3", memory_total=int(s * GiB),
                memory_used=0, memory_free=int((free_gib if free_gib is not None else s) * GiB))
        for i, s in enumerate(sizes_gib)))


@dataclass
class Bed:
    scheduler: Scheduler
    supervisor: Supervisor
    store: ModelStore
    engines: SupervisedEngines
    models: dict[str, ModelConfig]
    config: Config
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def gateway(self) -> web.Application:
        """The real gateway over this scheduler (what the daemon builds)."""
        return make_app(Services(config=self.config, store=self.store, scheduler=self.scheduler,
                                 supervisor=self.supervisor))

    def model(self, name: str) -> ModelConfig:
        return self.models[name]

    def pid(self, name: str) -> int | None:
        engine = self.supervisor.get(name)
        return engine.status().pid if engine is not None else None

    async def info(self, name: str, session: aiohttp.ClientSession) -> dict[str, Any]:
        """How the fake engine was started (its /fake/info)."""
        engine = self.supervisor.get(name)
        assert engine is not None and engine.port is not None
        async with session.get(f"http://127.0.0.1:{engine.port}/fake/info") as resp:
            doc: dict[str, Any] = await resp.json()
            return doc

    async def gone(self, pid: int | None) -> None:
        """Wait until no process of this engine's group is left."""
        assert pid is not None
        async with asyncio.timeout(WAIT):
            while group_members(pid):  # noqa: ASYNC110 - polls /proc from outside
                await asyncio.sleep(0.05)


MakeBed = Callable[..., Awaitable[Bed]]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
async def make_bed(tmp_path: Path, tiny_dir: Path) -> AsyncIterator[MakeBed]:
    built: list[Bed] = []
    session = aiohttp.ClientSession()

    async def build(*names: str, budget: int = 400 * MiB, snapshot: GpuSnapshot | None = None,
                    model_args: dict[str, tuple[str, ...]] | None = None,
                    common_args: tuple[str, ...] = ("--kv-cache-memory-bytes", "64M"),
                    max_loaded: int = 0, sleep: bool = False,
                    sources: dict[str, Path] | None = None, state_dir: Path | None = None,
                    aliases: dict[str, str] | None = None, **policy: Any) -> Bed:
        """sources: a model's directory other than the tiny model's; state_dir: where
        aliases made by cp live (None: none); aliases: the config's."""
        models = {n: ModelConfig(name=n, source=str((sources or {}).get(n, tiny_dir)),
                                 vllm_args=(model_args or {}).get(n, ()))
                  for n in names or ("a", "b", "c")}
        cfg = Config(models=tuple(models.values()), vllm_command=shlex.join(FAKE),
                     vllm_args=common_args, memory_budget=budget, engine_overhead=100 * MiB,
                     max_loaded_models=max_loaded, aliases=aliases or {})
        store = ModelStore(None, state_dir, models=cfg.models, common_args=cfg.vllm_args,
                           config_aliases=aliases)
        snap = snapshot or GpuSnapshot(False, "no NVIDIA GPU: test")
        hw = HardwareInfo(gpu_count=len(snap.gpus), gpu_memory_total=80 * GiB,
                          mem_available=20 * GiB, cpus=(0, 1))
        settings = EngineSettings(startup_timeout=25.0, stop_timeout=3.0,
                                  health_poll_interval=0.1, probe_timeout=1.0,
                                  backoff=BackoffPolicy(initial=0.05, maximum=0.2, restart_max=3,
                                                        window=60.0, jitter=0.0))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_VLLM_")}

        def factory(spec: EngineSpec, st: EngineSettings) -> Engine:
            return Engine(spec, st, hardware=hw, probe=health_probe(session), environ=environ,
                          cwd=str(REPO_ROOT))

        async def post(port: int, path: str) -> int:
            async with session.post(f"http://127.0.0.1:{port}{path}") as resp:
                return resp.status

        supervisor = Supervisor(factory, settings)
        engines = SupervisedEngines(supervisor, vllm_command=FAKE, common_args=cfg.vllm_args,
                                    engine_key="", post=post, get=engine_get(session),
                                    files=store.model_files)
        planner = Capacity(cfg, store, hw, gpu_snapshot=lambda: snap,
                           meminfo=lambda: (32 * GiB, 20 * GiB))
        defaults: dict[str, Any] = {"keep_alive": 300.0, "max_queue": 512, "load_timeout": 10.0}
        scheduler = Scheduler(engines, planner, Policy(**{**defaults, **policy}, sleep=sleep))
        supervisor.add_listener(scheduler.on_engine_change)
        bed = Bed(scheduler, supervisor, store, engines, models, cfg)
        scheduler.add_listener(
            lambda e: bed.events.append((e.kind, e.model, e.reason)) if e.kind != "waited"
            else None)
        built.append(bed)
        return bed

    try:
        yield build
    finally:
        for bed in built:
            async with asyncio.timeout(WAIT):
                await bed.scheduler.close()
                await bed.supervisor.stop()
        await session.close()
