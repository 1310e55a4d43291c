"""Build the `vllm serve` command line and environment for one engine (pure).

The tuned defaults follow vLLM's own V1 defaults table (see docs): we pass them explicitly so
the effective values are visible in the child's "non-default args" log line and so a CPU host
gets settings that actually start. Whatever the user passes in `vllm_args` wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from vllama.errors import ConfigError
from vllama.vllm_flags import flag_name, flags_set

GiB = 1 << 30
MiB = 1 << 20

# vLLM's batch defaults switch at 70 GiB of device memory, A100 excepted (vllm PR #17885).
_BIG_GPU_BYTES = 70 * GiB
_CPU_KV_MAX = 4 * GiB
_CPU_KV_MIN = 64 * MiB

# Flags vLLM removed: argparse rejects them after ~17 s of imports, so we refuse them at once
# and say what replaces them.
REMOVED_FLAGS: dict[str, str] = {
    "--disable-log-requests": (
        "request logging is off by default since vLLM 0.10.1; "
        "use --enable-log-requests or --no-enable-log-requests"
    ),
    "--task": "use --runner pooling (optionally with --convert embed) for embedding models",
    "--guided-decoding-backend": (
        'use --structured-outputs-config \'{"backend": "..."}\' (renamed in vLLM 0.11/0.12)'
    ),
    "--guided-decoding-disable-fallback": "use --structured-outputs-config (renamed in vLLM 0.12)",
    "--guided-decoding-disable-any-whitespace": (
        "use --structured-outputs-config (renamed in vLLM 0.12)"
    ),
    "--worker-use-ray": "use --distributed-executor-backend ray",
    "--use-v2-block-manager": "drop it: the V1 engine always uses its own block manager",
}

# Flags vllama owns: the gateway must know the port and name, and a key in argv shows in `ps`.
RESERVED_FLAGS: dict[str, str] = {
    "--host": "vllama binds its engines to 127.0.0.1 itself",
    "--port": "vllama picks a free private port itself",
    "--uds": "vllama talks to its engines over loopback TCP",
    "--served-model-name": "vllama sets it from the model's name",
    "--api-key": "vllama passes the key through VLLM_API_KEY, never argv (it would show in ps)",
}

# A user flag that makes one of our defaults meaningless suppresses it too: an explicit KV size
# overrides the utilisation fraction and the other way round.
_SUPPRESSED_BY: dict[str, frozenset[str]] = {
    "--gpu-memory-utilization": frozenset(
        {"--gpu-memory-utilization", "--device-memory-utilization", "--kv-cache-memory-bytes"}
    ),
    "--kv-cache-memory-bytes": frozenset(
        {"--kv-cache-memory-bytes", "--gpu-memory-utilization", "--device-memory-utilization"}
    ),
}

# Environment variables systemd gives *us*; a child that inherits them would talk to systemd
# in our name (READY=1 from vLLM) or try to use our sockets.
_STRIPPED_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "CREDENTIALS_DIRECTORY",
)


class HardwareInfo(msgspec.Struct, frozen=True):
    """What the tuned defaults depend on. gpu_count 0 means "no NVIDIA GPU": vLLM runs on CPU."""

    gpu_count: int = 0
    gpu_name: str = ""
    gpu_memory_total: int = 0  # bytes, of the first (smallest is what matters; they match in TP)
    mem_available: int = 0  # bytes, MemAvailable from /proc/meminfo
    cpus: tuple[int, ...] = ()  # CPUs this process may run on (sched_getaffinity)

    @property
    def on_gpu(self) -> bool:
        return self.gpu_count > 0


def check_extra_args(extra_args: Sequence[str]) -> None:
    """Raise ConfigError for a removed or vllama-owned flag; config loading can call this early."""
    for arg in extra_args:
        raw = arg.split("=", 1)[0].replace("_", "-")
        for name in (raw, flag_name(arg)):
            if name in REMOVED_FLAGS:
                raise ConfigError(f"vllm_args: {name} was removed from vLLM: {REMOVED_FLAGS[name]}")
            if name in RESERVED_FLAGS:
                raise ConfigError(f"vllm_args: {name} is not allowed: {RESERVED_FLAGS[name]}")


def cpu_kv_cache_bytes(mem_available: int) -> int:
    """KV cache for a CPU engine: a quarter of free memory, at most 4 GiB, at least 64 MiB.

    An explicit size is needed on CPU: the default --gpu-memory-utilization (0.92 of the NUMA
    node) fails to start on any host with other processes on it.
    """
    size = min(mem_available // 4, _CPU_KV_MAX)
    return max(size, _CPU_KV_MIN)


def tuned_defaults(hw: HardwareInfo) -> list[tuple[str, str | None]]:
    """(flag, value) pairs; value None for a switch. Never disables chunked prefill or prefix
    caching: both are on by default in V1 and are where the throughput comes from."""
    if not hw.on_gpu:
        kv_mib = cpu_kv_cache_bytes(hw.mem_available) // MiB
        # float32: bf16 on CPUs with AMX crashes the worker with SIGILL (measured);
        # eager: torch.compile costs a minute per start and its cache never loads on CPU.
        return [
            ("--dtype", "float32"),
            ("--enforce-eager", None),
            ("--kv-cache-memory-bytes", f"{kv_mib}M"),
        ]
    big = hw.gpu_memory_total >= _BIG_GPU_BYTES and "A100" not in hw.gpu_name.upper()
    return [
        ("--max-num-batched-tokens", "8192" if big else "2048"),
        ("--max-num-seqs", "1024" if big else "256"),
        ("--gpu-memory-utilization", "0.90"),
    ]


def build_argv(
    vllm_command: Sequence[str],
    model: str,
    served_name: str,
    port: int,
    extra_args: Sequence[str],
    *,
    hw: HardwareInfo,
) -> list[str]:
    """`<cmd> serve <source> --host 127.0.0.1 --port P --served-model-name N <defaults> <extra>`."""
    check_extra_args(extra_args)
    user_flags = flags_set(extra_args)
    argv = [*vllm_command, "serve", model]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", served_name]
    for flag, value in tuned_defaults(hw):
        if user_flags & _SUPPRESSED_BY.get(flag, frozenset({flag})):
            continue
        argv.append(flag)
        if value is not None:
            argv.append(value)
    argv += list(extra_args)
    return argv


def cpu_list(cpus: Sequence[int]) -> str:
    """`0-3,6`: the numactl cpustring form vLLM's binding parses (ranges as measured: `0-1`)."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = ordered[0] if ordered else 0
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts) if ordered else ""


def build_env(parent: Mapping[str, str], hw: HardwareInfo, api_key: str = "",
              extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours minus systemd's per-service variables, plus vLLM settings
    and the engine's own (`extra`: its placement)."""
    # vllama's own settings (its API key among them) and the credentials systemd hands vllama
    # are not the engine's: it gets only its private key, below.
    env = {k: v for k, v in parent.items()
           if k not in _STRIPPED_ENV and not k.startswith("VLLAMA_")}
    env.update(extra or {})
    env["VLLM_NO_USAGE_STATS"] = "1"
    # Python block-buffers a pipe; unbuffered output keeps log lines (and load phases) timely.
    env["PYTHONUNBUFFERED"] = "1"
    if api_key:
        env["VLLM_API_KEY"] = api_key
    else:
        env.pop("VLLM_API_KEY", None)
    # On a small host vLLM's "auto" binding reserves one of few cores for the frontend and
    # leaves it idle: 9 vs 14.5 tok/s measured on 2 cores. Bind to all our CPUs there; on big
    # (NUMA) hosts "auto" is the right thing. A user's value always wins.
    if not hw.on_gpu and "VLLM_CPU_OMP_THREADS_BIND" not in env and 0 < len(hw.cpus) <= 4:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(hw.cpus)
    return env
