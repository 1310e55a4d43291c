"""`vllama run`: one-shot and interactive chat in a real terminal (a pty), against a daemon."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT

from .conftest import Daemon

VLLAMA = [sys.executable, "-m", "vllama"]


def test_one_shot_prompt_and_stdin(daemon: Daemon) -> None:
    proc = subprocess.run([*VLLAMA, "run", "fake", "why", "is", "the", "sky", "blue",
                           "--host", daemon.url], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("tok0")
    piped = subprocess.run([*VLLAMA, "run", "fake", "--host", daemon.url], input="hello\n",
                           capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                           check=False)
    assert piped.returncode == 0 and "tok0" in piped.stdout


def test_unknown_model_and_no_daemon(daemon: Daemon) -> None:
    proc = subprocess.run([*VLLAMA, "run", "nope", "hi", "--host", daemon.url],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert proc.returncode != 0
    assert "model 'nope' not found" in proc.stderr
    proc = subprocess.run([*VLLAMA, "run", "fake", "hi", "--host", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 69
    assert "is `vllama serve` running?" in proc.stderr
    assert "Traceback" not in proc.stderr


def _read_until(fd: int, needle: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {needle!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_interactive_chat_in_a_terminal(daemon: Daemon) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a real terminal
        os.chdir(REPO_ROOT)
        os.execv(sys.executable, [*VLLAMA, "run", "fake", "--host", daemon.url])
    try:
        _read_until(fd, b">>> ")
        os.write(fd, b"/?\n")
        assert b"/bye" in _read_until(fd, b">>> ")
        os.write(fd, b"hello there\n")
        answer = _read_until(fd, b">>> ")
        assert b"tok0" in answer
        os.write(fd, b"/clear\n")
        assert b"Cleared" in _read_until(fd, b">>> ")
        os.write(fd, b"/bye\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
