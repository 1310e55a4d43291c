"""Exit classification table, with the lines vLLM really prints (vllm.md Part 2 §5-6)."""

from __future__ import annotations

import pytest

from vllama.supervisor.classify import ExitClass, classify_exit, timeout_classification

TRACE = [
    "Traceback (most recent call last):",
    '  File "/x/vllm/engine/core.py", line 1, in run',
]


@pytest.mark.parametrize(
    ("rc", "lines", "cls", "hint_part"),
    [
        (2, ["vllm: error: unrecognized arguments: --disable-log-requests"], "config", "vllm_args"),
        (2, ["vllm: error: argument --max-model-len: invalid int value"], "config", "vllm_args"),
        (   # vLLM 0.32, a --max-model-len beyond the model's (seen on the real CPU engine)
            1,
            ["pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
             "  Value error, User-specified max_model_len (999999) is greater than the derived "
             "max_model_len (max_position_embeddings=2048.0 or model_max_length=None in model's "
             "config.json). To allow overriding this maximum, set the env var "
             "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."],
            "config",
            "--max-model-len",
        ),
        (
            1,
            ["pydantic_core._pydantic_core.ValidationError: 1 validation error for CacheConfig",
             "  Value error, nonsense [type=value_error]"],
            "config",
            "vllm_args",
        ),
        (
            1,
            [
                *TRACE,
                "huggingface_hub.errors.HFValidationError: Repo id must be in the form "
                "'repo_name' or 'namespace/repo_name': '/m/missing'.",
            ],
            "config",
            "path",
        ),
        (
            1,
            ["  Value error, Invalid repository ID or local directory specified: '/m/empty'."],
            "config",
            "config.json",
        ),
        (
            1,
            [
                "(EngineCore_DP0 pid=7) RuntimeError: Cannot find any model weights with `/m/w`",
                "RuntimeError: Engine core initialization failed. See root cause above. "
                "Failed core proc(s): {'EngineCore': 1}",
            ],
            "config",
            "weights",
        ),
        (
            1,
            [
                "OSError: It looks like the config file at '/m/config.json' is not a valid "
                "JSON file."
            ],
            "config",
            "corrupt",
        ),
        (
            1,
            ["  Value error, Sleep mode is not supported on current platform."],
            "config",
            "platform",
        ),
        (
            1,
            [
                "ValueError: No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine.",
                "RuntimeError: Engine core initialization failed. See root cause above.",
            ],
            "capacity",
            "--max-model-len",
        ),
        (
            1,
            ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."],
            "capacity",
            "--max-model-len",
        ),
        (
            1,
            [
                "ValueError: Available memory on node 0 (14.03/15.34 GiB) on startup is less than "
                "desired CPU memory utilization (0.92, 14.11 GiB)."
            ],
            "capacity",
            "--kv-cache-memory-bytes",
        ),
        (1, [*TRACE, "KeyError: 'boom'"], "crash", "exit 1"),
        (0, ["ERROR 11-22 10:00:00 [core.py:1] EngineCore encountered an issue."], "crash", "0"),
        (-9, [], "crash", "signal 9"),
        (None, [], "crash", "None"),
    ],
)
def test_classify(rc: int | None, lines: list[str], cls: str, hint_part: str) -> None:
    result = classify_exit(rc, lines, requested_stop=False)
    assert result.cls == ExitClass(cls)
    assert hint_part in result.hint


def test_requested_stop_wins_over_everything() -> None:
    result = classify_exit(1, ["vllm: error: unrecognized arguments: --x"], requested_stop=True)
    assert result.cls is ExitClass.STOPPED


def test_rc0_unasked_is_a_crash() -> None:
    assert classify_exit(0, [], requested_stop=False).cls is ExitClass.CRASH


def test_the_deciding_line_is_kept() -> None:
    line = "vllm: error: unrecognized arguments: --bogus"
    assert classify_exit(2, ["INFO 11-22 x", line], False).line == line


def test_timeout() -> None:
    result = timeout_classification(30)
    assert result.cls is ExitClass.TIMEOUT
    assert "startup_timeout" in result.hint and "30 s" in result.hint
