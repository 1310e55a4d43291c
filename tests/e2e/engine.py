"""Start, wait for and stop a real `vllm serve` child; shared by every tier that needs one.

Blocking (subprocess + urllib) on purpose: the fixtures using it are session-scoped and sync,
so an engine outlives any one test's event loop.

vLLM's API server spawns EngineCore and Worker processes in its own process group, and a
SIGKILL of the server alone leaves them orphaned (still holding ~1.2 GB). So the engine is
started in a new session and always signalled as a group, and `stop_engine` reports any
process of the group that outlives the stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port

READY_TIMEOUT = 300.0  # measured 40-65 s on 2 cores; generous because other workers share them
STOP_TIMEOUT = 15.0

# Offline and quiet: a local model dir never needs the hub, and tests must not phone home.
ENGINE_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

# The tested, crash-free CPU flag set: float32 (bf16 hits an AMX SIGILL on short prompts),
# eager (torch.compile doubles start-up), and a small explicit KV cache (the default memory
# fraction does not fit beside other processes).
CPU_ARGS: tuple[str, ...] = (
    "--dtype", "float32",
    "--enforce-eager",
    "--max-model-len", "2048",
    "--kv-cache-memory-bytes", "64M",
)


@dataclass
class VllmEngine:
    """One running `vllm serve` child."""

    process: subprocess.Popen[bytes]
    base_url: str  # http://127.0.0.1:PORT (no /v1)
    model: str  # the served model name
    port: int
    log_path: Path
    argv: list[str]
    started_at: float = field(default_factory=time.monotonic)
    ready_after: float | None = None  # seconds from launch to /health 200

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session=True makes the child its group leader

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


def serve_argv(
    vllm_bin: str | Path,
    model_dir: str | Path,
    *,
    port: int,
    served_name: str = "tiny",
    extra_args: Sequence[str] = (),
) -> list[str]:
    # Absolute paths: the child runs in its own working directory.
    exe = str(vllm_bin)
    if os.sep in exe:
        exe = str(Path(exe).absolute())
    return [
        exe, "serve", str(Path(model_dir).absolute()),
        "--served-model-name", served_name,
        *CPU_ARGS,
        "--host", "127.0.0.1", "--port", str(port),
        *extra_args,
    ]


def start_engine(
    vllm_bin: str | Path,
    model_dir: str | Path,
    *,
    workdir: Path,
    served_name: str = "tiny",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_name: str = "vllm.log",
    port: int | None = None,
) -> VllmEngine:
    """Launch `vllm serve` in its own session, output to workdir/log_name. Does not wait.
    `port`: a given one (an engine started again where it was), else a free one.

    TMPDIR is workdir: vLLM leaves a gloo rendezvous file and its ZMQ IPC sockets in the temp
    dir on every launch and never removes them."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = serve_argv(vllm_bin, model_dir, port=port, served_name=served_name,
                      extra_args=extra_args)
    child_env = {**os.environ, **ENGINE_ENV, "TMPDIR": str(workdir), **(env or {})}
    log_path = workdir / log_name
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=workdir,
            start_new_session=True,
        )
    return VllmEngine(
        process=process,
        base_url=f"http://127.0.0.1:{port}",
        model=served_name,
        port=port,
        log_path=log_path,
        argv=argv,
    )


class EngineStartError(RuntimeError):
    pass


def wait_ready(engine: VllmEngine, timeout: float = READY_TIMEOUT, poll: float = 1.0) -> float:
    """Poll /health until 200; return seconds since launch. Raises EngineStartError (with the
    log's tail) if the child exits or the timeout passes."""
    deadline = engine.started_at + timeout
    while True:
        rc = engine.process.poll()
        if rc is not None:
            raise EngineStartError(
                f"vllm exited with rc {rc} before becoming ready; log tail:\n{engine.log_tail()}"
            )
        if health_ok(engine.base_url):
            engine.ready_after = time.monotonic() - engine.started_at
            return engine.ready_after
        if time.monotonic() > deadline:
            raise EngineStartError(
                f"vllm not ready after {timeout:.0f} s; log tail:\n{engine.log_tail()}"
            )
        time.sleep(poll)


def health_ok(base_url: str) -> bool:
    """GET base_url/health answers 200 (one try, 5 s bound)."""
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False  # not listening yet (vLLM binds only once loaded)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group `pgid`, read from /proc."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_engine(engine: VllmEngine, timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM the group, SIGKILL it after `timeout`; reap the child. Returns the pids that
    were still alive in the group after the SIGTERM grace period (empty = clean stop)."""
    _killpg(engine.pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    survivors = group_members(engine.pgid)
    while time.monotonic() < deadline:
        engine.process.poll()  # reap the leader so it does not count as alive
        survivors = group_members(engine.pgid)
        if not survivors:
            break
        time.sleep(0.2)
    if survivors:
        _killpg(engine.pgid, signal.SIGKILL)
    try:
        engine.process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    return survivors


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])
