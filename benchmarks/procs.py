"""Child processes of the benchmark run: started in their own session, logged to a file,
pinned to a CPU when asked, and always stopped as a group (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
PEER_VENV = REPO / "benchmarks" / ".venv-peer"
PEER_VERSION = "0.7.0"
# The wheel's modules import `src.*` but are installed at the top level of site-packages.
PEER_MODULES = ("_version.py", "config.py", "main.py", "models.py", "middleware", "routers",
                "translators", "utils")


def python() -> str:
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def raise_nofile() -> int:
    """Raise the open-files soft limit to the hard limit (1,000 streams need ~2,000 sockets
    in the gateway alone); children inherit it. Returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def pin_self(cpus: set[int] | None) -> None:
    """Pin this process (and the children it starts later) to `cpus`; None: all CPUs."""
    allowed = cpus if cpus is not None else set(range(os.cpu_count() or 1))
    os.sched_setaffinity(0, allowed)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident set size of the child itself (VmRSS, KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


def _stop(child: Child, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # whatever is left of the group (vLLM's EngineCore, uvicorn workers) goes too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=10)


@contextlib.contextmanager
def started(name: str, argv: Sequence[str], *, logdir: Path, cpu: int | None = None,
            env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Iterator[Child]:
    """Run `argv` for the duration of the block; `cpu` pins it with taskset."""
    full = (["taskset", "-c", str(cpu)] if cpu is not None else []) + list(argv)
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   cwd=cwd or REPO, start_new_session=True)
    child = Child(name, process, log)
    try:
        yield child
    finally:
        _stop(child)


def wait_http(child: Child, url: str, timeout: float) -> None:
    """Poll `url` until it answers 2xx; fail with the child's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n"
                               f"{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} not ready at {url} after {timeout:.0f} s:\n{child.tail()}")


def get_json(url: str, timeout: float = 5.0) -> object:
    import json
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def ensure_peer() -> Path:
    """The Python peer ollama-openai-proxy in its own venv (it installs top-level modules named
    config, main, models, utils), with the `src` package its code imports made of symlinks.
    Returns the venv's python."""
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q",
                        f"ollama-openai-proxy=={PEER_VERSION}"], check=True)
    [site] = (PEER_VENV / "lib").glob("python*/site-packages")
    src = site / "src"
    src.mkdir(exist_ok=True)
    (src / "__init__.py").touch()
    for module in PEER_MODULES:
        link = src / module
        if not link.exists():
            link.symlink_to(Path("..") / module)
    return py


def peer_argv(peer_py: Path, port: int) -> list[str]:
    """Its own entry point binds 0.0.0.0; the same app through uvicorn binds loopback only
    (log level info: its default, like vllama's)."""
    return [str(peer_py), "-m", "uvicorn", "src.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "info"]
