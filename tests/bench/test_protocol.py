"""Request shapes and stream parsing of `vllama bench`, fed exact bytes and timestamps."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllama.bench.protocol import StreamParser, make_prompt, parse_whole, request_body, resolve_url


@pytest.mark.parametrize(("url", "api", "endpoint", "expected"), [
    ("http://h:1", "ollama", "chat", "http://h:1/api/chat"),
    ("http://h:1/", "ollama", "generate", "http://h:1/api/generate"),
    ("h:1", "ollama", "chat", "http://h:1/api/chat"),
    ("http://h:1", "openai", "chat", "http://h:1/v1/chat/completions"),
    ("http://h:1/v1", "openai", "chat", "http://h:1/v1/chat/completions"),
    ("http://h:1/v1/", "openai", "completions", "http://h:1/v1/completions"),
    ("http://h:1/proxy/v1", "openai", "chat", "http://h:1/proxy/v1/chat/completions"),
    ("http://h:1/api/generate", "ollama", "chat", "http://h:1/api/generate"),  # explicit wins
    ("http://h:1/v1/chat/completions?x=1", "openai", "chat",
     "http://h:1/v1/chat/completions?x=1"),
])
def test_resolve_url(url: str, api: str, endpoint: str, expected: str) -> None:
    assert resolve_url(url, api, endpoint) == expected


def test_prompt_is_fixed_and_sized() -> None:
    assert len(make_prompt(100).split()) == 100
    assert make_prompt(7) == make_prompt(7)
    assert len(make_prompt(0).split()) == 1


def test_request_bodies_fix_the_output_length() -> None:
    def body(api: str, endpoint: str, stream: bool) -> dict[str, object]:
        decoded: dict[str, object] = msgspec.json.decode(
            request_body(api, endpoint, model="m", prompt="p q", max_tokens=9, stream=stream))
        return decoded

    assert body("ollama", "chat", True) == {
        "model": "m", "stream": True, "options": {"num_predict": 9, "temperature": 0},
        "messages": [{"role": "user", "content": "p q"}]}
    assert body("ollama", "generate", False)["prompt"] == "p q"
    assert body("openai", "chat", True) == {
        "model": "m", "stream": True, "max_tokens": 9, "temperature": 0,
        "messages": [{"role": "user", "content": "p q"}],
        "stream_options": {"include_usage": True}}
    # stream_options without stream is a 400 in vLLM: never sent
    assert "stream_options" not in body("openai", "completions", False)
    assert body("openai", "completions", False)["prompt"] == "p q"


OLLAMA_STREAM = (
    b'{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n'
    b'{"model":"m","message":{"role":"assistant","content":""},"done":false}\n'
    b'{"model":"m","message":{"role":"assistant","content":"b"},"done":false}\n'
    b'{"model":"m","message":{"role":"assistant","content":"","thinking":"t"},"done":false}\n'
    b'{"model":"m","message":{"role":"assistant","content":""},"done":true,"eval_count":42}\n'
)


def test_ollama_stream_counts_and_times() -> None:
    p = StreamParser(api="ollama", start=10.0)
    lines = OLLAMA_STREAM.splitlines(keepends=True)
    for i, line in enumerate(lines):
        p.feed(line, 11.0 + i)
    p.finish()
    assert p.error is None and p.done
    assert p.frames == 5
    assert p.text_frames == 3  # "a", "b", thinking "t"; empty content is not text
    assert p.first_text == 11.0
    assert p.itls == [2.0, 1.0]  # 11 -> 13 -> 14
    assert p.reported_tokens == 42


def test_generate_frames_use_response() -> None:
    p = StreamParser(api="ollama", start=0.0)
    p.feed(b'{"response":"x","done":false}\n{"response":"","done":true}', 1.0)
    p.finish()  # the unterminated last line is still read
    assert (p.error, p.done, p.text_frames, p.reported_tokens) == (None, True, 1, None)


@given(st.lists(st.integers(min_value=0, max_value=len(OLLAMA_STREAM)), max_size=12))
def test_any_split_of_the_bytes_parses_the_same(cuts: list[int]) -> None:
    points = sorted({0, len(OLLAMA_STREAM), *cuts})
    p = StreamParser(api="ollama", start=0.0)
    for a, b in itertools.pairwise(points):
        p.feed(OLLAMA_STREAM[a:b], 1.0)
    p.finish()
    assert (p.error, p.frames, p.text_frames, p.reported_tokens) == (None, 5, 3, 42)


def test_frames_in_one_read_share_its_timestamp() -> None:
    p = StreamParser(api="ollama", start=0.0)
    p.feed(OLLAMA_STREAM, 5.0)
    assert p.first_text == 5.0 and p.itls == [0.0, 0.0]


@pytest.mark.parametrize(("data", "error"), [
    (b'{"message":{"content":"a"},"done":false}\n\n', "blank line in NDJSON stream"),
    (b'{"error":"boom"}\n', "stream error: boom"),
    (b'{"message":{"content":"a"},"done":false}\n', "stream ended before done:true"),
    (b"not json\n", "bad NDJSON line"),
])
def test_ollama_stream_errors(data: bytes, error: str) -> None:
    p = StreamParser(api="ollama", start=0.0)
    p.feed(data, 1.0)
    if p.error is None:
        p.finish()
    assert p.error is not None and p.error.startswith(error)


def test_ollama_lines_after_done_are_ignored() -> None:
    # ollama-openai-proxy ends each stream with two done lines; the first one counts
    p = StreamParser(api="ollama", start=0.0)
    p.feed(b'{"response":"a","done":false}\n{"response":"","done":true,"eval_count":1}\n'
           b'{"response":"","done":true}\n', 1.0)
    p.finish()
    assert (p.error, p.frames, p.reported_tokens) == (None, 2, 1)


SSE_STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b": comment\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"reasoning":"r"}}]}\n\n'
    b'data:{"choices":[{"index":0,"text":"c"}]}\r\n\r\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)


def test_openai_stream_counts_and_times() -> None:
    p = StreamParser(api="openai", start=0.0)
    for i, line in enumerate(SSE_STREAM.splitlines(keepends=True)):
        p.feed(line, float(i))
    p.finish()
    assert p.error is None and p.done
    assert p.frames == 6  # every data event but [DONE]
    assert p.text_frames == 3
    assert p.first_text == 4.0  # line 4 ("a"); the role frame has no text
    assert p.itls == [2.0, 2.0]
    assert p.reported_tokens == 3


@pytest.mark.parametrize(("data", "error"), [
    (b'data: {"error":{"message":"boom","code":500}}\n\n', "stream error: boom"),
    (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', "stream ended before data: [DONE]"),
    (b"data: {oops\n\n", "bad SSE data"),
])
def test_openai_stream_errors(data: bytes, error: str) -> None:
    p = StreamParser(api="openai", start=0.0)
    p.feed(data, 1.0)
    if p.error is None:
        p.finish()
    assert p.error is not None and p.error.startswith(error)


def test_whole_replies() -> None:
    assert parse_whole("ollama", b'{"message":{"content":"hi"},"done":true,"eval_count":2}') \
        .reported_tokens == 2
    assert parse_whole("ollama", b'{"response":"hi","done":false}').error == \
        "reply without done:true"
    assert parse_whole("ollama", b'{"error":"nope"}').error == "error: nope"
    oai = parse_whole("openai", b'{"choices":[{"message":{"content":"hi"}}],'
                                b'"usage":{"completion_tokens":5}}')
    assert (oai.has_text, oai.reported_tokens, oai.error) == (True, 5, None)
    assert parse_whole("openai", b'{"error":{"message":"bad"}}').error == "error: bad"
    assert (parse_whole("openai", b"[").error or "").startswith("bad JSON reply")
