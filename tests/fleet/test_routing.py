"""Upstream groups through the real gateway, over fake vLLM servers on loopback: spreading,
affinity, retries before the first byte only, ejection, probes, 503 when none is up."""

from __future__ import annotations

import asyncio
import io
import re
from collections import Counter, defaultdict

import msgspec

from tests.fake_vllm import FakeScript
from tests.fleet.conftest import MakeBed
from vllama.config import UpstreamRef
from vllama.gateway.keys import SERVICES
from vllama.gateway.targets import ROUTER
from vllama.models import commands
from vllama.models.commands import CliContext
from vllama.models.store import ModelStore

FAST_PROBES = {"upstream_probe_interval": 0.1, "upstream_probe_timeout": 2.0}


async def test_requests_spread_over_the_members(make_bed: MakeBed) -> None:
    bed = await make_bed(3, upstream_routing="least_loaded")
    served = Counter([(await bed.chat(f"question {i}"))[1] for i in range(9)])
    # One after the other every member is idle, so they take turns.
    assert served == Counter({u.v1: 3 for u in bed.upstreams})
    assert [u.posts() for u in bed.upstreams] == [3, 3, 3]
    # At the same time: the least busy takes each one.
    for up in bed.upstreams:
        up.script.token_delay = 0.02
    results = await asyncio.gather(*(bed.chat(f"q{i}", stream=True) for i in range(12)))
    assert all(status == 200 for status, _, _ in results)
    assert {upstream for _, upstream, _ in results} == {u.v1 for u in bed.upstreams}


async def test_a_conversation_stays_on_one_member(make_bed: MakeBed) -> None:
    bed = await make_bed(3)  # affinity is the default
    homes: dict[str, set[str]] = defaultdict(set)
    for turn in range(3):
        for c in range(12):
            history = []
            for t in range(turn):  # the conversation so far, as a client resends it
                history += [{"role": "user", "content": f"conversation {c} turn {t}"},
                            {"role": "assistant", "content": "ok"}]
            content = f"conversation {c} turn {turn}"
            status, upstream, _ = await bed.chat(content, history=history)
            assert status == 200
            homes[f"conversation {c}"].add(upstream)
    assert all(len(members) == 1 for members in homes.values()), homes
    assert len({next(iter(m)) for m in homes.values()}) >= 2  # and they spread


async def test_a_dead_member_costs_no_request(make_bed: MakeBed) -> None:
    # (least_loaded: idle members take turns, so the dead one is met by the first two)
    bed = await make_bed(2, upstream_eject_initial=60.0, upstream_routing="least_loaded")
    dead, live = bed.upstreams
    await dead.stop()
    results = [await bed.chat(f"q{i}") for i in range(6)]
    assert [(status, upstream) for status, upstream, _ in results] == [(200, live.v1)] * 6
    states = await bed.member_states()
    assert states == {dead.v1: "ejected", live.v1: "up"}
    _, doc = await bed.health()
    dead_row = next(m for m in doc["upstreams"][0]["members"] if m["upstream"] == dead.v1)
    assert "unreachable" in dead_row["reason"] and dead_row["ejections"] == 1
    assert doc["status"] == "ok"  # the model is ready while one member is


async def test_a_5xx_is_retried_on_another_member_and_ejects(make_bed: MakeBed) -> None:
    bed = await make_bed(2, upstream_eject_initial=60.0)
    bad, good = bed.upstreams
    bad.script.fail_status = 500
    for i in range(6):
        status, upstream, _ = await bed.chat(f"q{i}")
        assert (status, upstream) == (200, good.v1)
    assert bad.posts() <= 1  # tried at most once, then left out for its ejection
    # The client's own errors are not the member's fault: a 4xx goes back as it is.
    resp = await bed.client.post("/v1/chat/completions", data=msgspec.json.encode(
        {"model": "m", "messages": [], "tools": []}))
    assert resp.status == 400
    assert (await bed.member_states())[good.v1] == "up"


async def test_a_failure_after_the_first_byte_is_an_error_line(make_bed: MakeBed) -> None:
    scripts = [FakeScript(served_names=["m"], drop_after=3) for _ in range(2)]
    bed = await make_bed(scripts=scripts)
    status, upstream, lines = await bed.chat("hello", stream=True)
    assert status == 200 and upstream
    assert "error" in lines[-1] and not lines[-1].get("done")
    assert sum(u.posts() for u in bed.upstreams) == 1  # never sent again


async def test_every_member_down_is_503_with_retry_after(make_bed: MakeBed) -> None:
    bed = await make_bed(2, upstream_probe_interval=7.0)
    for up in bed.upstreams:
        await up.stop()
    resp = await bed.client.post("/api/chat", data=msgspec.json.encode(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]}))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    error = (await resp.json())["error"]
    assert error.startswith("model 'm' is unavailable: every upstream is down")
    assert all(u.v1 in error for u in bed.upstreams)
    # The OpenAI route says the same, in OpenAI's error shape.
    resp = await bed.client.post("/v1/chat/completions", data=msgspec.json.encode(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]}))
    assert resp.status == 503 and "every upstream is down" in (
        await resp.json())["error"]["message"]


async def test_probes_take_a_member_out_and_bring_it_back(make_bed: MakeBed) -> None:
    bed = await make_bed(2, **FAST_PROBES)
    sick, well = bed.upstreams
    sick.script.healthy = False  # /health answers 503, like a dead EngineCore

    async def sick_is_down() -> bool:
        return (await bed.member_states()).get(sick.v1) == "down"

    await bed.until(sick_is_down)
    before = sick.posts()
    for i in range(6):
        assert (await bed.chat(f"q{i}"))[:2] == (200, well.v1)
    assert sick.posts() == before  # a down member is not even tried
    status, doc = await bed.health()
    assert status == 200 and doc["status"] == "ok"

    well.script.healthy = False  # now both: the model is not ready, /health says why

    async def unready() -> bool:
        return (await bed.health())[0] == 503

    await bed.until(unready)
    _, doc = await bed.health()
    assert any("model 'm': every upstream is down" in r for r in doc["reasons"])
    assert (await bed.chat("x"))[0] == 503

    sick.script.healthy = True

    async def back() -> bool:
        return (await bed.member_states()).get(sick.v1) == "up"

    await bed.until(back)
    assert (await bed.chat("y"))[:2] == (200, sick.v1)


async def test_an_engine_that_comes_back_rejoins(make_bed: MakeBed) -> None:
    bed = await make_bed(2, upstream_eject_initial=60.0, **FAST_PROBES)
    gone, other = bed.upstreams
    await gone.stop()
    assert (await bed.chat("x"))[:2] == (200, other.v1)

    async def down() -> bool:
        return (await bed.member_states()).get(gone.v1) == "down"

    await bed.until(down)  # the probe confirms what the failed request suggested
    await gone.start()

    async def up() -> bool:
        return (await bed.member_states()).get(gone.v1) == "up"

    # Back by its probe, without waiting out its 60 s ejection.
    await bed.until(up)
    served = {(await bed.chat(f"q{i}"))[1] for i in range(6)}
    assert served == {gone.v1, other.v1}


async def test_members_may_know_the_model_by_other_ids(make_bed: MakeBed) -> None:
    scripts = [FakeScript(served_names=["m"]), FakeScript(served_names=["org/model-b"])]
    bed = await make_bed(scripts=scripts, refs=[], upstream_routing="least_loaded")
    a, b = bed.upstreams
    refs = [UpstreamRef(a.v1), UpstreamRef(b.v1, model="org/model-b")]
    bed = await make_bed(0, refs=refs, upstream_routing="least_loaded")
    served = {(await bed.chat(f"q{i}"))[:2] for i in range(4)}
    assert served == {(200, a.v1), (200, b.v1)}  # the fake 404s a model id it does not know
    assert {body["model"] for body in b.state.bodies("/v1/chat/completions")} == {
        "org/model-b"}
    resp = await bed.client.post("/v1/chat/completions", data=msgspec.json.encode(
        {"model": "m", "messages": [{"role": "user", "content": "v1"}]}))
    assert resp.status == 200 and resp.headers["X-Vllama-Upstream"] in (a.v1, b.v1)


async def test_ps_metrics_and_health_show_each_member(make_bed: MakeBed) -> None:
    bed = await make_bed(2, upstream_eject_initial=60.0, upstream_routing="least_loaded")
    dead, live = bed.upstreams
    await dead.stop()
    assert [(await bed.chat(f"q{i}"))[0] for i in range(2)] == [200, 200]
    ps = await (await bed.client.get("/api/ps")).json()
    row = next(m for m in ps["models"] if m["name"] == "m:latest")
    assert row["state"] == "loaded"
    assert {(u["upstream"], u["state"]) for u in row["upstreams"]} == {
        (dead.v1, "ejected"), (live.v1, "up")}
    text = await (await bed.client.get("/metrics")).text()
    assert f'vllama_upstream_state{{model="m",upstream="{dead.v1}",state="ejected"}} 1' in text
    assert f'vllama_upstream_state{{model="m",upstream="{live.v1}",state="up"}} 1' in text
    assert f'vllama_upstream_ejections_total{{model="m",upstream="{dead.v1}"}} 1' in text
    assert f'vllama_upstream_requests_in_flight{{model="m",upstream="{live.v1}"}} 0' in text


async def test_a_reload_keeps_the_members_state(make_bed: MakeBed) -> None:
    bed = await make_bed(2, upstream_eject_initial=60.0, upstream_routing="least_loaded")
    dead, live = bed.upstreams
    await dead.stop()
    for i in range(2):
        await bed.chat(f"q{i}")
    router = bed.app[ROUTER]
    # What SIGHUP does with an unchanged model: its target, members and their state stay.
    assert router.replace(bed.config, bed.app[SERVICES].store) == []
    assert await bed.member_states() == {dead.v1: "ejected", live.v1: "up"}
    # A model whose members changed gets new ones; an endpoint nobody uses is closed.
    smaller = msgspec.structs.replace(
        bed.config, models=(msgspec.structs.replace(bed.config.models[0],
                                                    upstreams=(UpstreamRef(live.v1),)),))
    dropped = router.replace(smaller, bed.app[SERVICES].store)
    assert len(dropped) == 1
    for session in dropped:
        await session.close()
    assert await bed.member_states() == {live.v1: "up"}
    assert (await bed.chat("after"))[:2] == (200, live.v1)


async def test_vllama_ps_prints_each_upstream(make_bed: MakeBed) -> None:
    bed = await make_bed(2, upstream_eject_initial=60.0, upstream_routing="least_loaded")
    dead, live = bed.upstreams
    await dead.stop()
    for i in range(2):
        await bed.chat(f"q{i}")
    out = io.StringIO()
    ctx = CliContext(store_factory=lambda: ModelStore(None, None),
                     base_url=str(bed.client.make_url("")).rstrip("/"), out=out,
                     err=io.StringIO())
    assert await asyncio.to_thread(commands.cmd_ps, ctx) == 0
    rows = out.getvalue().splitlines()
    at = rows.index(next(r for r in rows if r.startswith("NAME") and "UPSTREAM" in r))
    assert re.fullmatch(r"NAME\s+UPSTREAM\s+STATE\s+IN FLIGHT\s+REASON", rows[at])
    assert re.fullmatch(rf"m:latest\s+{re.escape(dead.v1)}\s+ejected\s+0\s+upstream "
                        r"unreachable: .*", rows[at + 1])
    assert re.fullmatch(rf"m:latest\s+{re.escape(live.v1)}\s+up\s+0\s*", rows[at + 2])
