"""argv and environment building: tables of hardware x user args."""

from __future__ import annotations

import pytest

from vllama.errors import ConfigError
from vllama.supervisor.argv import (
    GiB,
    HardwareInfo,
    MiB,
    build_argv,
    build_env,
    check_extra_args,
    cpu_kv_cache_bytes,
    cpu_list,
)
from vllama.vllm_flags import flag_name

H100 = HardwareInfo(gpu_count=1, gpu_name="NVIDIA H100 80GB HBM3", gpu_memory_total=80 * GiB)
A100 = HardwareInfo(gpu_count=1, gpu_name="NVIDIA A100-SXM4-80GB", gpu_memory_total=80 * GiB)
L4 = HardwareInfo(gpu_count=1, gpu_name="NVIDIA L4", gpu_memory_total=24 * GiB)
CPU = HardwareInfo(mem_available=8 * GiB, cpus=(0, 1))

HEAD = ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--host", "127.0.0.1", "--port", "8001"]
HEAD += ["--served-model-name", "qwen2.5:7b"]
BIG = ["--max-num-batched-tokens", "8192", "--max-num-seqs", "1024"]
SMALL = ["--max-num-batched-tokens", "2048", "--max-num-seqs", "256"]
UTIL = ["--gpu-memory-utilization", "0.90"]


def argv(hw: HardwareInfo, *extra: str) -> list[str]:
    return build_argv(["vllm"], "Qwen/Qwen2.5-7B-Instruct", "qwen2.5:7b", 8001, extra, hw=hw)


@pytest.mark.parametrize(
    ("hw", "extra", "tail"),
    [
        (
            H100,
            (),
            [*BIG, *UTIL],
        ),
        (
            A100,
            (),
            [*SMALL, *UTIL],
        ),
        (
            L4,
            (),
            [*SMALL, *UTIL],
        ),
        (
            CPU,
            (),
            ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", "2048M"],
        ),
        # the user's value wins, in every spelling
        (
            H100,
            ("--max-num-seqs", "64"),
            ["--max-num-batched-tokens", "8192", *UTIL, "--max-num-seqs", "64"],
        ),
        (
            H100,
            ("--max-num-seqs=64", "--gpu_memory_utilization=0.5"),
            [
                "--max-num-batched-tokens",
                "8192",
                "--max-num-seqs=64",
                "--gpu_memory_utilization=0.5",
            ],
        ),
        (
            CPU,
            ("--no-enforce-eager", "--dtype=bfloat16"),
            ["--kv-cache-memory-bytes", "2048M", "--no-enforce-eager", "--dtype=bfloat16"],
        ),
        # an explicit KV size replaces the utilisation fraction, and the other way round
        (
            L4,
            ("--kv-cache-memory-bytes", "4G"),
            [*SMALL, "--kv-cache-memory-bytes", "4G"],
        ),
        (
            CPU,
            ("--gpu-memory-utilization", "0.2"),
            ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.2"],
        ),
        # values that look like nothing we set pass through untouched
        (
            L4,
            ("--max-model-len", "4096", "--tensor-parallel-size", "2"),
            [*SMALL, *UTIL, "--max-model-len", "4096", "--tensor-parallel-size", "2"],
        ),
    ],
)
def test_build_argv(hw: HardwareInfo, extra: tuple[str, ...], tail: list[str]) -> None:
    assert argv(hw, *extra) == HEAD + tail


def test_multiword_command_and_no_chunked_prefill_disabling() -> None:
    out = build_argv(["python", "-m", "tests.fake_vllm"], "/models/x", "x", 9, (), hw=H100)
    assert out[:5] == ["python", "-m", "tests.fake_vllm", "serve", "/models/x"]
    assert not [a for a in out if a.startswith("--no-") or "chunked" in a or "prefix" in a]


@pytest.mark.parametrize(
    ("arg", "mentions"),
    [
        ("--disable-log-requests", "--enable-log-requests"),
        ("--task", "--runner pooling"),
        ("--task=embed", "--runner pooling"),
        ("--guided-decoding-backend=xgrammar", "--structured-outputs-config"),
        ("--worker-use-ray", "--distributed-executor-backend ray"),
        ("--port", "free private port"),
        ("--host=0.0.0.0", "127.0.0.1"),
        ("--api-key", "VLLM_API_KEY"),
        ("--served-model-name", "model's name"),
    ],
)
def test_refused_flags(arg: str, mentions: str) -> None:
    with pytest.raises(ConfigError) as err:
        argv(L4, "--max-model-len", "2048", arg, "x")
    assert arg.split("=", maxsplit=1)[0] in err.value.message
    assert mentions in err.value.message
    with pytest.raises(ConfigError):
        check_extra_args([arg])


def test_check_extra_args_accepts_current_flags() -> None:
    check_extra_args(["--enable-log-requests", "--runner", "pooling", "--max-model-len=4096"])
    assert flag_name("--max_model_len=4096") == "--max-model-len"


@pytest.mark.parametrize(
    ("arg", "name"),
    [
        ("--max-num-seqs", "--max-num-seqs"),
        ("--max_num_seqs=5", "--max-num-seqs"),
        ("--no-enable-prefix-caching", "--enable-prefix-caching"),
        ("64", None),
        ("-q", None),
        ("--", None),
    ],
)
def test_flag_name(arg: str, name: str | None) -> None:
    assert flag_name(arg) == name


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (0, 64 * MiB),
        (100 * MiB, 64 * MiB),
        (1 * GiB, 256 * MiB),
        (8 * GiB, 2 * GiB),
        (64 * GiB, 4 * GiB),
    ],
)
def test_cpu_kv_cache_bytes(available: int, expected: int) -> None:
    assert cpu_kv_cache_bytes(available) == expected


@pytest.mark.parametrize(
    ("cpus", "text"),
    [((0, 1), "0-1"), ((3,), "3"), ((0, 1, 2, 5, 7, 8), "0-2,5,7-8"), ((), "")],
)
def test_cpu_list(cpus: tuple[int, ...], text: str) -> None:
    assert cpu_list(cpus) == text


PARENT = {
    "PATH": "/usr/bin",
    "HF_HOME": "/var/cache/hf",
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "LISTEN_FDS": "1",
    "LISTEN_PID": "1",
    "LISTEN_FDNAMES": "x",
    "VLLM_API_KEY": "stale",
}


def test_env_strips_systemd_and_sets_vllm() -> None:
    env = build_env(PARENT, L4, api_key="s3cret")
    assert env == {
        "PATH": "/usr/bin",
        "HF_HOME": "/var/cache/hf",
        "VLLM_API_KEY": "s3cret",
        "VLLM_NO_USAGE_STATS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def test_env_without_key_drops_inherited_key_and_binds_small_cpu_host() -> None:
    env = build_env(PARENT, CPU)
    assert "VLLM_API_KEY" not in env
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


@pytest.mark.parametrize(
    ("hw", "parent", "bind"),
    [
        (CPU, {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}, "nobind"),  # the user's value wins
        (HardwareInfo(cpus=tuple(range(64))), {}, None),  # big host: vLLM's "auto"
        (L4, {}, None),  # GPU: irrelevant
    ],
)
def test_env_cpu_binding(hw: HardwareInfo, parent: dict[str, str], bind: str | None) -> None:
    assert build_env(parent, hw).get("VLLM_CPU_OMP_THREADS_BIND") == bind
