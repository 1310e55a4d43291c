"""The composition root: ordered start-up and shut-down, signals, systemd.

Start-up: read the GPUs, bind the gateway (so /health answers 503 with the reason while models
load), start the engines, heartbeat systemd (STATUS=, EXTEND_TIMEOUT_USEC) while they load, and
send READY=1 once every preloaded engine answers. SIGHUP re-reads the config and restarts only
the engines whose settings changed. SIGTERM/SIGINT: STOPPING=1, engines stopped (group kill,
verified), gateway closed. Only ``cli`` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from vllama import config as config_mod
from vllama.config import Config, Loaded
from vllama.errors import ConfigError
from vllama.gateway.app import make_app
from vllama.gateway.keys import METRICS, Services
from vllama.gateway.metrics import gauge
from vllama.gateway.targets import ROUTER, build_targets
from vllama.gpu import GpuMonitor, import_nvml
from vllama.models.store import store_from_config
from vllama.supervisor import (
    BackoffPolicy,
    Engine,
    EngineSettings,
    EngineSpec,
    EngineState,
    Supervisor,
    check_extra_args,
    hardware_info,
    health_probe,
    read_mem_available,
    specs_from_models,
)
from vllama.systemd import Notifier, watchdog_interval, watchdog_loop

logger = logging.getLogger("vllama.daemon")

HEARTBEAT = 5.0  # seconds between load-progress STATUS= lines and EXTEND_TIMEOUT_USEC
EXTEND_USEC = int(3 * HEARTBEAT * 1_000_000)


def engine_settings(cfg: Config) -> EngineSettings:
    return EngineSettings(
        startup_timeout=cfg.startup_timeout,
        stop_timeout=cfg.stop_timeout,
        health_poll_interval=cfg.health_poll_interval,
        backoff=BackoffPolicy(initial=cfg.restart_backoff_initial,
                              maximum=cfg.restart_backoff_max,
                              restart_max=cfg.restart_max, window=cfg.restart_window,
                              stable_after=cfg.restart_stable_after),
    )


def engine_specs(cfg: Config, engine_key: str) -> list[EngineSpec]:
    """The engines to run; a removed or misspelt engine flag is a config error (exit 78)
    before anything starts."""
    specs = specs_from_models(cfg.models, tuple(cfg.vllm_argv), cfg.vllm_args, engine_key)
    for spec in specs:
        try:
            check_extra_args(spec.vllm_args)
        except ConfigError as exc:
            raise ConfigError(f"config error: model {spec.name!r}: {exc.message}") from None
    return specs


@dataclass
class Daemon:
    loaded: Loaded
    notifier: Notifier
    supervisor: Supervisor
    services: Services
    app: web.Application
    engine_key: str
    started: float

    def status_line(self) -> str:
        return self.supervisor.status_text()

    def on_engine_change(self, engine: Engine, previous: EngineState) -> None:
        """Every state change updates STATUS=; the supervisor logs the transition itself,
        so only the outcomes an operator acts on get a line of their own here."""
        status = engine.status()
        if status.state == EngineState.READY:
            logger.info("%s is ready (loaded in %.0f s)", engine.name, status.load_seconds or 0,
                        extra={"component": "supervisor", "model": engine.name,
                               "state": "ready", "restarts": status.restarts})
        elif status.state == EngineState.FAILED:
            logger.error("%s", status.reason, extra={
                "component": "supervisor", "model": engine.name, "state": "failed",
                "restarts": status.restarts})
        self.notifier.status(self.status_line())

    async def heartbeat(self) -> None:
        """While any engine loads: progress in STATUS= and the log, and more start time."""
        while True:
            loading = [s for s in self.supervisor.snapshot()
                       if s.state in (EngineState.STARTING, EngineState.LOADING,
                                      EngineState.BACKOFF)]
            if not loading:
                await asyncio.sleep(HEARTBEAT)
                continue
            self.notifier.extend_timeout(EXTEND_USEC)
            self.notifier.status(self.status_line())
            for status in loading:
                phase = status.phase or str(status.state)
                logger.info("loading %s: %s (%.0f s)", status.model, phase,
                            status.load_seconds or 0.0,
                            extra={"component": "supervisor", "model": status.model})
            await asyncio.sleep(HEARTBEAT)

    async def announce_ready(self) -> None:
        """READY=1 once every *preloaded* engine answers; engines of models with
        preload = false load alongside without holding up start-up."""
        preloaded = {m.name for m in self.loaded.config.models if m.preload}
        engines = [e for name, e in self.supervisor.engines.items() if name in preloaded]
        ok = all(await asyncio.gather(*(e.wait_ready() for e in engines)))
        cfg = self.loaded.config
        where = f"http://{cfg.host}:{cfg.port}"
        if ok:
            names = ", ".join(s.model for s in self.supervisor.snapshot()) or "no local models"
            logger.info("ready: %s on %s (%.0f s)", names, where, time.monotonic() - self.started,
                        extra={"component": "daemon"})
            self.notifier.ready(self.status_line())
        else:
            # A model that cannot load is reported, not waited for forever: the unit becomes
            # active, /health answers 503 with the reason, and the log says what to do.
            logger.error("not every model could start; %s. The gateway stays up on %s and "
                         "/health says why", self.status_line(), where,
                         extra={"component": "daemon"})
            self.notifier.ready("degraded: " + self.status_line())

    async def reload(self, cli: config_mod.CliOverrides) -> None:
        try:
            await self._reload(cli)
        except Exception:
            # A reload must never take the daemon down, nor leave systemd in "reloading".
            logger.exception("reload failed; keeping the running config",
                             extra={"component": "daemon"})
            self.notifier.ready(self.status_line())

    async def _reload(self, cli: config_mod.CliOverrides) -> None:
        self.notifier.reloading()
        try:
            new = config_mod.load(cli, self.loaded.environ)
            specs = engine_specs(new.config, self.engine_key)
        except ConfigError as exc:
            logger.error("reload failed, keeping the running config: %s", exc.message,
                         extra={"component": "daemon"})
            self.notifier.ready(self.status_line())
            return
        self.loaded = new
        self.services.config = new.config
        self.supervisor.settings = engine_settings(new.config)
        started = await self.supervisor.reload(specs)
        dropped = self.app[ROUTER].replace(
            build_targets(new.config, self.supervisor.get, self.engine_key))
        for target in dropped:
            await target.session.close()
        logger.info("config reloaded from %s; restarted: %s", new.path or "defaults",
                    ", ".join(started) or "nothing", extra={"component": "daemon"})
        self.notifier.ready(self.status_line())
        asyncio.get_running_loop().create_task(self.announce_ready())

    def engine_metrics(self) -> list[str]:
        states = [(s.model, s.state) for s in self.supervisor.snapshot()]
        rows = [((("model", m), ("state", str(st))), 1.0) for m, st in states]
        out = gauge("vllama_engine_state", "1 for the state each engine is in.", rows)
        out += gauge("vllama_engine_restarts_total", "Engine restarts after crashes.",
                     [((("model", s.model),), float(s.restarts))
                      for s in self.supervisor.snapshot()], kind="counter")
        snap = self.services.gpu.snapshot if self.services.gpu is not None else None
        gpus = snap.gpus if snap is not None and snap.available else ()
        out += gauge("vllama_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                     [((("gpu", str(g.index)), ("name", g.name)), float(g.memory_used or 0))
                      for g in gpus])
        out += gauge("vllama_gpu_memory_total_bytes", "GPU memory (NVML).",
                     [((("gpu", str(g.index)), ("name", g.name)), float(g.memory_total or 0))
                      for g in gpus])
        return out


def _signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event,
             on_hup: Callable[[], None]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)


async def serve(loaded: Loaded, *, cli: config_mod.CliOverrides | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set). Returns the process exit code."""
    cfg = loaded.config
    cli = cli or config_mod.CliOverrides()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    notifier = Notifier(loaded.runtime.notify_socket or None)
    engine_key = secrets.token_urlsafe(24)
    specs = engine_specs(cfg, engine_key)

    gpu = GpuMonitor(import_nvml(), cfg.nvml_interval)
    snapshot = await gpu.start()
    hw = hardware_info(snapshot, read_mem_available())
    probe_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
    probe = health_probe(probe_session)
    gpu_freed = gpu.memory_freed_for if snapshot.available else None
    cwd = os.getcwd()

    def factory(spec: EngineSpec, settings: EngineSettings) -> Engine:
        return Engine(spec, settings, hardware=hw, probe=probe, environ=loaded.environ,
                      cwd=cwd, gpu_freed=gpu_freed)

    supervisor = Supervisor(factory, engine_settings(cfg))
    store = store_from_config(cfg, loaded.runtime)
    services = Services(config=cfg, supervisor=supervisor, gpu=gpu, store=store,
                        extra={"engine_key": engine_key})
    app = make_app(services)
    daemon = Daemon(loaded, notifier, supervisor, services, app, engine_key, started)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                           # A client that disconnects cancels its handler at once, which
                           # closes the upstream connection so vLLM aborts the sequence.
                           handler_cancellation=True)
    tasks: list[asyncio.Task[None]] = []
    reloading: list[asyncio.Task[None]] = []

    def on_hup() -> None:
        if not any(not t.done() for t in reloading):
            reloading.append(loop.create_task(daemon.reload(cli)))

    await runner.setup()
    try:
        app[METRICS].collectors.append(daemon.engine_metrics)
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s; is another server (ollama?) using the "
                         "port? Set port or VLLAMA_PORT", cfg.host, cfg.port, exc.strerror,
                         extra={"component": "gateway"})
            notifier.errno(exc.errno or 98, f"cannot listen on {cfg.host}:{cfg.port}")
            return 1
        logger.info("listening on http://%s:%d", cfg.host, cfg.port,
                    extra={"component": "gateway"})
        _signals(loop, stop, on_hup)
        supervisor.add_listener(daemon.on_engine_change)
        supervisor.start(specs)
        notifier.status(supervisor.status_text())
        tasks.append(loop.create_task(daemon.heartbeat(), name="heartbeat"))
        tasks.append(loop.create_task(daemon.announce_ready(), name="ready"))
        interval = watchdog_interval(loaded.runtime.watchdog_usec,
                                     loaded.runtime.watchdog_pid, os.getpid())
        if interval:
            tasks.append(loop.create_task(watchdog_loop(notifier, interval), name="watchdog"))
        await stop.wait()
        logger.info("shutting down", extra={"component": "daemon"})
        notifier.stopping("stopping")
    finally:
        for task in [*tasks, *reloading]:
            task.cancel()
        for task in [*tasks, *reloading]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await supervisor.stop()
        await runner.cleanup()
        await gpu.stop()
        await probe_session.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        notifier.close()
        sys.stderr.flush()
    return 0

