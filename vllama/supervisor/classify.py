"""Why did a `vllm serve` child exit? (pure)

The class decides what the engine does next: a config or capacity failure at load would fail
the same way again, so it is reported, not restart-looped; a crash is restarted with backoff.
vLLM exits with rc 0 after its engine dies, so rc 0 is only "stopped" when we asked for it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec


class ExitClass(enum.StrEnum):
    STOPPED = "stopped"  # we asked it to stop
    CONFIG = "config"  # bad flag or model: fix the configuration
    CAPACITY = "capacity"  # does not fit in (GPU) memory: smaller context or more memory
    CRASH = "crash"  # anything else: restart with backoff
    TIMEOUT = "timeout"  # never became ready within startup_timeout (decided by the engine)


class Classification(msgspec.Struct, frozen=True):
    cls: ExitClass
    hint: str
    line: str = ""  # the log line that decided it, when one did


# Substring -> hint, checked newest line first so the root cause nearest the end wins.
_CONFIG_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "is greater than the derived max_model_len",
        "--max-model-len is longer than the model's own context: lower it",
    ),
    (
        "validation error for",
        "vLLM refused the engine's settings (a flag value, or the model's config.json): see "
        "the last log lines and fix vllm_args",
    ),
    ("unrecognized arguments", "vLLM rejected a flag: fix vllm_args (see `vllm serve --help`)"),
    ("error: argument", "vLLM rejected a flag value: fix vllm_args (see `vllm serve --help`)"),
    (
        "Repo id must be in the form",
        "the model is neither a local directory nor a valid Hugging Face repo id: "
        "check the path or pull the model first",
    ),
    (
        "Invalid repository ID or local directory",
        "the model directory has no config.json: pull the model again or fix the path",
    ),
    (
        "Cannot find any model weights",
        "the model directory has no weights (*.safetensors): pull the model again",
    ),
    (
        "is not a valid JSON file",
        "the model's config.json is corrupt: pull the model again",
    ),
    (
        "not supported on current platform",
        "a flag in vllm_args is not supported on this platform (e.g. --enable-sleep-mode "
        "on CPU): remove it",
    ),
)

_CAPACITY_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "No available memory for the cache blocks",
        "the KV cache does not fit: lower --max-model-len or raise --gpu-memory-utilization "
        "(on CPU: --kv-cache-memory-bytes)",
    ),
    (
        "less than desired CPU memory utilization",
        "not enough free memory for --gpu-memory-utilization on this CPU host: pass a smaller "
        "--kv-cache-memory-bytes or --gpu-memory-utilization",
    ),
    (
        "CUDA out of memory",
        "out of GPU memory while loading: lower --max-model-len or --gpu-memory-utilization, "
        "use a smaller/quantized model, or free the GPU from other processes",
    ),
    (
        "OutOfMemoryError",
        "out of GPU memory while loading: lower --max-model-len or --gpu-memory-utilization, "
        "use a smaller/quantized model, or free the GPU from other processes",
    ),
)

_STOPPED_HINT = "stopped on request"
_TIMEOUT_HINT = (
    "did not become ready within startup_timeout: raise startup_timeout for large models, "
    "or look at the last log lines for where it hung"
)


def _crash_hint(returncode: int | None) -> str:
    if returncode == 0:
        return (
            "vLLM exited by itself with status 0, which it does after its engine dies: "
            "see the log lines before the exit"
        )
    if returncode is not None and returncode < 0:
        return f"vLLM was killed by signal {-returncode}: check the system log (OOM killer?)"
    return f"vLLM crashed (exit {returncode}): see the last log lines"


def classify_exit(
    returncode: int | None, last_lines: Sequence[str], requested_stop: bool
) -> Classification:
    """Classify an exit from its status and the last lines the child printed."""
    if requested_stop:
        return Classification(ExitClass.STOPPED, _STOPPED_HINT)
    for line in reversed(last_lines):
        for pattern, hint in _CONFIG_PATTERNS:
            if pattern in line:
                return Classification(ExitClass.CONFIG, hint, line.strip())
        for pattern, hint in _CAPACITY_PATTERNS:
            if pattern in line:
                return Classification(ExitClass.CAPACITY, hint, line.strip())
    return Classification(ExitClass.CRASH, _crash_hint(returncode))


def timeout_classification(startup_timeout: float) -> Classification:
    return Classification(ExitClass.TIMEOUT, f"{_TIMEOUT_HINT} ({startup_timeout:g} s)")
