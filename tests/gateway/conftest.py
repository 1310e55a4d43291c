"""A real gateway on loopback in front of the fake vLLM (also on loopback)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.fake_vllm import FAKE_STATE, FakeScript, FakeState, make_app
from vllama.config import Config, ModelConfig
from vllama.gateway.app import make_app as make_gateway
from vllama.gateway.keys import Services

Client = TestClient[web.Request, web.Application]


@dataclass
class Bed:
    client: Client
    script: FakeScript
    state: FakeState
    upstream: TestServer

    async def post(self, path: str, body: Any) -> Any:
        resp = await self.client.post(path, data=msgspec.json.encode(body))
        return resp

    async def lines(self, path: str, body: Any) -> tuple[int, str, list[dict[str, Any]]]:
        resp = await self.client.post(path, data=msgspec.json.encode(body))
        raw = await resp.read()
        text = raw.decode()
        if resp.status != 200 or not text:
            return resp.status, resp.headers.get("Content-Type", ""), []
        assert text.endswith("\n"), "every NDJSON line ends with a newline"
        assert "\n\n" not in text and not text.startswith("\n"), "no blank lines"
        return resp.status, resp.headers["Content-Type"], [
            msgspec.json.decode(line) for line in text.splitlines()]


MakeBed = Callable[..., Awaitable[Bed]]


@pytest.fixture
def make_bed(aiohttp_client: Any, aiohttp_server: Any) -> MakeBed:
    async def build(script: FakeScript | None = None, config: dict[str, Any] | None = None,
                    **model: Any) -> Bed:
        script = script or FakeScript(served_names=["fake"])
        upstream_app = make_app(script)
        upstream = await aiohttp_server(upstream_app)
        spec = {"name": "fake", "upstream": str(upstream.make_url("/v1")), **model}
        extra_models = spec.pop("extra_models", ())
        cfg = Config(models=(ModelConfig(**spec), *extra_models), **(config or {}))
        gateway = make_gateway(Services.for_config(cfg))
        client = await aiohttp_client(gateway, server_kwargs={"handler_cancellation": True})
        return Bed(client, script, upstream_app[FAKE_STATE], upstream)

    return build
