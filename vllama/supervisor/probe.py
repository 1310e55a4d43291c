"""The readiness probe the engines use: GET http://127.0.0.1:<port>/health == 200."""

from __future__ import annotations

import aiohttp

from vllama.supervisor.engine import Probe


def health_probe(session: aiohttp.ClientSession) -> Probe:
    """A probe over the caller's session (the daemon passes the gateway's pooled one).

    Any connection error means "not ready yet": vLLM refuses connections while it loads.
    The engine bounds each probe with its own timeout.
    """

    async def probe(port: int) -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                await resp.read()
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    return probe
