"""A pytest plugin that starts one real `vllama serve` for the ecosystem clients (the OpenAI
SDK, LlamaIndex, Open WebUI): the `real_daemon` fixture (session scope; what it serves is
described in tests/clients/real_daemon.py, the handles tests import).

Test modules name it in `pytest_plugins`, so pytest registers it once and every tier of a
session shares the one daemon and its engines (each engine start costs 40-90 s on two cores).
Nothing may import this module (pytest must import it first to rewrite its asserts); listing
it in `pytest_plugins` of tests/conftest.py would work the same way.

Missing vLLM engine: skip, or fail under CI=true / VLLAMA_REQUIRE_TIERS=1 (`vllm_bin`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fake_hf_hub as fh
from tests.clients.conftest import _stop, spawn
from tests.clients.real_daemon import (
    API_KEY,
    CHAT_MODEL,
    EMBED_MODEL,
    NUM_PREDICT,
    PULL_REPO,
    RealDaemon,
    ThreadedApp,
)
from tests.conftest import free_port
from tests.e2e.engine import CPU_ARGS, group_members
from tests.e2e.fixtures import EMBED_ARGS, tiny_model_dir, vllm_bin
from tests.models.conftest import big_files
from tests.served import workers_args

__all__ = ["real_daemon", "tiny_model_dir", "vllm_bin"]

READY_TIMEOUT = 900.0  # two engines load side by side: 40-90 s each alone on two cores
STOP_TIMEOUT = 5  # vllama's grace per engine before SIGKILL: inside _stop's 15 s for vllama
PULL_CHUNK_DELAY = 0.05  # seconds between 64 KiB chunks: a 24 MiB file takes ~20 s


# Tool calling needs no flags here: vLLM answers 400 to a chat carrying tools without a tool
# parser, and Open WebUI sends its built-in tools with every chat, but the tiny model's template
# renders tools hermes-style (<tool_call> JSON), so vllama adds the hermes parser itself.
# Open WebUI's ~40 built-in tool schemas render to more than the tiny model's 2048 positions.
# It uses RoPE (no learned positions), so a longer context only needs its config overridden;
# the 64 MiB KV cache holds 64Ki tokens of it (1 KiB per token).
LONG_CONTEXT = ("--max-model-len", "32768",
                "--hf-overrides", json.dumps({"max_position_embeddings": 32768}))


def _toml_models(model_dir: Path) -> str:
    chat_args = [*CPU_ARGS, *LONG_CONTEXT]
    embed_args = [*CPU_ARGS, *EMBED_ARGS]
    return (
        f'\n[[models]]\nname = "{CHAT_MODEL}"\nsource = {json.dumps(str(model_dir))}\n'
        f"vllm_args = {json.dumps(chat_args)}\n"
        # Greedy by default too: the same prompt gets the same reply on every run.
        f"parameters = {{ num_predict = {NUM_PREDICT}, temperature = 0 }}\n"
        f'\n[[models]]\nname = "{EMBED_MODEL}"\nsource = {json.dumps(str(model_dir))}\n'
        f"vllm_args = {json.dumps(embed_args)}\n"
    )


def _wait_ready(daemon: RealDaemon, proc: Any) -> None:
    """Until /health says ready; fails at once when the daemon exits or an engine fails."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllama serve exited:\n{daemon.log.read_text()[-4000:]}", pytrace=False)
        try:
            status, body = daemon.get("/health", timeout=5)
        except OSError:
            status, body = 0, b""  # not listening yet
        if status == 200:
            return
        if body and any(e.get("state") == "failed" for e in json.loads(body)["engines"]):
            pytest.fail(f"an engine failed: {body!r}\n{daemon.log.read_text()[-4000:]}",
                        pytrace=False)
        time.sleep(1)
    pytest.fail(f"not ready after {READY_TIMEOUT:.0f} s:\n{daemon.log.read_text()[-4000:]}",
                pytrace=False)


@pytest.fixture(scope="session")
def real_daemon(vllm_bin: Path, tiny_model_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealDaemon]:
    tmp = tmp_path_factory.mktemp("real-daemon")
    hub_app = fh.make_app([fh.HubRepo(PULL_REPO, big_files(tiny_model_dir))],
                          fh.HubScript(chunk_delay=PULL_CHUNK_DELAY))
    with ThreadedApp(hub_app) as hub:
        cfg = tmp / "config.toml"
        cfg.write_text(f"vllm_command = {json.dumps(str(vllm_bin))}\n"
                       f'api_key = "{API_KEY}"\nstartup_timeout = {READY_TIMEOUT}\n'
                       f"stop_timeout = {STOP_TIMEOUT}\n"
                       + _toml_models(tiny_model_dir))
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VLLAMA_", "OLLAMA_", "HF_"))}
        env.update(
            HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf"), STATE_DIRECTORY=str(tmp / "state"),
            # vLLM leaves a rendezvous file and IPC sockets in the temp dir at every start.
            TMPDIR=str(tmp), VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        log = tmp / "vllama.log"
        proc = spawn([sys.executable, "-m", "vllama", "serve", "--config", str(cfg),
                      "--port", str(port), *workers_args()], log, env)
        daemon = RealDaemon(url=f"http://127.0.0.1:{port}", log=log, api_key=API_KEY,
                            hub=hub_app[fh.HUB_STATE])
        engine_groups: list[int] = []
        try:
            _wait_ready(daemon, proc)
            engine_groups = [daemon.engine(m)["pid"] for m in (CHAT_MODEL, EMBED_MODEL)]
            yield daemon
        finally:
            _stop(proc)  # SIGTERM to vllama's group; its engines run in groups of their own
        leftovers = {pgid: group_members(pgid) for pgid in engine_groups}
        assert not any(leftovers.values()), f"engine processes outlived vllama: {leftovers}"

