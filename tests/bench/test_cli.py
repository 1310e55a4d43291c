"""`vllama bench` as a command: arguments, JSON output and exit status, against real servers."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.bench.servers import Log, Script, make_app
from tests.conftest import REPO_ROOT
from vllama import cli

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


async def run_cli(*args: str) -> tuple[int, bytes, bytes]:
    """The real command in a child process (the test's loop keeps serving meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllama", "bench", *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_json_compare(aiohttp_server: ServerFactory) -> None:
    log = Log()
    a = await aiohttp_server(make_app("ollama", "A", Script(tokens=4), log))
    b = await aiohttp_server(make_app("openai", "B", Script(tokens=4), log))
    rc, out, err = await run_cli(
        str(a.make_url("/")), "--model", "tiny", "-n", "3", "-c", "1,2", "--max-tokens", "4",
        "--prompt-tokens", "5", "--compare", str(b.make_url("/v1")), "--compare-api", "openai",
        "--rounds", "2", "--warmup", "1", "--json")
    assert rc == 0, err
    doc = msgspec.json.decode(out)
    assert [t["url"] for t in doc["targets"]] == [str(a.make_url("/api/chat")),
                                                  str(b.make_url("/v1/chat/completions"))]
    assert [lv["stats"]["A"]["ok"] for lv in doc["levels"]] == [6, 6]
    assert doc["levels"][0]["stats"]["B"]["output_tokens"] == 24
    assert len(log.order) == 2 * (1 + 2 * 2 * 3)  # warm-up 1 + levels x rounds x n, per target
    assert all(body["model"] == "tiny" for body in log.bodies)
    assert err == b""  # no progress line when stderr is not a terminal


async def test_failures_exit_1_with_a_readable_table(aiohttp_server: ServerFactory) -> None:
    srv = await aiohttp_server(make_app("ollama", "A", Script(status=503), Log()))
    rc, out, _ = await run_cli(str(srv.make_url("/")), "--model", "m", "-n", "2", "-c", "1",
                               "--progress")
    assert rc == 1
    text = out.decode()
    assert "error x2: HTTP 503" in text and "TTFT ms p50/p90/p99" in text


@pytest.mark.parametrize("args", [
    ["--endpoint", "completions"],  # Ollama has no completions endpoint
    ["-n", "0"],
    ["--rounds", "0"],
])
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["bench", "http://127.0.0.1:1", "--model", "m", *args], out=io.StringIO())
    assert rc == 2
    assert capsys.readouterr().err.startswith("vllama bench: ")


def test_bad_levels_are_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "http://127.0.0.1:1", "--model", "m", "-c", "1,x"])
    assert exc.value.code == 2


def test_registered_in_the_cli() -> None:
    out = io.StringIO()
    cli.build_parser().print_help(out)
    assert "bench" in out.getvalue()
