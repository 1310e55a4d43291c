"""One gateway worker process: `vllama worker --control PATH --worker N` (the main process
starts it; nobody else should).

A full aiohttp gateway on the daemon's address, bound with SO_REUSEPORT so the kernel spreads
connections over the workers. It asks the main process for leases, mirrors what the main
process pushes, reads the model store itself (the cache and the state directory are shared
files), and stops when told (SIGTERM) or when its main process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from vllama.gateway.app import make_app
from vllama.gateway.keys import METRICS, Services
from vllama.gateway.metrics import Metrics
from vllama.gateway.server import make_runner
from vllama.gateway.targets import ROUTER
from vllama.models.store import ModelStore
from vllama.workers.client import ControlClient, MirroredGpu, MirroredSupervisor
from vllama.workers.protocol import Configure, Listening

log = logging.getLogger("vllama.workers")


def _store(configure: Configure) -> ModelStore:
    cfg = configure.config
    store = ModelStore.from_config(cfg)
    store.token = configure.hf_token or None
    store.endpoint = configure.hf_endpoint.rstrip("/") or None
    return store


async def run(control: str, worker: int) -> int:
    """Serve until SIGTERM/SIGINT or until the main process goes away; the exit code."""
    metrics_box: list[Metrics] = []
    client = await ControlClient.connect(
        control, worker, lambda: metrics_box[0].dump() if metrics_box else {})
    cfg = client.configure.config
    services = Services(config=cfg, store=_store(client.configure), scheduler=client,
                        supervisor=MirroredSupervisor(client), gpu=MirroredGpu(client),
                        engine_key=client.engine_key, metrics_source=client.metrics_text,
                        worker=worker)
    app = make_app(services)
    metrics_box.append(app[METRICS])
    runner = make_runner(app, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # reloads come from the main process

    closing: set[asyncio.Task[None]] = set()

    def reconfigure(configure: Configure) -> None:
        store = _store(configure)
        services.config, services.store = configure.config, store
        for session in app[ROUTER].replace(configure.config, store):
            task = loop.create_task(session.close())
            closing.add(task)
            task.add_done_callback(closing.discard)

    client.on_configure = reconfigure
    client.start()
    await runner.setup()
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True, reuse_port=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("worker %d cannot listen on %s:%d: %s", worker, cfg.host, cfg.port,
                      exc.strerror, extra={"component": "gateway"})
            return 1
        client.send(Listening())
        lost = asyncio.ensure_future(client.closed.wait())
        asked = asyncio.ensure_future(stop.wait())
        await asyncio.wait({lost, asked}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (lost, asked):
            fut.cancel()
        if client.closed.is_set() and not stop.is_set():
            log.error("worker %d: the main process is gone; stopping", worker,
                      extra={"component": "gateway"})
    finally:
        await runner.cleanup()
        await client.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0
