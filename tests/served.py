"""A real `vllama serve` as systemd runs it (a real NOTIFY_SOCKET and watchdog), in front of
the fake vLLM as real child engines: shared by the daemon and worker tiers.

With VLLAMA_TEST_WORKERS=N in the test environment every daemon runs N gateway workers, so
the same tests cover one process and several (CI runs them both ways)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT, free_port

FAKE = f"{sys.executable} -m tests.fake_vllm"


def workers_args() -> list[str]:
    """`--workers N` when the run asks for several gateway workers (VLLAMA_TEST_WORKERS)."""
    count = os.environ.get("VLLAMA_TEST_WORKERS", "")
    return ["--workers", count] if count else []


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    notify: socket.socket
    config: Path
    log: Path
    messages: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def datagrams(self, timeout: float = 0.2) -> list[str]:
        """Collect what arrives within ``timeout`` (the watchdog never stops talking)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.notify.settimeout(left)
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                break
        return self.messages

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            for msg in self.datagrams():
                if needle in msg:
                    return msg
        raise AssertionError(f"no datagram with {needle!r}: {self.messages}\n"
                             f"{self.log.read_text()[-3000:]}")


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, as systemd stops it; its whole process group SIGKILLed if it overstays."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def write_config(path: Path, *, extra_args: list[str], name: str = "tiny") -> None:
    args = ", ".join(f'"{a}"' for a in extra_args)
    path.write_text(
        f'vllm_command = "{FAKE}"\nrestart_backoff_initial = 0.2\nhealth_poll_interval = 0.2\n'
        f'stop_timeout = 5\n\n[[models]]\nname = "{name}"\nsource = "/models/{name}"\n'
        f"vllm_args = [{args}]\n")


@contextlib.contextmanager
def serve_notified(cfg: Path, tmp_path: Path, extra: Sequence[str] = (),
                   watchdog_usec: int = 2_000_000) -> Iterator[Served]:
    """`vllama serve --config CFG` with a notify socket, JSON logs in tmp_path/vllama.log."""
    sock_dir = tempfile.mkdtemp(prefix="vllama-notify-")
    sock_path = os.path.join(sock_dir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    port = free_port()
    log = tmp_path / "vllama.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLAMA_", "OLLAMA_"))}
    env.update(NOTIFY_SOCKET=sock_path, WATCHDOG_USEC=str(watchdog_usec), WATCHDOG_PID="")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vllama", "serve", "--config", str(cfg),
                                 "--port", str(port), "--log-format", "json", *workers_args(),
                                 *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                start_new_session=True)
    served = Served(proc, port, notify, cfg, log)
    try:
        yield served
    finally:
        stop_daemon(served.proc)  # (a test may have restarted the daemon)
        notify.close()
        os.unlink(sock_path)
        os.rmdir(sock_dir)


