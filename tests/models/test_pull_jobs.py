"""Pulls that must not starve the daemon (issue 12 item 9): one download per repo however many
clients ask, a pull that lives as long as someone waits for it, a hub that never answers
bounded by timeouts, and pull threads apart from the ones the rest of the daemon shares."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from pathlib import Path

import pytest

from tests import fake_hf_hub as fh
from tests.models.conftest import Hub, pull_all
from vllama.errors import VllamaError
from vllama.models.cache import repo_folder
from vllama.models.pulls import PullPool, Pulls
from vllama.models.store import ModelStore

pytestmark = pytest.mark.timeout(120)


def slow(hub: Hub) -> None:
    hub.script.chunk_size = 256 * 1024
    hub.script.chunk_delay = 0.02


async def test_concurrent_pulls_of_one_repo_download_once(store: ModelStore, hub: Hub) -> None:
    slow(hub)
    first, second = await asyncio.gather(pull_all(store, "tiny/big"), pull_all(store, "tiny/big"))
    assert first[-1] == second[-1] == {"status": "success"}
    assert second[0] == {"status": "pulling manifest"}
    big = hub.app[fh.HUB_REPOS]["tiny/big"]
    size = len(big.files["model.safetensors"])
    assert hub.state.bytes_served["model.safetensors"] == size  # one download, two clients
    assert [r for r in hub.state.requests if r[1].startswith("/api/models/")] == [
        ("GET", "/api/models/tiny/big/revision/main")]


async def test_every_name_a_shared_pull_was_asked_for_lists(store: ModelStore, hub: Hub
                                                             ) -> None:
    slow(hub)
    await asyncio.gather(pull_all(store, "tiny"), pull_all(store, "tiny/llama"))  # an alias
    marker = json.loads(next((store.cache / repo_folder("tiny/llama") / ".vllama")
                             .glob("*.complete")).read_text())
    assert sorted(marker["names"]) == ["tiny/llama:latest", "tiny:latest"]
    assert {"tiny:latest", "tiny/llama:latest"} <= {m.name for m in store.list_models()}


async def test_a_pull_goes_on_while_another_client_waits_for_it(store: ModelStore,
                                                                hub: Hub) -> None:
    slow(hub)
    leaving = store.pull("tiny/big")
    async for progress in leaving:
        if progress.get("digest"):
            break
    staying = asyncio.ensure_future(pull_all(store, "tiny/big"))
    await asyncio.sleep(0.2)  # it joined the running pull
    await leaving.aclose()  # one client goes away
    assert (await staying)[-1] == {"status": "success"}
    assert [m.name for m in store.list_models()] == ["tiny/big:latest"]


async def test_the_last_client_leaving_stops_the_download(store: ModelStore, hub: Hub) -> None:
    slow(hub)
    pull = store.pull("tiny/big")
    async for progress in pull:
        if progress.get("digest") and progress.get("completed"):
            break
    await pull.aclose()
    served = hub.state.bytes_served.get("model.safetensors", 0)
    await asyncio.sleep(0.5)
    assert hub.state.bytes_served.get("model.safetensors", 0) - served < 512 * 1024
    assert store.pulls.running == []
    assert store.list_models() == []


async def test_a_hub_that_never_answers_fails_the_pull_in_time(tmp_path: Path, hub: Hub
                                                               ) -> None:
    hub.script.hang = True
    store = ModelStore(tmp_path / "hub", tmp_path / "state", endpoint=hub.url, hub_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(VllamaError) as info:
        await pull_all(store, "tiny/llama")
    assert time.monotonic() - started < 30  # the metadata call is bounded (was: forever)
    assert info.value.status == 502 and "tiny/llama" in info.value.message
    assert hub.state.hung >= 1 and store.list_models() == []


async def test_hung_pulls_leave_the_shared_threads_alone(tmp_path: Path, hub: Hub) -> None:
    """Six pulls on a hub that never answers, with asyncio's default executor as small as
    those six: listing models (and everything else run on that executor) still answers."""
    hub.script.hang = True
    loop = asyncio.get_running_loop()
    shared = concurrent.futures.ThreadPoolExecutor(max_workers=6)
    loop.set_default_executor(shared)
    pulls = Pulls(PullPool(size=4))
    stores = [ModelStore(tmp_path / "hub", tmp_path / "state", endpoint=hub.url,
                         hub_timeout=60.0, pulls=pulls) for _ in range(6)]
    names = ["tiny/llama", "tiny/llama-sharded", "tiny/big", "gated/llama", "tiny/llama",
             "tiny/big"]
    hung = [asyncio.ensure_future(pull_all(s, n)) for s, n in zip(stores, names, strict=True)]
    try:
        async with asyncio.timeout(10):
            while hub.state.hung < 4:  # noqa: ASYNC110 - the pulls reach the hub
                await asyncio.sleep(0.05)
            # Pull threads are bounded by their own pool: four, held by the hung hub.
            assert hub.state.hung == 4 and len(pulls.running) == 4
            for _ in range(12):
                assert await asyncio.to_thread(stores[0].list_models) == []
        await pulls.close()  # shut-down: cancels all, waits for none
        results = await asyncio.gather(*hung, return_exceptions=True)
        assert all(isinstance(r, VllamaError) for r in results)
    finally:
        hub.script.hang = False
        for task in hung:
            task.cancel()
        shared.shutdown(wait=False, cancel_futures=True)
