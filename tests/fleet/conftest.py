"""A real gateway on loopback in front of several fake vLLM servers (also on loopback), each a
member of one model's group; any of them can be stopped and started again on its port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.fake_vllm import FAKE_STATE, FakeScript, FakeState, fake_server
from vllama.config import Config, ModelConfig, UpstreamRef
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services

Client = TestClient[web.Request, web.Application]
WAIT = 20.0  # bound on waiting for a probe or a discovery round (2 busy cores)


@dataclass
class Upstream:
    script: FakeScript
    url: str  # without /v1
    state: FakeState
    stack: contextlib.AsyncExitStack
    port: int

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def posts(self) -> int:
        return sum(1 for r in self.state.requests if r.method == "POST")

    async def stop(self) -> None:
        await self.stack.aclose()

    async def start(self) -> None:
        """Again, on the same port (an engine that comes back)."""
        self.stack = contextlib.AsyncExitStack()
        _, app = await self.stack.enter_async_context(
            fake_server(self.script, port=self.port))
        self.state = app[FAKE_STATE]


async def start_upstream(script: FakeScript) -> Upstream:
    stack = contextlib.AsyncExitStack()
    url, app = await stack.enter_async_context(fake_server(script))
    return Upstream(script, url, app[FAKE_STATE], stack, int(url.rsplit(":", 1)[1]))


@dataclass
class Bed:
    client: Client
    upstreams: list[Upstream]
    config: Config
    app: web.Application = field(repr=False)

    async def chat(self, content: str, *, history: list[dict[str, str]] | None = None,
                   model: str = "m", stream: bool = False) -> tuple[int, str, list[Any]]:
        """(status, X-Vllama-Upstream, the NDJSON lines or the error body)."""
        messages = [*(history or []), {"role": "user", "content": content}]
        resp = await self.client.post("/api/chat", data=msgspec.json.encode(
            {"model": model, "messages": messages, "stream": stream}))
        text = await resp.text()
        lines = [msgspec.json.decode(line) for line in text.splitlines() if line]
        return resp.status, resp.headers.get("X-Vllama-Upstream", ""), lines

    async def health(self) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get("/health")
        doc: dict[str, Any] = await resp.json()
        return resp.status, doc

    async def until(self, check: Callable[[], Awaitable[bool]]) -> None:
        """Poll (probes and discovery run on timers) until `check` holds; bounded by WAIT."""
        async with asyncio.timeout(WAIT):
            while not await check():  # noqa: ASYNC110 - the gateway is polled over HTTP
                await asyncio.sleep(0.05)

    async def member_states(self, model: str = "m") -> dict[str, str]:
        _, doc = await self.health()
        for group in doc.get("upstreams", ()):
            if group["model"] == model:
                return {m["upstream"]: m["state"] for m in group["members"]}
        return {}


MakeBed = Callable[..., Awaitable[Bed]]


@pytest.fixture
async def make_bed(aiohttp_client: Any) -> AsyncIterator[MakeBed]:
    started: list[Upstream] = []

    async def build(count: int = 2, *, scripts: list[FakeScript] | None = None,
                    refs: list[UpstreamRef] | None = None, models: tuple[ModelConfig, ...] = (),
                    **settings: Any) -> Bed:
        ups = [await start_upstream(s) for s in
               (scripts or [FakeScript(served_names=["m"]) for _ in range(count)])]
        started.extend(ups)
        members = tuple(refs) if refs is not None else tuple(UpstreamRef(u.v1) for u in ups)
        group = (ModelConfig(name="m", upstreams=members),) if members else ()
        cfg = Config(models=(*group, *models), **settings)
        app = make_app(Services.for_config(cfg))
        client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
        return Bed(client, ups, cfg, app)

    try:
        yield build
    finally:
        for up in started:
            await up.stop()
