"""Recipe (a) of docs/scaling.md, on one machine: one model served by vLLM's native data
parallelism across two "nodes", the head's `vllm serve` supervised by a real `vllama serve`
(a local model whose vllm_args carry the data-parallel flags) and a headless rank started
outside vllama, as it would run on a second machine. vllama routes to the head; vLLM's own
balancer spreads requests over both ranks (its /metrics counts them per engine)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port
from tests.e2e.daemon import chat, serve
from tests.e2e.engine import CPU_ARGS, ENGINE_ENV, group_members
from tests.e2e.fixtures import tiny_model_dir, vllm_bin

pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(900)]

__all__ = ["tiny_model_dir", "vllm_bin"]


def _dp(rpc_port: int) -> list[str]:
    return ["--data-parallel-size", "2", "--data-parallel-size-local", "1",
            "--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", str(rpc_port)]


def _config(vllm: Path, model: Path, rpc_port: int) -> str:
    args = ", ".join(f'"{a}"' for a in (*CPU_ARGS, *_dp(rpc_port)))
    return (f'vllm_command = "{vllm}"\n\n[[models]]\nname = "tiny"\nsource = "{model}"\n'
            f"vllm_args = [{args}]\n")


async def test_data_parallel_head_under_vllama_and_a_headless_rank(
        vllm_bin: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    rpc = free_port()
    # vLLM binds IPC sockets in TMPDIR: a pytest tmp_path is over the 107-byte limit.
    worker_dir = Path(tempfile.mkdtemp(prefix="vllama-dp-"))
    argv = [str(vllm_bin), "serve", str(tiny_model_dir), "--served-model-name", "tiny",
            *CPU_ARGS, "--headless", *_dp(rpc), "--data-parallel-start-rank", "1"]
    with (worker_dir / "vllm.log").open("wb") as log:
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before any awaiting
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=worker_dir,
            env={**os.environ, **ENGINE_ENV, "TMPDIR": str(worker_dir)},
            start_new_session=True)
    try:
        async with serve(_config(vllm_bin, tiny_model_dir, rpc), tmp_path) as served, \
                aiohttp.ClientSession() as session:
            for _ in range(4):  # the first waits for the head, which waits for its rank
                status, body = await chat(session, served, "tiny")
                assert status == 200, (body, served.tail())
            async with session.get(served.url + "/health") as resp:
                doc = await resp.json()
            assert resp.status == 200, doc
            port = doc["engines"][0]["port"]
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                metrics = await resp.text()
            done = {}
            for engine, count in re.findall(
                    r'^vllm:request_success_total\{engine="(\d+)",finished_reason="length"'
                    r'[^}]*\} ([0-9.]+)$', metrics, re.M):
                done[engine] = float(count)
            # Both ranks served: the head's (engine 0) and the "second node's" (engine 1).
            assert done.get("0", 0) > 0 and done.get("1", 0) > 0, done
            assert sum(done.values()) >= 4
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        assert not group_members(worker.pid)
        shutil.rmtree(worker_dir, ignore_errors=True)
