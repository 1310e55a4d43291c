"""The fake vLLM as a child process, shaped like ``vllm serve`` from the supervisor's side:
the same argv, vLLM-looking log lines, the port bound only once "loaded", the real startup
failure texts and exit codes, SIGTERM/SIGINT -> rc 0 with its engine process reaped, and an
optional grandchild in the same process group (vLLM's EngineCore) that survives a SIGKILL of
the server, like the real one does.

Run: ``python -m tests.fake_vllm serve MODEL --host 127.0.0.1 --port P --served-model-name N
[other vllm flags, ignored] [--fake-* flags]``; every --fake-X flag falls back to the
environment variable FAKE_VLLM_X (upper case, dashes as underscores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from tests import fake_vllm as fake

T = TypeVar("T")

FAIL_KINDS = ("config", "nomem", "model", "crash")
# The orphan test needs the grandchild to outlive a SIGKILLed parent; this bounds how long a
# leaked one lingers if a test run dies before its cleanup.
ENGINE_LIFETIME_S = 600
_ENGINE_CODE = (
    "import signal, sys, time\n"
    "stubborn = sys.argv[2] == '1'\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN if stubborn else lambda *a: sys.exit(0))\n"
    "signal.signal(signal.SIGINT, lambda *a: sys.exit(0))\n"
    "time.sleep(float(sys.argv[1]))\n"
)


def _env(name: str, conv: Callable[[str], T], default: T) -> T:
    raw = os.environ.get(f"FAKE_VLLM_{name}")
    return conv(raw) if raw not in (None, "") else default


def _flag_env(name: str) -> bool:
    return os.environ.get(f"FAKE_VLLM_{name}", "").lower() in ("1", "true", "yes", "on")


def _human_int(text: str) -> int:
    """vLLM's human-readable ints: 2k = 2000, 2K = 2048, 1m = 10**6, 1M = 2**20."""
    scale = {"k": 1000, "K": 1024, "m": 10**6, "M": 2**20, "g": 10**9, "G": 2**30}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm serve", description="fake vLLM OpenAI server")
    p.add_argument("command", nargs="?", help="'serve' (optional)")
    p.add_argument("model_tag", nargs="?")
    p.add_argument("--model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--max-model-len", type=_human_int)
    p.add_argument("--api-key")
    p.add_argument("--runner", choices=("auto", "generate", "pooling"))
    p.add_argument("--enable-sleep-mode", action="store_true")
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--kv-cache-memory-bytes", type=_human_int)
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument("--tool-call-parser")
    p.add_argument("--reasoning-parser")
    f = p.add_argument
    f("--fake-startup-delay", type=float, default=_env("STARTUP_DELAY", float, 0.0))
    f("--fake-fail-at-start", choices=FAIL_KINDS, default=_env("FAIL_AT_START", str, None))
    f("--fake-hang-at-start", action="store_true", default=_flag_env("HANG_AT_START"))
    f("--fake-exit-after", type=float, default=_env("EXIT_AFTER", float, None))
    f("--fake-tokens", type=int, default=_env("TOKENS", int, 8))
    f("--fake-token-delay", type=float, default=_env("TOKEN_DELAY", float, 0.0))
    f("--fake-stall-after", type=int, default=_env("STALL_AFTER", int, None))
    f("--fake-drop-after", type=int, default=_env("DROP_AFTER", int, None))
    f("--fake-error-after", type=int, default=_env("ERROR_AFTER", int, None))
    f("--fake-spawn-child", action="store_true", default=_flag_env("SPAWN_CHILD"))
    # The spawned child ignores SIGTERM, like an EngineCore busy in a kernel: only SIGKILL ends it.
    f("--fake-child-ignores-term", action="store_true", default=_flag_env("CHILD_IGNORES_TERM"))
    # Once serving, write log lines to stdout as fast as the pipe takes them.
    f("--fake-flood", action="store_true", default=_flag_env("FLOOD"))
    f("--fake-reasoning", action="store_true", default=_flag_env("REASONING"))
    f("--fake-tool-call", action="store_true", default=_flag_env("TOOL_CALL"))
    f("--fake-embedding-dim", type=int, default=_env("EMBEDDING_DIM", int, 8))
    f("--fake-max-model-len", type=int, default=_env("MAX_MODEL_LEN", int, None))
    f("--fake-runner", choices=("generate", "pooling"), default=_env("RUNNER", str, None))
    return p


def script_from(opts: argparse.Namespace, model: str) -> fake.FakeScript:
    pooling = (opts.fake_runner or opts.runner) == "pooling"
    return fake.FakeScript(
        served_names=list(opts.served_model_name or [model]),
        model_path=model,
        max_model_len=opts.fake_max_model_len or opts.max_model_len or 2048,
        tokens=opts.fake_tokens,
        token_delay=opts.fake_token_delay,
        stall_after=opts.fake_stall_after,
        drop_after=opts.fake_drop_after,
        error_after=opts.fake_error_after,
        reasoning=opts.fake_reasoning,
        tool_call=opts.fake_tool_call,
        embedding_dim=opts.fake_embedding_dim,
        runner="pooling" if pooling else "generate",
        # vLLM reads its key from --api-key or VLLM_API_KEY (the supervisor uses the env).
        api_key=opts.api_key or os.environ.get("VLLM_API_KEY") or None,
        dev_mode=os.environ.get("VLLM_SERVER_DEV_MODE") == "1",
        sleep_mode=opts.enable_sleep_mode,
        auto_tools=opts.enable_auto_tool_choice and bool(opts.tool_call_parser),
        launch={"enable_auto_tool_choice": opts.enable_auto_tool_choice,
                "tool_call_parser": opts.tool_call_parser,
                "reasoning_parser": opts.reasoning_parser,
                "gpu_memory_utilization": opts.gpu_memory_utilization,
                "kv_cache_memory_bytes": opts.kv_cache_memory_bytes,
                "tensor_parallel_size": opts.tensor_parallel_size,
                "max_model_len": opts.max_model_len,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "has_vllama_api_key": "VLLAMA_API_KEY" in os.environ},
    )


def log(level: str, where: str, msg: str, proc: str = "APIServer", pid: int | None = None) -> None:
    """One vLLM log line: ``(APIServer pid=N) INFO 11-22 10:00:00 [file.py:12] message``."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"({proc} pid={pid or os.getpid()}) {level} {stamp} [{where}] {msg}", flush=True)


def _flood() -> None:
    line = f"(EngineCore_DP0 pid={os.getpid()}) INFO 01-01 00:00:00 [flood.py:1] {'x' * 60}\n"
    block = line * 1000
    with contextlib.suppress(OSError, ValueError):  # the reader went away
        while True:
            sys.stdout.write(block)
            sys.stdout.flush()


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class UvicornAccessLog(AbstractAccessLogger):
    """uvicorn's access line, which vLLM leaves on: ``INFO:  host:port - "GET / HTTP/1.1" 200``."""

    def log(self, request: Any, response: Any, time: float) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        who = f"{peer[0]}:{peer[1]}" if peer else "-"
        version = f"{request.version.major}.{request.version.minor}"
        line = f"{request.method} {request.path_qs} HTTP/{version}"
        print(f'INFO:     {who} - "{line}" {response.status} {response.reason}', flush=True)


class Server:
    """One fake ``vllm serve`` run: startup phases, serving, shutdown."""

    def __init__(self, opts: argparse.Namespace, model: str) -> None:
        self.opts, self.model = opts, model
        self.script = script_from(opts, model)
        self.stop = asyncio.Event()
        self.engine: subprocess.Popen[bytes] | None = None

    async def _pause(self, seconds: float) -> bool:
        """Sleep, but wake on SIGTERM/SIGINT; True when told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))
        return self.stop.is_set()

    def _spawn_engine(self) -> None:
        # No start_new_session: like vLLM's EngineCore it stays in the server's process group,
        # so only killing the group reaches it once the server itself is gone.
        self.engine = subprocess.Popen(
            [sys.executable, "-c", _ENGINE_CODE, str(ENGINE_LIFETIME_S),
             "1" if self.opts.fake_child_ignores_term else "0"], stdin=subprocess.DEVNULL
        )

    def _reap_engine(self) -> None:
        engine, self.engine = self.engine, None
        if engine is None:
            return
        engine.terminate()
        try:
            engine.wait(timeout=3)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait(timeout=3)

    def _engine_pid(self) -> int:
        return self.engine.pid if self.engine is not None else os.getpid()

    async def _load(self) -> int | None:
        """Log the loading phases over the startup delay; an exit code if startup fails or is
        interrupted, None once "loaded"."""
        delay, s, name = self.opts.fake_startup_delay, self.script, self.model
        log("INFO", "utils.py:286", f"non-default args: {{'model_tag': '{name}', "
            f"'host': '{self.opts.host}', 'port': {self.opts.port}}}")
        log("INFO", "api_server.py:1772", f"vLLM API server version {fake.VERSION}")
        log("INFO", "model.py:547", "Resolved architecture: LlamaForCausalLM")
        log("INFO", "model.py:1510", f"Using max model len {s.max_model_len}")
        if await self._pause(delay * 0.1):
            return self._interrupted()
        if self.opts.fake_spawn_child:
            self._spawn_engine()
        epid = self._engine_pid()
        log("INFO", "core.py:93", f"Initializing a V1 LLM engine (v{fake.VERSION}) with config: "
            f"model='{name}', served_model_name={s.served_names[0]}", "EngineCore", epid)
        if await self._pause(delay * 0.2):
            return self._interrupted()
        log("INFO", "gpu_model_runner.py:3340", f"Starting to load model {name}...",
            "EngineCore", epid)
        if await self._pause(delay * 0.3):
            return self._interrupted()
        log("INFO", "default_loader.py:502", f"Loading weights took {delay * 0.3:.2f} seconds",
            "EngineCore", epid)
        log("INFO", "gpu_model_runner.py:3420",
            f"Model loading took 0.0 GiB memory and {delay * 0.5:.2f} seconds", "EngineCore", epid)
        while self.opts.fake_hang_at_start:
            log("INFO", "utils.py:1045",
                "Waiting for 1 local, 0 remote core engine proc(s) to start.")
            if await self._pause(1.0):
                return self._interrupted()
        if await self._pause(delay * 0.4):
            return self._interrupted()
        kind = self.opts.fake_fail_at_start
        if kind is not None:
            return self._fail(kind)
        log("INFO", "kv_cache_utils.py:1290", "GPU KV cache size: 65,536 tokens",
            "EngineCore", epid)
        log("INFO", "core.py:275", "init engine (profile, create kv cache, warmup model) took "
            f"{delay * 0.4:.2f} seconds", "EngineCore", epid)
        return None

    def _interrupted(self) -> int:
        _stderr("KeyboardInterrupt: terminated")
        self._reap_engine()
        return 0

    def _fail(self, kind: str) -> int:
        """Die the way vLLM dies for this kind of startup failure (texts from vLLM 0.32)."""
        epid = self._engine_pid()
        self._reap_engine()
        if kind == "model":
            _stderr("Traceback (most recent call last):\n  ...\n"
                    "pydantic_core._pydantic_core.ValidationError: 1 validation error for "
                    "ModelConfig\n  Value error, Invalid repository ID or local directory "
                    f"specified: '{self.model}'.")
            return 1
        if kind == "nomem":
            root = ("ValueError: No available memory for the cache blocks. Try increasing "
                    "`gpu_memory_utilization` when initializing the engine (this flag also "
                    "controls CPU memory reservation on the CPU backend, despite its name). See "
                    "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more "
                    "details.")
        else:
            root = "RuntimeError: fake engine crash during initialization"
        log("ERROR", "core.py:1010", "EngineCore failed to start.", "EngineCore", epid)
        _stderr(f"Traceback (most recent call last):\n  ...\n{root}")
        _stderr("Traceback (most recent call last):\n  ...\nRuntimeError: Engine core "
                "initialization failed. See root cause above. Failed core proc(s): "
                "{'EngineCore': 1}")
        return 1

    async def _serve(self) -> int:
        app = fake.make_app(self.script)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log_class=UvicornAccessLog)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.opts.host, self.opts.port)
            try:
                await site.start()
            except OSError as exc:
                self._reap_engine()
                # asyncio's text: "error while attempting to bind on address (...): ..."
                _stderr(f"OSError: [Errno {exc.errno}] {exc.strerror}")
                return 1
            self._log_ready()
            if self.opts.fake_flood:
                threading.Thread(target=_flood, daemon=True).start()
            exit_after = self.opts.fake_exit_after
            if exit_after is None:
                stopped = await self._wait()
            else:
                stopped = await self._pause(exit_after)
            if stopped:
                log("INFO", "launcher.py:110", "Shutting down FastAPI HTTP server.")
                print("INFO:     Shutting down", flush=True)
            else:
                # vLLM exits 0 by itself once its engine died: the supervisor must not take
                # rc 0 for a requested stop.
                log("ERROR", "core.py:1120", fake.ENGINE_DEAD, "AsyncLLM")
                self.script.healthy = False
            app[fake.FAKE_STATE].abort_all()
        finally:
            await runner.cleanup()
            self._reap_engine()
        return 0

    async def _wait(self) -> bool:
        await self.stop.wait()
        return True

    def _log_ready(self) -> None:
        url = f"http://{self.opts.host}:{self.opts.port}"
        tasks = "['embed']" if self.script.runner == "pooling" else "['generate']"
        log("INFO", "api_server.py:1690", f"Supported tasks: {tasks}")
        log("INFO", "api_server.py:1845", f"Starting vLLM API server 0 on {url}")
        log("INFO", "launcher.py:186", "Available routes are:")
        for route in ("/health", "/v1/models", "/v1/chat/completions", "/v1/completions",
                      "/v1/embeddings", "/tokenize", "/metrics", "/version", "/ping"):
            log("INFO", "launcher.py:194", f"Route: {route}, Methods: GET, POST")
        print(f"INFO:     Started server process [{os.getpid()}]", flush=True)
        print("INFO:     Waiting for application startup.", flush=True)
        print("INFO:     Application startup complete.", flush=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            rc = await self._load()
            if rc is not None:
                return rc
            return await self._serve()
        finally:
            self._reap_engine()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    opts, unknown = parser.parse_known_args(argv)
    if opts.fake_fail_at_start == "config":
        # argparse's own failure, which is what a removed or misspelt vLLM flag produces.
        bad = " ".join(unknown) or "--disable-log-requests"
        _stderr(f"usage: vllm serve [model_tag] [options]\nvllm: error: unrecognized arguments: "
                f"{bad}")
        return 2
    model_tag = opts.model_tag
    if opts.command not in (None, "serve"):
        model_tag = opts.command  # `python -m tests.fake_vllm MODEL ...`
    model = opts.model or model_tag or "facebook/opt-125m"
    return asyncio.run(Server(opts, model).run())
