"""The composition root: ordered start-up, the main loop, ordered shut-down. Only `cli` imports
this module.

Start-up (`_start`), each resource entered into one AsyncExitStack so shut-down is start-up in
reverse and a failure at any step releases what the earlier steps took:
  0. the signal handlers, first, so an early SIGHUP or SIGTERM is never fatal;
  1. the engine specs (a bad engine flag is a config error, exit 78, before anything starts);
  2. the GPU monitor (the tuned defaults need its first snapshot) and the readiness probe's
     client session;
  3. the gateway app and its runner; then listening, so /health answers 503 with the reason
     while models load;
  4. the engines, and the background tasks: load heartbeats (STATUS=, EXTEND_TIMEOUT_USEC),
     READY=1 once every preloaded engine answers, the watchdog, and the reloader.
Main loop: wait for SIGINT/SIGTERM (or `stop`); SIGHUP queues one reload (re-read the config,
restart only the engines whose settings changed). Shut-down: STOPPING=1, background tasks
cancelled, engines stopped (group kill, verified), gateway closed, GPU monitor and sessions
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from vllama import config as config_mod
from vllama.config import Config, Loaded, ModelConfig
from vllama.errors import ConfigError
from vllama.gateway.app import make_app
from vllama.gateway.keys import METRICS, Services
from vllama.gateway.metrics import LifecycleMetrics, Metrics, gauge
from vllama.gateway.server import setup_runner_and_site
from vllama.gateway.targets import ROUTER
from vllama.gpu import GpuMonitor, GpuSnapshot, import_nvml
from vllama.models import facts
from vllama.models.pulls import Pulls
from vllama.models.store import ModelStore
from vllama.scheduler.capacity import Capacity
from vllama.scheduler.engines import EngineGet, EnginePost, SupervisedEngines
from vllama.scheduler.scheduler import Policy, Scheduler
from vllama.scheduler.state import SchedulerEvent, Slot
from vllama.supervisor import (
    BackoffPolicy,
    Engine,
    EngineSettings,
    EngineSpec,
    EngineState,
    HttpLiveness,
    Supervisor,
    check_extra_args,
    hardware_info,
    health_probe,
    read_mem_available,
)
from vllama.systemd import Notifier, watchdog_interval, watchdog_loop
from vllama.tasks import Tasks
from vllama.workers.control import ControlServer
from vllama.workers.pool import WorkerPool, worker_count
from vllama.workers.protocol import Configure, State

logger = logging.getLogger("vllama.daemon")

HEARTBEAT = 5.0  # seconds between load-progress STATUS= lines and EXTEND_TIMEOUT_USEC
STATE_REFRESH = 1.0  # seconds between pushes of the workers' mirror without a change
WORKERS_START = 60.0  # bound on the gateway workers' start (imports, then bind)
EXTEND_USEC = int(3 * HEARTBEAT * 1_000_000)
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def engine_settings(cfg: Config) -> EngineSettings:
    return EngineSettings(
        startup_timeout=cfg.startup_timeout,
        stop_timeout=cfg.stop_timeout,
        health_poll_interval=cfg.health_poll_interval,
        hang_timeout=cfg.engine_hang_timeout,
        backoff=BackoffPolicy(initial=cfg.restart_backoff_initial,
                              maximum=cfg.restart_backoff_max,
                              restart_max=cfg.restart_max, window=cfg.restart_window,
                              stable_after=cfg.restart_stable_after),
    )


def model_keep_alive(cfg: Config, model: ModelConfig) -> float:
    """A configured model's keep_alive: its own, else forever when it is preloaded (an
    operator who lists a model to load at start wants it kept), else the default."""
    own = config_mod.model_keep_alive(model)
    if own is not None:
        return own
    return math.inf if model.preload else cfg.keep_alive


def scheduler_policy(cfg: Config, on_gpu: bool) -> Policy:
    return Policy(keep_alive=cfg.keep_alive, max_queue=cfg.max_queue,
                  load_timeout=cfg.load_timeout, sleep=on_gpu and cfg.sleep_mode == "auto",
                  retry_after=cfg.restart_backoff_max)


def engine_post(session: aiohttp.ClientSession) -> EnginePost:
    """POSTs to an engine's own routes (sleep mode) over the daemon's probe session."""

    async def post(port: int, path: str) -> int:
        try:
            async with session.post(f"http://127.0.0.1:{port}{path}") as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    return post


def engine_get(session: aiohttp.ClientSession) -> EngineGet:
    """GETs of an engine's OpenAI routes (`/v1/models`), with the engines' key."""

    async def get(port: int, path: str, api_key: str) -> bytes | None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
                body = await resp.read()
                return body if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    return get


def engine_specs(cfg: Config, engine_key: str) -> list[EngineSpec]:
    """The engines to run (one per configured local model); a removed or misspelt engine flag
    is a config error (exit 78) before anything starts."""
    specs = []
    for model in cfg.models:
        if not model.is_local:
            continue
        spec = EngineSpec(name=model.name, source=model.source,
                          vllm_command=tuple(cfg.vllm_argv),
                          vllm_args=facts.configured_args(model, cfg.vllm_args),
                          api_key=engine_key)
        try:
            check_extra_args(spec.vllm_args)
        except ConfigError as exc:
            raise ConfigError(f"config error: model {spec.name!r}: {exc.message}") from None
        specs.append(spec)
    return specs


@dataclass
class Daemon:
    """The running daemon: what start-up built, and the behaviour of its main loop."""

    loaded: Loaded
    cli: config_mod.CliOverrides
    notifier: Notifier
    supervisor: Supervisor
    services: Services
    app: web.Application | None  # the in-process gateway (None with gateway workers)
    tasks: Tasks
    started: float  # monotonic
    reload_wanted: asyncio.Event  # set by SIGHUP
    scheduler: Scheduler
    engines: SupervisedEngines
    planner: Capacity
    supervisor_has_gpu: bool
    lifecycle: LifecycleMetrics = field(default_factory=LifecycleMetrics)
    control: ControlServer | None = None  # with gateway workers: their control sockets
    pool: WorkerPool | None = None
    pulls: Pulls = field(default_factory=Pulls)  # kept across reloads; cancelled at shut-down

    @property
    def where(self) -> str:
        cfg = self.loaded.config
        return f"http://{cfg.host}:{cfg.port}"

    def status_line(self) -> str:
        return self.scheduler.status_text()

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
        if self.control is not None:
            self.control.push_state()

    async def heartbeat(self) -> None:
        """While any engine loads: progress in STATUS= and the log, and more start time."""
        while True:
            loading = [s for s in self.supervisor.snapshot()
                       if s.state in (EngineState.STARTING, EngineState.LOADING,
                                      EngineState.BACKOFF)]
            if loading:
                self.notifier.extend_timeout(EXTEND_USEC)
                self.notifier.status(self.status_line())
                for status in loading:
                    if status.state == EngineState.BACKOFF:  # not loading: waiting to restart
                        logger.info("%s", status.reason,
                                    extra={"component": "supervisor", "model": status.model})
                        continue
                    phase = status.phase or str(status.state)
                    logger.info("loading %s: %s (%.0f s)", status.model, phase,
                                status.load_seconds or 0.0,
                                extra={"component": "supervisor", "model": status.model})
            await asyncio.sleep(HEARTBEAT)

    async def gateway_listening(self) -> None:
        """Until every gateway worker listens (at once with one process)."""
        control, pool = self.control, self.pool
        if control is None or pool is None:
            return
        while not control.listening(pool.count):
            control.changed.clear()
            await control.changed.wait()

    def configure_message(self) -> Configure:
        runtime = self.loaded.runtime
        return Configure(self.loaded.config, runtime.hf_token, runtime.hf_endpoint)

    def state_message(self) -> State:
        gpu = self.services.gpu
        return State(engines=self.supervisor.snapshot(), slots=self.scheduler.snapshot(),
                     queued=dict(self.scheduler.queued), ready=self.scheduler.ready,
                     reasons=self.scheduler.unready_reasons(),
                     gpu=gpu.snapshot if gpu is not None else GpuSnapshot(False, "no monitor"))

    def render_metrics(self, dumps: Sequence[Mapping[str, Any]]) -> str:
        """/metrics for the whole daemon: the workers' request counts added up, and the
        engines', models' and GPUs' series of this process."""
        total = Metrics()
        for dump in dumps:
            total.absorb(dump)
        total.collectors.append(self.engine_metrics)
        return total.render()

    async def push_state_forever(self) -> None:
        """The workers' mirror follows every change (listeners push at once); this refresh
        carries what changes without an event (load progress, the GPU snapshot)."""
        while True:
            await asyncio.sleep(STATE_REFRESH)
            if self.control is not None:
                self.control.push_state()

    async def worker_watchdog(self, control: ControlServer, interval: float) -> None:
        """WATCHDOG=1 only while this loop and every worker's loop answer: a wedged worker
        stops the pings, and systemd restarts the service."""
        while True:
            if await control.all_answer(timeout=interval):
                self.notifier.watchdog()
            else:
                logger.error("a gateway worker did not answer within %.0f s", interval,
                             extra={"component": "workers"})
            await asyncio.sleep(interval / 2)

    def preload(self) -> None:
        """Load the configured models marked preload, and say READY=1 once they serve."""
        cfg = self.loaded.config
        slots = self.scheduler.preload(
            [m for m in cfg.models if m.is_local and m.preload],
            lambda m: model_keep_alive(cfg, m))
        self.tasks.start(self.announce_ready(slots), "ready")

    async def announce_ready(self, slots: list[Slot]) -> None:
        """READY=1 once every gateway worker listens and every preloaded model serves; models
        with preload = false load on their first request without holding up start-up."""
        await self.gateway_listening()
        ok = await self.scheduler.wait_loaded(slots)
        if ok:
            names = ", ".join(s.key for s in slots) or "no preloaded models"
            logger.info("ready: %s on %s (%.0f s)", names, self.where,
                        time.monotonic() - self.started, extra={"component": "daemon"})
            self.notifier.ready(self.status_line())
        else:
            # A model that cannot load is reported, not waited for forever: the unit becomes
            # active, /health answers 503 with the reason, and the log says what to do.
            logger.error("not every model could start; %s. The gateway stays up on %s and "
                         "/health says why", self.status_line(), self.where,
                         extra={"component": "daemon"})
            self.notifier.ready("degraded: " + self.status_line())

    async def reloader(self) -> None:
        """Apply SIGHUPs one at a time: a SIGHUP during a reload queues exactly one more."""
        while True:
            await self.reload_wanted.wait()
            self.reload_wanted.clear()
            try:
                await self.reload()
            except Exception:
                # A reload must never take the daemon down, nor leave systemd in "reloading".
                logger.exception("reload failed; keeping the running config",
                                 extra={"component": "daemon"})
                self.notifier.ready(self.status_line())

    async def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = config_mod.load(self.cli, self.loaded.environ)
            engine_specs(new.config, self.services.engine_key)  # a config error keeps the old
        except ConfigError as exc:
            logger.error("reload failed, keeping the running config: %s", exc.message,
                         extra={"component": "daemon"})
            self.notifier.ready(self.status_line())
            return
        old = self.loaded.config
        self.loaded = new
        cfg = new.config
        store = ModelStore.from_config(cfg, new.runtime, pulls=self.pulls)
        if self.app is not None:  # the discovered models stay listed through the reload
            self.app[ROUTER].adopt(store)
        self.services.config = cfg
        self.services.store = store
        self.supervisor.settings = engine_settings(cfg)
        self.scheduler.policy = scheduler_policy(cfg, self.supervisor_has_gpu)
        self.engines.common_args = tuple(cfg.vllm_args)
        self.engines.vllm_command = tuple(cfg.vllm_argv)
        self.planner.configure(cfg, store)
        # Configured models whose settings changed or that left the config stop; the next
        # request (or the preload below) starts them with the new settings.
        wanted = {m.name: m for m in cfg.models if m.is_local}
        gone = {m.name: m for m in old.models if m.is_local and m.name not in wanted}
        restarted = await self.scheduler.retire_changed(wanted, gone)
        if self.app is not None:
            for session in self.app[ROUTER].replace(cfg, store):
                await session.close()
        if self.control is not None:
            self.control.push_configure()
        logger.info("config reloaded from %s; restarted: %s", new.path or "defaults",
                    ", ".join(restarted) or "nothing", extra={"component": "daemon"})
        self.notifier.ready(self.status_line())
        self.preload()

    def on_scheduler_event(self, event: SchedulerEvent) -> None:
        """Loads, unloads and the rest: counted, and STATUS= follows (the scheduler logs
        each with its reason)."""
        self.lifecycle.record(event.kind, event.model, event.reason, event.seconds)
        if event.kind != "waited":
            self.notifier.status(self.status_line())
            if self.control is not None:
                self.control.push_state()

    def engine_metrics(self) -> list[str]:
        statuses = self.supervisor.snapshot()
        rows = [((("model", s.model), ("state", str(s.state))), 1.0) for s in statuses]
        out = gauge("vllama_engine_state", "1 for the state each engine is in.", rows)
        out += self.lifecycle.lines(self.scheduler.queued,
                                    [(s.model, s.state.value) for s in self.scheduler.snapshot()])
        out += gauge("vllama_engine_restarts_total", "Engine restarts after crashes.",
                     [((("model", s.model),), float(s.restarts)) for s in statuses],
                     kind="counter")
        snap = self.services.gpu.snapshot if self.services.gpu is not None else None
        gpus = snap.gpus if snap is not None and snap.available else ()
        out += gauge("vllama_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                     [((("gpu", str(g.index)), ("name", g.name)), float(g.memory_used or 0))
                      for g in gpus])
        out += gauge("vllama_gpu_memory_total_bytes", "GPU memory (NVML).",
                     [((("gpu", str(g.index)), ("name", g.name)), float(g.memory_total or 0))
                      for g in gpus])
        return out


def _install_signals(stack: contextlib.AsyncExitStack, stop: asyncio.Event,
                     reload_wanted: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)

    def remove() -> None:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)

    stack.callback(remove)


async def _start(stack: contextlib.AsyncExitStack, loaded: Loaded,
                 cli: config_mod.CliOverrides, notifier: Notifier, stop: asyncio.Event
                 ) -> Daemon | None:
    """Start-up in order; None when the gateway cannot listen (already reported)."""
    cfg = loaded.config
    started = time.monotonic()
    reload_wanted = asyncio.Event()
    _install_signals(stack, stop, reload_wanted)
    engine_key = secrets.token_urlsafe(24)
    engine_specs(cfg, engine_key)  # a bad engine flag is a config error before anything runs

    gpu = GpuMonitor(import_nvml(), cfg.nvml_interval)
    stack.push_async_callback(gpu.stop)
    snapshot = await gpu.start()
    hw = hardware_info(snapshot, read_mem_available())
    probe_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
    stack.push_async_callback(probe_session.close)
    probe = health_probe(probe_session)
    liveness = HttpLiveness(probe_session)
    gpu_freed = gpu.memory_freed_for if snapshot.available else None
    cwd = os.getcwd()

    def factory(spec: EngineSpec, settings: EngineSettings) -> Engine:
        return Engine(spec, settings, hardware=hw, probe=probe, environ=loaded.environ,
                      cwd=cwd, gpu_freed=gpu_freed, liveness=liveness)

    supervisor = Supervisor(factory, engine_settings(cfg))
    pulls = Pulls()
    store = ModelStore.from_config(cfg, loaded.runtime, pulls=pulls)
    engines = SupervisedEngines(supervisor, vllm_command=cfg.vllm_argv,
                                common_args=cfg.vllm_args, engine_key=engine_key,
                                post=engine_post(probe_session),
                                get=engine_get(probe_session),
                                # services.store, not store: a reload swaps it
                                files=lambda m: services.store.model_files(m))  # noqa: PLW0108
    planner = Capacity(cfg, store, hw, gpu_snapshot=lambda: gpu.snapshot)
    scheduler = Scheduler(engines, planner, scheduler_policy(cfg, hw.on_gpu))
    stack.push_async_callback(scheduler.close)
    services = Services(config=cfg, store=store, scheduler=scheduler, supervisor=supervisor,
                        gpu=gpu, engine_key=engine_key)
    tasks = Tasks()
    daemon = Daemon(loaded, cli, notifier, supervisor, services, None, tasks, started,
                    reload_wanted, scheduler, engines, planner, hw.on_gpu, pulls=pulls)
    count = worker_count(cfg.workers, hw.cpus)
    listening = (await _gateway(stack, daemon) if count == 1
                 else await _workers(stack, daemon, count))
    # Pushed after the gateway: it runs before the gateway closes, so pulls stop at once and
    # their clients' handlers with them (a hub that never answers must not hold a shut-down).
    stack.push_async_callback(pulls.close)
    if not listening:
        return None
    supervisor.add_listener(daemon.on_engine_change)
    supervisor.add_listener(scheduler.on_engine_change)
    scheduler.add_listener(daemon.on_scheduler_event)
    stack.push_async_callback(supervisor.stop)
    stack.push_async_callback(tasks.aclose)
    daemon.preload()
    notifier.status(daemon.status_line())
    tasks.start(daemon.heartbeat(), "heartbeat")
    tasks.start(daemon.reloader(), "reloader")
    interval = watchdog_interval(loaded.runtime.watchdog_usec, loaded.runtime.watchdog_pid,
                                 os.getpid())
    if interval:
        control = daemon.control
        tasks.start(watchdog_loop(notifier, interval) if control is None
                    else daemon.worker_watchdog(control, interval), "watchdog")
    if daemon.control is not None:
        tasks.start(daemon.push_state_forever(), "state")
    return daemon


def _cannot_listen(daemon: Daemon, exc: OSError) -> None:
    cfg = daemon.loaded.config
    logger.error("cannot listen on %s:%d: %s; is another server (ollama?) using the port? Set "
                 "port or VLLAMA_PORT", cfg.host, cfg.port, exc.strerror,
                 extra={"component": "gateway"})
    daemon.notifier.errno(exc.errno or 98, f"cannot listen on {cfg.host}:{cfg.port}")


async def _gateway(stack: contextlib.AsyncExitStack, daemon: Daemon) -> bool:
    """One process: the gateway runs on the main process's own loop."""
    cfg = daemon.loaded.config
    app = daemon.app = make_app(daemon.services)
    runner, site = await setup_runner_and_site(app, cfg)
    stack.push_async_callback(runner.cleanup)
    app[METRICS].collectors.append(daemon.engine_metrics)
    try:
        await site.start()
    except OSError as exc:
        _cannot_listen(daemon, exc)
        return False
    logger.info("listening on http://%s:%d", cfg.host, cfg.port, extra={"component": "gateway"})
    return True


async def _workers(stack: contextlib.AsyncExitStack, daemon: Daemon, count: int) -> bool:
    """Several gateway processes on one port (SO_REUSEPORT); this process keeps the scheduler,
    the engines and systemd, and serves the workers over a private Unix socket."""
    cfg = daemon.loaded.config
    try:  # a port held by another server fails here, with the same message as one process
        with socket.create_server((cfg.host, cfg.port), reuse_port=True):
            pass
    except OSError as exc:
        _cannot_listen(daemon, exc)
        return False
    private = tempfile.mkdtemp(prefix="vllama-")
    stack.callback(shutil.rmtree, private, ignore_errors=True)
    control = daemon.control = ControlServer(
        os.path.join(private, "control.sock"), daemon.scheduler, daemon.services.engine_key,
        configure=daemon.configure_message, state=daemon.state_message,
        render_metrics=daemon.render_metrics)
    await control.start()
    stack.push_async_callback(control.close)
    pool = daemon.pool = WorkerPool(count, control.path, daemon.loaded.environ,
                                    log_level=cfg.log_level, log_format=cfg.log_format)
    pool.start()
    stack.push_async_callback(pool.stop)
    try:  # the gateway listens before any model loads, so /health says why it is not ready
        async with asyncio.timeout(WORKERS_START):
            await daemon.gateway_listening()
    except TimeoutError:
        logger.error("the gateway workers did not all start listening within %.0f s; see "
                     "their log lines above", WORKERS_START, extra={"component": "workers"})
        daemon.notifier.errno(98, "gateway workers did not start")
        return False
    logger.info("listening on http://%s:%d with %d gateway workers", cfg.host, cfg.port, count,
                extra={"component": "gateway"})
    return True


async def serve(loaded: Loaded, *, cli: config_mod.CliOverrides | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or `stop` is set). Returns the process exit code."""
    stop = stop or asyncio.Event()
    notifier = Notifier(loaded.runtime.notify_socket or None)
    try:
        async with contextlib.AsyncExitStack() as stack:
            daemon = await _start(stack, loaded, cli or config_mod.CliOverrides(), notifier,
                                  stop)
            if daemon is None:
                return 1
            await stop.wait()
            logger.info("shutting down", extra={"component": "daemon"})
            notifier.stopping("stopping")
    finally:
        notifier.close()
        sys.stderr.flush()
    return 0
