"""Child output: levels, process tags, tracebacks, load phases."""

from __future__ import annotations

import logging

import pytest

from vllama.supervisor.output import LineBudget, LineReader, is_access_line, phase_of


def test_levels_tags_and_tracebacks() -> None:
    reader = LineReader()
    lines = [
        ("INFO 11-22 10:00:00 [api_server.py:1] vLLM API server version 0.32.0", logging.INFO, ""),
        (
            "(EngineCore_DP0 pid=42) WARNING 11-22 10:00:01 [x.py:2] slow",
            logging.WARNING,
            "EngineCore_DP0 pid=42",
        ),
        ("DEBUG 11-22 10:00:01 [x.py:3] detail", logging.DEBUG, ""),
        (
            "(EngineCore_DP0 pid=42) Traceback (most recent call last):",
            logging.ERROR,
            "EngineCore_DP0 pid=42",
        ),
        ('  File "x.py", line 3, in f', logging.ERROR, ""),
        ("ValueError: No available memory for the cache blocks.", logging.ERROR, ""),
        ("ERROR 11-22 10:00:02 [core.py:9] EngineCore failed to start.", logging.ERROR, ""),
        ("INFO 11-22 10:00:03 [x.py:1] back to normal\n", logging.INFO, ""),
        ("Loading safetensors checkpoint shards:  50% Completed", logging.INFO, ""),
        ("vllm: error: unrecognized arguments: --bogus", logging.ERROR, ""),
        ("usage: vllm serve [-h]", logging.INFO, ""),
    ]
    for raw, level, proc in lines:
        parsed = reader.parse(raw)
        assert (parsed.level, parsed.process) == (level, proc), raw
        assert parsed.text == raw.rstrip("\n")


@pytest.mark.parametrize(
    ("line", "phase"),
    [
        ("INFO 11-22 [core.py:1] Initializing a V1 LLM engine (v0.32.0)", "initializing engine"),
        ("INFO 11-22 [loader.py:1] Loading weights took 0.1 s", "loading weights"),
        ("INFO 11-22 [gpu_model_runner.py:1] Model loading took 1.2 GiB", "weights loaded"),
        (
            "INFO 11-22 [kv_cache_utils.py:1] GPU KV cache size: 12,000 tokens",
            "allocating KV cache",
        ),
        (
            "INFO 11-22 [gpu_model_runner.py:1] Capturing CUDA graphs (mixed)",
            "capturing CUDA graphs",
        ),
        (
            "INFO 11-22 [api_server.py:1] Starting vLLM API server 0 on http://127.0.0.1:8000",
            "starting API server",
        ),
        ("INFO:     Application startup complete.", "startup complete"),
        ("INFO 11-22 [metrics.py:1] Avg prompt throughput: 0.0 tokens/s", None),
        (
            "(APIServer pid=1) WARNING 11-22 [vllm.py:1] Enforce eager, disabling torch.compile",
            None,
        ),
        ("INFO 11-22 [backends.py:1] Compiling a graph for dynamic shape takes 9 s", "compiling"),
    ],
)
def test_phase_of(line: str, phase: str | None) -> None:
    assert phase_of(line) == phase


def test_uvicorn_access_lines_are_debug() -> None:
    # The gateway logs every request itself; the engine's copy (and the supervisor's own
    # probes of /health and /metrics) would only fill the journal.
    line = 'INFO:     127.0.0.1:51234 - "GET /metrics HTTP/1.1" 200 OK'
    assert LineReader().parse(line).level == logging.DEBUG
    assert is_access_line(line.encode())
    for other in ("INFO:     Started server process [42]",
                  "INFO:     Application startup complete.",
                  "(APIServer pid=1) INFO 11-22 10:00:00 [x.py:1] GET /metrics"):
        assert LineReader().parse(other).level == logging.INFO
        assert not is_access_line(other.encode())


def test_line_budget_grants_a_burst_then_the_rate_and_counts_the_rest() -> None:
    now = [0.0]
    budget = LineBudget(lambda: now[0], rate=10.0, burst=100)
    assert budget.grant(80) == 80
    assert budget.grant(50) == 20  # the burst is spent: 30 dropped
    assert budget.due_report() == 0  # not yet: one report per REPORT_EVERY
    now[0] = 1.0
    assert budget.grant(50) == 10  # refilled at the rate: 40 more dropped
    now[0] = 1.0 + LineBudget.REPORT_EVERY
    assert budget.due_report() == 70 and budget.due_report() == 0
    assert budget.dropped_total == 70
    now[0] = 100.0
    assert budget.grant(500) == 100  # refills up to the burst, no further
    assert budget.due_report(final=True) == 400
