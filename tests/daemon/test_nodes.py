"""Several vllama nodes behind a load balancer: two real `vllama serve` daemons (fake vLLM
child engines) sharing one model cache and nothing else, and a minimal load balancer (this
test) that sends traffic only to nodes whose /health answers 200, as an LB readiness probe
does. A reload with unchanged models is invisible; one that restarts an engine takes the node
out of rotation (503) until it serves again, and the other node carries the traffic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.served import FAKE, Served, serve_notified
from tests.tinymodel import generate

pytestmark = pytest.mark.timeout(180)


def node_config(path: Path, cache: Path, state: Path, *, delay: str = "1") -> None:
    path.write_text(
        f'vllm_command = "{FAKE}"\nhealth_poll_interval = 0.2\nstop_timeout = 5\n'
        f'models_dir = "{cache}"\nstate_dir = "{state}"\n\n'
        '[[models]]\nname = "tiny"\nsource = "/models/tiny"\n'
        f'vllm_args = ["--fake-startup-delay", "{delay}", "--fake-tokens", "150", '
        '"--fake-token-delay", "0.01"]\n')


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Served]]:
    cache = tmp_path / "shared-cache"  # HF_HOME of both nodes: the one thing they share
    snapshot = cache / "hub" / "models--org--shared" / "snapshots" / "abc"
    generate(snapshot)
    (cache / "hub" / "models--org--shared" / "refs").mkdir()
    (cache / "hub" / "models--org--shared" / "refs" / "main").write_text("abc")
    with contextlib.ExitStack() as stack:
        served = []
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            node_config(home / "config.toml", cache, home / "state")
            served.append(stack.enter_context(serve_notified(home / "config.toml", home)))
        for node in served:
            node.wait_for("READY=1")
        yield served


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, msgspec.json.decode(await resp.read())


async def _chat(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}]}
    async with session.post(url + "/api/chat", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return [msgspec.json.decode(line) async for line in resp.content]


def _drain(node: Served) -> None:
    """Read what queued on the notify socket (the kernel keeps only a few datagrams: unread
    watchdog pings would crowd out RELOADING=1 and READY=1), then forget it."""
    node.datagrams()
    node.messages.clear()


class Balancer:
    """Round-robin over the nodes whose readiness probe (/health) last answered 200."""

    def __init__(self, session: aiohttp.ClientSession, nodes: list[Served]) -> None:
        self.session = session
        self.nodes = nodes
        self.ready = {n.url: True for n in nodes}
        self.turn = itertools.count()
        self.seen_out: set[str] = set()

    async def probe(self) -> None:
        for node in self.nodes:
            status, _ = await _get(self.session, node.url + "/health")
            self.ready[node.url] = status == 200
            if status != 200:
                self.seen_out.add(node.url)

    async def chat(self) -> str:
        await self.probe()
        ready = [u for u, ok in self.ready.items() if ok]
        assert ready, "no node ready"
        url = ready[next(self.turn) % len(ready)]
        lines = await _chat(self.session, url)
        assert lines[-1]["done"] is True, lines[-1]
        return url


async def _scenario(nodes: list[Served]) -> None:
    a, b = nodes
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        lb = Balancer(session, nodes)
        served = Counter([await lb.chat() for _ in range(4)])
        assert served == Counter({a.url: 2, b.url: 2})

        # Shared: the model cache. Both list what is in it.
        for node in nodes:
            _, tags = await _get(session, node.url + "/api/tags")
            assert "org/shared:latest" in {m["name"] for m in tags["models"]}
        # Not shared: each node's own state (an alias made on one is not on the other).
        async with session.post(a.url + "/api/copy",
                                json={"source": "tiny", "destination": "mine"}) as resp:
            assert resp.status == 200
        names = {}
        for node in nodes:
            _, tags = await _get(session, node.url + "/api/tags")
            names[node.url] = {m["name"] for m in tags["models"]}
        assert "mine:latest" in names[a.url] and "mine:latest" not in names[b.url]

        # A reload that changes nothing the engines run with: a stream in flight finishes,
        # /health never leaves 200.
        stream = asyncio.ensure_future(_chat(session, a.url))
        await asyncio.sleep(0.5)
        _drain(a)
        a.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(a.wait_for, "READY=1")
        assert (await _get(session, a.url + "/health"))[0] == 200
        assert (await stream)[-1]["done"] is True

        # A reload that restarts the engine: the node answers 503 until it serves again;
        # the balancer sends everything to the other node meanwhile, and nothing fails.
        node_config(a.config, a.config.parent.parent / "shared-cache",
                    a.config.parent / "state", delay="2")
        _drain(a)
        a.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(a.wait_for, "RELOADING=1")
        during: Counter[str] = Counter()
        async with asyncio.timeout(60):
            while a.url not in lb.seen_out or not lb.ready[a.url]:
                during[await lb.chat()] += 1
        assert a.url in lb.seen_out  # it was out of rotation...
        assert during[b.url] > 0  # ...while the other node carried the traffic
        assert {await lb.chat() for _ in range(4)} == {a.url, b.url}  # and it is back


def test_two_nodes_behind_a_load_balancer(nodes: list[Served]) -> None:
    asyncio.run(_scenario(nodes))
