"""Property-based fuzz of every endpoint's body: never a hang, never an unexpected 5xx, and
every error is an `{"error": ...}` JSON body. 500 is allowed only where Ollama itself answers
500 (a wrong option type) and 502 only for upstream failures."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import MakeBed

FIELDS = ["model", "name", "prompt", "messages", "stream", "options", "format", "keep_alive",
          "think", "raw", "system", "template", "suffix", "images", "tools", "input",
          "dimensions", "truncate", "logprobs", "top_logprobs", "context", "source",
          "destination", "verbose", "insecure", "from", "files", "quantize", "_debug_render_only"]
PATHS = ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show",
         "/api/pull", "/api/delete", "/api/copy", "/api/create", "/api/push",
         "/v1/chat/completions", "/v1/completions", "/v1/embeddings"]

CALLS: list[str] = []

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
                    st.text(max_size=12), st.sampled_from(["fake", "fake:latest", "FAKE", "json",
                                                           "0s", "5m", "user", "high"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["role", "content", "num_predict", "temperature", "stop",
                                     "type", "function", "name", "arguments"]) | st.text(
        max_size=5), inner, max_size=3)), max_leaves=8)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=bodies, raw=st.booleans())
async def test_any_body_gets_a_clear_answer(make_bed: MakeBed, path: str,
                                            body: dict[str, Any], raw: bool) -> None:
    bed = await make_bed()
    CALLS.append(path)
    try:
        data = msgspec.json.encode(body)
        if raw:
            data = data[: len(data) // 2]  # truncated JSON
        method = bed.client.delete if path == "/api/delete" else bed.client.post
        resp = await asyncio.wait_for(method(path, data=data), 10)
        payload = await asyncio.wait_for(resp.read(), 10)
        if resp.status >= 400:
            assert resp.status in (400, 401, 404, 405, 413, 500, 502, 503), resp.status
            doc = msgspec.json.decode(payload)
            error = doc["error"]
            assert error if isinstance(error, str) else error["message"]
            if resp.status == 500:
                assert "must be of type" in doc["error"] or path.startswith(
                    ("/api/pull", "/api/push", "/api/create")), doc
        elif resp.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            assert payload.endswith(b"\n") and b"\n\n" not in payload
            last = msgspec.json.decode(payload.splitlines()[-1])
            assert last.get("done") is True or "error" in last or "status" in last
    finally:
        await bed.client.close()
        await bed.upstream.close()


def test_fuzz_really_ran() -> None:
    assert len(CALLS) >= 100, len(CALLS)
