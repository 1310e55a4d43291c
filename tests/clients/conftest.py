"""A real `vllama serve` process in front of fake vLLM processes, for client conformance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.served import workers_args


@dataclass
class Daemon:
    url: str
    port: int
    log: Path


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    try:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                start_new_session=True, env=env)
    finally:
        handle.close()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("daemon")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {}
        # Like vLLM, the fake answers tools with a 400 unless it runs with a tool parser.
        tools = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
        for name, extra in (("fake", tools), ("fake-embed", ["--fake-runner", "pooling"])):
            port = ports[name] = free_port()
            log = tmp / f"{name}.log"
            procs.append(spawn([sys.executable, "-m", "tests.fake_vllm", "serve", name,
                                "--port", str(port), "--served-model-name", name, *extra], log))
            _wait_http(f"http://127.0.0.1:{port}/health", procs[-1], log)
        cfg = tmp / "config.toml"
        cfg.write_text(
            f'[[models]]\nname = "fake"\nupstream = "http://127.0.0.1:{ports["fake"]}/v1"\n'
            'capabilities = ["completion", "tools"]\n\n'
            f'[[models]]\nname = "fake-embed"\n'
            f'upstream = "http://127.0.0.1:{ports["fake-embed"]}/v1"\n'
            'capabilities = ["embedding"]\n')
        gport = free_port()
        log = tmp / "vllama.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
        procs.append(spawn([sys.executable, "-m", "vllama", "serve", "--config", str(cfg),
                            "--port", str(gport), *workers_args()], log, env))
        _wait_http(f"http://127.0.0.1:{gport}/api/version", procs[-1], log)
        yield Daemon(url=f"http://127.0.0.1:{gport}", port=gport, log=log)
    finally:
        for proc in reversed(procs):
            _stop(proc)
