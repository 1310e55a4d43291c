"""Active probes against real loopback servers, one probe at a time (Fleet.probe): what each
answer means for the endpoint."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from tests.fake_vllm import FakeScript, fake_server
from tests.fleet.test_discovery_gateway import silent_server
from vllama.config import Config, ModelConfig, UpstreamRef
from vllama.fleet.fleet import SLOW_PROBES_DOWN, Fleet


@contextlib.asynccontextmanager
async def fleet_for(url: str) -> AsyncIterator[Fleet]:
    cfg = Config(upstream_probe_timeout=0.2)
    fleet = Fleet(cfg)
    fleet.group(ModelConfig(name="m", upstreams=(UpstreamRef(url),)))
    try:
        yield fleet
    finally:
        await fleet.close()


async def test_health_200_is_up_and_503_is_down_at_once() -> None:
    script = FakeScript(served_names=["m"])
    async with fake_server(script) as (url, _), fleet_for(url + "/v1") as fleet:
        (endpoint,) = fleet.endpoints.values()
        await fleet.probe(endpoint)
        assert (endpoint.up, endpoint.reason, endpoint.probe) == (True, "", "/health")
        script.healthy = False
        await fleet.probe(endpoint)
        assert (endpoint.up, endpoint.reason) == (False, "GET /health answered 503")


async def test_without_health_the_model_list_is_asked() -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    app = web.Application()  # an OpenAI server with no /health (a hosted API, a proxy)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with fleet_for(url) as fleet:
            (endpoint,) = fleet.endpoints.values()
            await fleet.probe(endpoint)
            assert (endpoint.up, endpoint.probe) == (True, "/models")
    finally:
        await runner.cleanup()


async def test_refused_is_down_at_once() -> None:
    async with fake_server(FakeScript()) as (url, _):
        pass  # closed: nothing listens there any more
    async with fleet_for(url + "/v1") as fleet:
        (endpoint,) = fleet.endpoints.values()
        await fleet.probe(endpoint)
        assert endpoint.up is False and endpoint.reason.startswith("unreachable:")


async def test_silence_is_down_only_when_it_lasts() -> None:
    async with silent_server() as url, fleet_for(url + "/v1") as fleet:
        (endpoint,) = fleet.endpoints.values()
        group = fleet.group(ModelConfig(name="m", upstreams=(UpstreamRef(url + "/v1"),)))
        assert group is not None and group.members[0].endpoint is endpoint
        for _ in range(SLOW_PROBES_DOWN - 1):
            await fleet.probe(endpoint)
        assert endpoint.up is None  # slow twice: not judged yet
        group.succeeded(group.members[0])  # ...and it answered a request meanwhile
        for _ in range(SLOW_PROBES_DOWN - 1):
            await fleet.probe(endpoint)
        assert endpoint.up is None
        await fleet.probe(endpoint)
        assert endpoint.up is False
        assert endpoint.reason == "no answer to 3 health probes within 0.2 s"
