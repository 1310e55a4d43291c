"""Install from a checkout, as the README says: a fresh `git clone` of this commit builds a
wheel, the wheel installs into an empty virtual environment, and the installed `vllama`
answers `--version` and serves: `vllama serve` with the fake engine (tests/fake_vllm.py) as
its real child, checked through /api/version, /health and a chat.

What the clone holds is what is committed: a file the build needs but git does not track
fails here. Dependencies come from the package index (or the systemd tier's wheel cache when
present); the `vllm` extra is left out, the fake engine stands in for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.clients.conftest import _wait_http, spawn
from tests.conftest import REPO_ROOT, free_port, skip_or_fail
from tests.systemd.conftest import WHEELS
from vllama import __version__
from vllama.config import Config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

STEP_TIMEOUT = 600  # a build or an install with a cold pip cache downloads ~30 MB


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                         timeout=STEP_TIMEOUT, check=False,
                         env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert out.returncode == 0, f"{argv} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def fresh_clone(dest: Path) -> Path:
    git = shutil.which("git")
    head = subprocess.run([git or "git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=False) if git else None
    if head is None or head.returncode != 0:
        skip_or_fail(f"{REPO_ROOT} is no git checkout (or git is missing)")
        raise AssertionError("unreachable")  # skip_or_fail raises
    run("git", "clone", "--quiet", REPO_ROOT, dest)
    run("git", "-C", dest, "checkout", "--quiet", "--detach", head.stdout.strip())
    return dest


def test_readme_starts_with_the_install_from_a_checkout() -> None:
    """The first command a reader meets is the one the test below proves (minus the `vllm`
    extra: the fake engine stands in for it)."""
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    assert commands[0] == "pip install '.[vllm]'"
    assert commands[1].startswith("vllama serve ")
    assert "pip install 'vllama[vllm]'" in first_block.splitlines()[0]  # the published form


def test_wheel_from_a_fresh_clone_installs_and_serves(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, clone)
    wheels = list(dist.glob("vllama-*.whl"))
    assert [w.name for w in wheels] == [f"vllama-{__version__}-py3-none-any.whl"]

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    # empty: nothing of the project's venv leaks in
    assert "aiohttp" not in run(venv / "bin" / "python", "-m", "pip", "list")
    find_links = ["--find-links", str(WHEELS)] if WHEELS.is_dir() else []
    run(venv / "bin" / "pip", "install", "-q", *find_links, wheels[0])
    installed = run(venv / "bin" / "python", "-c", "import vllama; print(vllama.__file__)",
                    cwd=tmp_path)
    assert installed.strip().startswith(str(venv)), installed

    version = run(venv / "bin" / "vllama", "--version", cwd=tmp_path)
    assert __version__ in version

    # The fake engine from the clone, run by the project's interpreter (it needs aiohttp,
    # which the fresh venv has too, but its tests package is not installed anywhere).
    fake = tmp_path / "vllm"
    fake.write_text(f'#!/bin/sh\nPYTHONPATH="{clone}" exec "{sys.executable}" '
                    '-m tests.fake_vllm "$@"\n')
    fake.chmod(0o755)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'vllm_command = "{fake}"\nhealth_poll_interval = 0.2\nstop_timeout = 5\n\n'
                   '[[models]]\nname = "tiny"\nsource = "/models/tiny"\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "vllama.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLLAMA_", "OLLAMA_")) and k != "PYTHONPATH"}
    proc = spawn([str(venv / "bin" / "vllama"), "serve", "--config", str(cfg),
                  "--port", str(port)], log, env)
    try:
        _wait_http(url + "/health", proc, log)  # 200 only once the engine answers
        with urllib.request.urlopen(url + "/api/version", timeout=30) as resp:
            assert json.loads(resp.read()) == {"version": Config().ollama_version,
                                               "vllama": __version__}
        body = {"model": "tiny", "stream": False,
                "messages": [{"role": "user", "content": "hi"}]}
        req = urllib.request.Request(url + "/api/chat", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            reply = json.loads(resp.read())
        assert reply["done"] is True and reply["message"]["content"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
