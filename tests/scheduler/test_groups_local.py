"""A group that mixes this machine's engine (a real fake-vLLM child, through the scheduler's
lease) with a remote upstream: requests go to both; with the remote gone, to the local one;
an empty prompt loads the local engine."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.fake_vllm import FakeScript, fake_server
from tests.scheduler.conftest import WAIT, MakeBed
from vllama.config import Config, ModelConfig, UpstreamRef
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services
from vllama.models.store import ModelStore
from vllama.scheduler.state import SlotState

pytestmark = pytest.mark.timeout(120)

Client = TestClient[web.Request, web.Application]


async def _chat(client: Client, content: str) -> tuple[int, str]:
    resp = await client.post("/api/chat", data=msgspec.json.encode(
        {"model": "a", "messages": [{"role": "user", "content": content}], "stream": False}))
    await resp.read()
    return resp.status, resp.headers.get("X-Vllama-Upstream", "")


async def test_local_engine_and_remote_upstream_in_one_group(make_bed: MakeBed,
                                                              aiohttp_client: Any) -> None:
    bed = await make_bed("a")
    async with fake_server(FakeScript(served_names=["a"])) as (remote, _):
        local = bed.model("a")
        mixed = msgspec.structs.replace(local, upstreams=(UpstreamRef(remote + "/v1"),))
        cfg = msgspec.structs.replace(bed.config, models=(mixed,),
                                      upstream_routing="least_loaded",
                                      upstream_eject_initial=60.0)
        store = ModelStore(None, None, models=cfg.models, common_args=cfg.vllm_args)
        app = make_app(Services(config=cfg, store=store, scheduler=bed.scheduler,
                                supervisor=bed.supervisor))
        client: Client = await aiohttp_client(app)

        async with asyncio.timeout(WAIT):  # an empty prompt loads the local engine
            resp = await client.post("/api/generate", data=b'{"model": "a"}')
            assert resp.status == 200
        assert bed.scheduler.slot_state("a") is SlotState.LOADED
        served = Counter([await _chat(client, f"q{i}") for i in range(4)])
        assert served == Counter({(200, "local"): 2, (200, remote + "/v1"): 2})
        ps = (await (await client.get("/api/ps")).json())["models"]
        assert [(u["upstream"], u["state"]) for u in ps[0]["upstreams"]] == [
            ("local", "up"), (remote + "/v1", "up")]
    # The remote is gone: every request is served here, none fails.
    served = Counter([await _chat(client, f"r{i}") for i in range(4)])
    assert served == Counter({(200, "local"): 4})


def test_a_mixed_model_runs_its_local_engine() -> None:
    from vllama.daemon import engine_specs

    model = ModelConfig(name="a", source="/srv/tiny", upstreams=(UpstreamRef("http://r/v1"),))
    remote = ModelConfig(name="b", upstreams=(UpstreamRef("http://r/v1"),))
    specs = engine_specs(Config(models=(model, remote)), "key")
    assert [s.name for s in specs] == ["a"]
