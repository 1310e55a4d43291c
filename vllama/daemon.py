"""The composition root: ordered start-up and shut-down of the gateway (and, when wired, the
supervisor), signal handling. Only ``cli`` imports this module."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from vllama.config import Loaded
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services

logger = logging.getLogger("vllama.daemon")


async def serve(loaded: Loaded, *, stop: asyncio.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set). Returns the process exit code."""
    cfg = loaded.config
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    services = Services(config=cfg)
    app = make_app(services)
    # handler_cancellation: a client that disconnects cancels its handler at once, which
    # closes the upstream connection so vLLM aborts the sequence (DESIGN: cancellation).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                           handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
        await site.start()
        logger.info("listening on http://%s:%d", cfg.host, cfg.port,
                    extra={"component": "gateway"})
        await stop.wait()
        logger.info("shutting down", extra={"component": "daemon"})
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
