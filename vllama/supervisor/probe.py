"""The HTTP probes the engines use: readiness (GET /health == 200) and liveness (vLLM's own
metrics, and a one-token request when it is idle). The daemon builds them over its probe
session and hands them in, so the supervisor never imports the gateway's HTTP client."""

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


# Tried in order: a generative model answers completions; a pooling (embedding) model refuses
# them with a 4xx and answers embeddings. Both go through the engine core.
_TINY = (("/v1/completions", {"prompt": "hi", "max_tokens": 1, "temperature": 0.0}),
         ("/v1/embeddings", {"input": "hi"}))


class HttpLiveness:
    """`Liveness` (vllama.supervisor.engine) over a client session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def metrics(self, port: int, timeout: float) -> str | None:
        """vLLM's /metrics text; None when it does not answer in time."""
        try:
            async with self._session.get(
                    f"http://127.0.0.1:{port}/metrics",
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                text = await resp.text()
                return text if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def tiny_request(self, port: int, model: str, key: str, timeout: float
                           ) -> bool | None:
        """One token through the engine core: True when it completed in time, False when it
        did not (or the server failed), None when this engine serves neither route."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            for path, body in _TINY:
                async with self._session.post(
                        f"http://127.0.0.1:{port}{path}", json={"model": model, **body},
                        headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    await resp.read()
                    if resp.status < 400:
                        return True
                    if resp.status >= 500:
                        return False
        except (aiohttp.ClientError, TimeoutError):
            return False
        return None
