"""Regression tests of issue 12 items 3 and 13 on `vllama serve` as a real process with the fake
vLLM as its engine: the gateway's own key and systemd's credentials never reach the engine's
environment; a SIGHUP during a reload is queued, not dropped; a SIGHUP as soon as the gateway
listens is a reload, not a death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.served import workers_args

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FAKE = f"{sys.executable} -m tests.fake_vllm"
GATEWAY_KEY = "gateway-key-for-clients-only"


def config_text(max_model_len: int) -> str:
    return (f'vllm_command = "{FAKE}"\nhealth_poll_interval = 0.1\nstop_timeout = 5\n\n'
            '[[models]]\nname = "tiny"\nsource = "/models/tiny"\n'
            f'vllm_args = ["--max-model-len", "{max_model_len}", "--fake-startup-delay", "0.5"]\n')


class Daemon:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.config = tmp / "config.toml"
        self.config.write_text(config_text(512))
        self.port = free_port()
        self.log = tmp / "vllama.log"
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("VLLAMA_", "OLLAMA_", "FAKE_VLLM_"))}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vllama", "serve", "--config", str(self.config),
                 "--port", str(self.port), *workers_args()], stdout=out, stderr=subprocess.STDOUT,
                env={**base, **env}, cwd=REPO_ROOT, start_new_session=True)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10,
                                 headers={"Authorization": f"Bearer {GATEWAY_KEY}"})

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def until(self, check: Any, within: float = 30.0) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the daemon died:\n{self.tail()}"
            try:
                result = check()
            except httpx.HTTPError:
                result = None
            if result:
                return result
            time.sleep(0.05)
        raise AssertionError(f"timed out:\n{self.tail()}")

    def engine(self) -> dict[str, Any] | None:
        resp = self.http.get("/health")
        if resp.status_code != 200:
            return None
        engines: list[dict[str, Any]] = resp.json()["engines"]
        return engines[0] if engines and engines[0]["state"] == "ready" else None

    def fake_info(self) -> dict[str, Any]:
        engine = self.until(self.engine)
        info: dict[str, Any] = httpx.get(f"http://127.0.0.1:{engine['port']}/fake/info",
                                         timeout=10).json()
        return info

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    creds = tmp_path / "credentials"
    creds.mkdir()
    running = Daemon(tmp_path, {"VLLAMA_API_KEY": GATEWAY_KEY,
                                "CREDENTIALS_DIRECTORY": str(creds)})
    try:
        yield running
    finally:
        running.stop()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_the_engine_gets_its_own_key_and_nothing_of_the_gateways(daemon: Daemon) -> None:
    engine = daemon.until(daemon.engine)
    env = environ_of(engine["pid"])
    assert "VLLAMA_API_KEY" not in env and GATEWAY_KEY not in env.values()
    assert "CREDENTIALS_DIRECTORY" not in env
    assert not [k for k in env if k.startswith("VLLAMA_")]
    assert env["VLLM_API_KEY"] and env["VLLM_API_KEY"] != GATEWAY_KEY  # its private key
    assert daemon.fake_info()["has_vllama_api_key"] is False


def test_a_sighup_during_a_reload_is_queued(daemon: Daemon) -> None:
    assert daemon.fake_info()["max_model_len"] == 512
    daemon.config.write_text(config_text(1024))
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(0.2)  # the first reload is under way: it restarts the engine
    daemon.config.write_text(config_text(1536))
    daemon.proc.send_signal(signal.SIGHUP)
    # No third SIGHUP: the second edit is applied once the first reload is done.
    daemon.until(lambda: daemon.engine() and daemon.fake_info()["max_model_len"] == 1536)


def test_a_sighup_as_soon_as_it_listens_is_a_reload(tmp_path: Path) -> None:
    running = Daemon(tmp_path, {"VLLAMA_API_KEY": GATEWAY_KEY})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the first moment the gateway accepts
            assert running.proc.poll() is None, running.tail()
            try:
                with httpx.Client(timeout=1) as probe:
                    probe.get(f"http://127.0.0.1:{running.port}/health/live")
                break
            except httpx.HTTPError:
                time.sleep(0.01)
        running.proc.send_signal(signal.SIGHUP)
        running.until(running.engine)  # alive, and it went on to load its model
        assert running.proc.poll() is None
    finally:
        running.stop()
