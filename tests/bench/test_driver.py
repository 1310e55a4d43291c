"""`vllama bench` driving real loopback servers whose replies are known exactly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.bench.servers import Log, Script, make_app
from tests.conftest import free_port
from vllama.bench import report
from vllama.bench.driver import Plan, Target, run_plan
from vllama.bench.protocol import make_prompt

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def target(name: str, server: TestServer, api: str, *, stream: bool = True,
           max_tokens: int = 9, endpoint: str = "chat") -> Target:
    return Target.build(name, str(server.make_url("/")), api=api, endpoint=endpoint,
                        model="m", prompt=make_prompt(4), max_tokens=max_tokens, stream=stream)


async def test_compare_interleaves_and_counts_exactly(aiohttp_server: ServerFactory) -> None:
    log = Log()
    a_srv = await aiohttp_server(make_app("ollama", "A", Script(tokens=5), log))
    b_srv = await aiohttp_server(make_app("openai", "B", Script(tokens=7), log))
    events: list[tuple[str, str, int]] = []
    plan = Plan(targets=[target("A", a_srv, "ollama"), target("B", b_srv, "openai")],
                levels=[1, 3], requests=4, rounds=2, warmup=2, timeout=30,
                observer=lambda event, t, level: events.append((event, t.name, level)))
    results = await run_plan(plan)
    assert events == [(e, name, level) for level in (1, 3) for name in "ABBA"
                      for e in ("start", "end")]  # measured runs only, not the warm-up

    # warm-up A then B, then per level: round 1 A B, round 2 B A (blocks of `requests`)
    expected = ["A"] * 2 + ["B"] * 2
    for _ in plan.levels:
        expected += ["A"] * 4 + ["B"] * 8 + ["A"] * 4
    assert log.order == expected
    a_bodies = [b for b, who in zip(log.bodies, log.order, strict=True) if who == "A"]
    assert all(b["options"]["num_predict"] == 9 and b["stream"] for b in a_bodies)
    assert all(b["messages"][0]["content"] == make_prompt(4) for b in log.bodies)

    assert [r.concurrency for r in results] == [1, 3]
    for res in results:
        a, b = res.stats["A"], res.stats["B"]
        assert (a.requests, a.ok, a.errors) == (8, 8, 0)
        assert (a.output_tokens, b.output_tokens) == (40, 56)  # eval_count / usage
        assert a.tokens_reported and b.tokens_reported
        assert a.ttft_ms.count == 8 and a.itl_ms.count == 8 * 4  # 5 text frames: 4 gaps
        assert b.itl_ms.count == 8 * 6
        # frames: A 5 text + done; B role + 7 text + finish + usage
        assert a.frames_per_s * a.wall_s == pytest.approx(8 * 6)
        assert b.frames_per_s * b.wall_s == pytest.approx(8 * 10)
        assert res.comparison is not None
        assert res.comparison.output_tokens_per_s_ratio == pytest.approx(
            b.output_tokens_per_s / a.output_tokens_per_s)
        assert res.comparison.ttft_added_ms.p50 == pytest.approx(
            (b.ttft_ms.p50 or 0) - (a.ttft_ms.p50 or 0))
    assert len(plan.samples[("B", 3)]) == 8
    assert [sorted(r) for r in results[0].rounds] == [["A", "B"], ["A", "B"]]
    assert sum(r["A"].output_tokens for r in results[1].rounds) == 40

    text = report.text(plan, results, model="m", stream=True)
    assert "B/A row: rates as ratios B/A" in text
    assert sum(line.startswith(" ") and line.split()[0] == "B/A" for line in text.splitlines()) == 2
    doc = msgspec.json.decode(report.as_json(plan, results, model="m", stream=True,
                                             max_tokens=9, prompt_tokens=4))
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 3]
    assert doc["levels"][0]["stats"]["B"]["output_tokens"] == 56
    assert doc["levels"][1]["compare_b_over_a"]["output_tokens_per_s_ratio"] > 0


async def test_frames_split_across_reads(aiohttp_server: ServerFactory) -> None:
    log = Log()
    srv_o = await aiohttp_server(make_app("ollama", "o", Script(tokens=6, split_writes=True),
                                          log))
    srv_a = await aiohttp_server(make_app("openai", "a", Script(tokens=6, split_writes=True,
                                                                report_tokens=False), log))
    plan = Plan(targets=[target("A", srv_o, "ollama"), target("B", srv_a, "openai")],
                levels=[2], requests=3)
    [res] = await run_plan(plan)
    assert res.stats["A"].output_tokens == 18 and res.stats["A"].errors == 0
    # no usage frame: the 6 text frames per reply are counted instead
    assert res.stats["B"].output_tokens == 18 and not res.stats["B"].tokens_reported


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_not_streamed(aiohttp_server: ServerFactory, api: str) -> None:
    log = Log()
    srv = await aiohttp_server(make_app(api, "s", Script(tokens=11), log))
    plan = Plan(targets=[target("A", srv, api, stream=False)], levels=[4], requests=6)
    [res] = await run_plan(plan)
    s = res.stats["A"]
    assert (s.ok, s.output_tokens, s.ttft_ms.count, s.itl_ms.count) == (6, 66, 0, 0)
    assert all(not b["stream"] for b in log.bodies) and len(log.bodies) == 6
    assert res.comparison is None


async def test_generate_endpoint(aiohttp_server: ServerFactory) -> None:
    log = Log()
    srv = await aiohttp_server(make_app("ollama", "s", Script(tokens=3), log))
    plan = Plan(targets=[target("A", srv, "ollama", endpoint="generate")], levels=[1],
                requests=2)
    [res] = await run_plan(plan)
    assert res.stats["A"].output_tokens == 6
    assert log.bodies[0]["prompt"] == make_prompt(4) and "messages" not in log.bodies[0]


@pytest.mark.parametrize(("api", "script", "kind"), [
    ("ollama", Script(status=500), 'HTTP 500: {"error": "scripted failure"}'),
    ("openai", Script(status=404), "HTTP 404: "),
    ("ollama", Script(error_after=2), "stream error: scripted stream error"),
    ("openai", Script(error_after=2), "stream error: scripted stream error"),
    ("ollama", Script(truncate_after=2), "stream ended before done:true"),
    ("openai", Script(truncate_after=2), "stream ended before data: [DONE]"),
    ("ollama", Script(blank_line=True), "blank line in NDJSON stream"),
])
async def test_failures_are_counted(aiohttp_server: ServerFactory, api: str, script: Script,
                                    kind: str) -> None:
    srv = await aiohttp_server(make_app(api, "s", script, Log()))
    plan = Plan(targets=[target("A", srv, api)], levels=[2], requests=3)
    [res] = await run_plan(plan)
    s = res.stats["A"]
    assert (s.ok, s.errors, s.requests_per_s) == (0, 3, 0.0)
    [(seen, count)] = s.error_kinds.items()
    assert seen.startswith(kind) and count == 3
    assert f"error x3: {kind}" in report.text(plan, [res], model="m", stream=True)


async def test_request_timeout_is_a_failure(aiohttp_server: ServerFactory) -> None:
    srv = await aiohttp_server(make_app("ollama", "s", Script(tokens=3, delay=5.0), Log()))
    plan = Plan(targets=[target("A", srv, "ollama")], levels=[1], requests=1, timeout=0.2)
    [res] = await run_plan(plan)
    assert res.stats["A"].error_kinds == {"timeout after 0.2 s": 1}


async def test_unreachable_target() -> None:
    dead = Target.build("A", f"http://127.0.0.1:{free_port()}", api="ollama", endpoint="chat",
                        model="m", prompt="p", max_tokens=1, stream=True)
    [res] = await run_plan(Plan(targets=[dead], levels=[1], requests=2, timeout=10))
    [kind] = res.stats["A"].error_kinds
    assert res.stats["A"].errors == 2 and kind.startswith("ClientConnectorError")
