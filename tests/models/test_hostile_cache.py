"""A cache that fights back (issue 12 items 15 and 17): a malformed model never breaks the
listing or show, a repo folder that is a symbolic link is refused cleanly, and a model an
engine serves is not deleted under it (`vllama serve` with the fake vLLM as its engine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests import fake_hf_hub as fh
from tests.conftest import REPO_ROOT, free_port
from tests.models.conftest import Client, Hub, pull_all
from vllama.models.cache import repo_folder
from vllama.models.store import ModelStore

pytestmark = pytest.mark.timeout(120)


async def test_a_malformed_model_still_lists_and_shows(client: Client, store: ModelStore,
                                                      hub: Hub, tiny_dir: Path) -> None:
    files = fh.model_files(tiny_dir)
    files["model.safetensors"] = fh.write_safetensors({
        "bad.weight": ({"dtype": "F32", "shape": ["x", 2]}, b"\0" * 8),
        "fine.weight": ({"dtype": "F32", "shape": [2]}, b"\0" * 8)})
    hub.app[fh.HUB_REPOS]["odd/shapes"] = fh.HubRepo("odd/shapes", files)
    await pull_all(store, "odd/shapes")
    await pull_all(store, "tiny/llama")

    resp = await client.get("/api/tags")
    assert resp.status == 200  # was a 500 for everyone
    names = {m["name"] for m in (await resp.json())["models"]}
    assert {"odd/shapes:latest", "tiny/llama:latest"} <= names  # the bad one too, still listed
    resp = await client.post("/api/show", json={"model": "odd/shapes"})
    assert resp.status == 200
    show = await resp.json()
    assert show["model_info"]["general.architecture"] == "llama"  # config.json still reads
    resp = await client.post("/api/show", json={"model": "tiny/llama"})
    assert resp.status == 200


async def test_a_symlinked_repo_folder_is_refused_not_followed(client: Client,
                                                               store: ModelStore,
                                                               tmp_path: Path) -> None:
    precious = tmp_path / "elsewhere"
    (precious / "snapshots" / "abc").mkdir(parents=True)
    (precious / "snapshots" / "abc" / "keep.txt").write_text("not vllama's")
    store.cache.mkdir(parents=True, exist_ok=True)
    (store.cache / repo_folder("evil/link")).symlink_to(precious, target_is_directory=True)

    resp = await client.delete("/api/delete", json={"model": "evil/link"})
    assert resp.status == 400  # was a 500 with a traceback
    assert "symbolic link" in (await resp.json())["error"]
    assert (precious / "snapshots" / "abc" / "keep.txt").read_text() == "not vllama's"
    assert (store.cache / repo_folder("evil/link")).is_symlink()


@contextlib.asynccontextmanager
async def serving(cache_root: Path, tmp: Path) -> AsyncIterator[str]:
    """`vllama serve` over this HF_HOME-style root, with the fake vLLM as its engine."""
    cfg = tmp / "config.toml"
    cfg.write_text(f'vllm_command = "{sys.executable} -m tests.fake_vllm"\n'
                   f'models_dir = "{cache_root}"\nstate_dir = "{tmp / "state"}"\n'
                   "health_poll_interval = 0.1\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLLAMA_", "OLLAMA_", "FAKE_VLLM_"))}
    log = tmp / "vllama.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, stopped in a thread
            [sys.executable, "-m", "vllama", "serve", "--config", str(cfg), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/api/version") as resp:
                        if resp.status == 200:
                            break
                assert proc.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


async def test_a_model_an_engine_serves_is_not_deleted_under_it(store: ModelStore,
                                                                tmp_path: Path) -> None:
    await pull_all(store, "tiny/llama")
    snapshot = store.find("tiny/llama")
    assert snapshot is not None and snapshot.path is not None
    async with serving(tmp_path, tmp_path) as url, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60)) as session:
        body = {"model": "tiny/llama", "prompt": "hi", "stream": False}
        async with session.post(url + "/api/generate", json=body) as resp:
            assert resp.status == 200, await resp.text()  # loaded on demand, now running
        async with session.delete(url + "/api/delete", json={"model": "tiny/llama"}) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        assert error == ("model 'tiny/llama:latest' is running: stop it first (vllama stop "
                         "tiny/llama:latest), then delete it")
        assert (snapshot.path / "model.safetensors").is_file()  # the weights are still there
        # Stopped (keep_alive 0 with no prompt: what `vllama stop` sends), it goes.
        stop = {"model": "tiny/llama", "keep_alive": 0}
        async with session.post(url + "/api/generate", json=stop) as resp:
            assert resp.status == 200
        async with asyncio.timeout(30):
            while True:
                async with session.get(url + "/api/ps") as resp:
                    if not (await resp.json())["models"]:
                        break
                await asyncio.sleep(0.1)
        async with session.delete(url + "/api/delete", json={"model": "tiny/llama"}) as resp:
            assert resp.status == 200
    assert not snapshot.path.exists()
