"""The `vllama` command as a user runs it: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec

from ..conftest import REPO_ROOT, free_port

VLLAMA = [sys.executable, "-m", "vllama"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    full_env.update(env or {})
    return subprocess.run([*VLLAMA, *args], capture_output=True, text=True, timeout=60,
                          env=full_env, cwd=REPO_ROOT, check=False)


def test_config_json_reports_env_source() -> None:
    proc = run("config", "--json", env={"VLLAMA_PORT": "12345"})
    assert proc.returncode == 0, proc.stderr
    doc = msgspec.json.decode(proc.stdout)
    assert doc["port"] == {"value": 12345, "source": "env", "origin": "VLLAMA_PORT"}


def test_bad_config_is_one_line_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("colour = 'blue'\n")
    proc = run("config", "--config", str(path))
    assert proc.returncode == 78
    assert proc.stderr.count("\n") == 1
    assert "unknown key 'colour'" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("serve", env={"VLLAMA_PORT": "eighty"})
    assert proc.returncode == 78
    assert proc.stderr.strip() == ("vllama: config error: port = 'eighty' (from VLLAMA_PORT) is "
                                   "invalid: expected an integer >= 1")


def test_versions() -> None:
    from vllama import __version__

    assert run("--version").stdout.strip() == f"vllama {__version__}"
    assert run("version").stdout.strip() == f"vllama {__version__}"
    assert msgspec.json.decode(run("version", "--json").stdout) == {"version": __version__}


def test_example_config() -> None:
    proc = run("config", "--example")
    assert proc.returncode == 0
    assert "#port = 11434" in proc.stdout


def test_serve_answers_and_stops_on_sigterm_and_sigint() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
        proc = subprocess.Popen([*VLLAMA, "serve", "--port", str(port), "--log-format", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=REPO_ROOT)
        try:
            body = _get_when_up(f"http://127.0.0.1:{port}/", proc)
            assert body == b"Ollama is running"
            proc.send_signal(sig)
            assert proc.wait(timeout=20) == 0
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            lines = [msgspec.json.decode(line) for line in stderr.splitlines() if line]
            assert any(line["msg"].startswith("listening on") for line in lines)
            assert any(line["msg"] == "shutting down" for line in lines)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


def _get_when_up(url: str, proc: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "vllama serve exited early"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                data: bytes = resp.read()
                return data
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_removed_engine_flag_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[models]]\nname = "m"\nsource = "/models/m"\n'
                   'vllm_args = ["--disable-log-requests"]\n')
    proc = run("serve", "--config", str(cfg), "--port", "1")
    assert proc.returncode == 78
    assert "--disable-log-requests" in proc.stderr and "Traceback" not in proc.stderr
