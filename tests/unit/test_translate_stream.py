"""SSE parsing and NDJSON accumulation, replaying recorded vLLM transcripts (tests/data/sse)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vllama.errors import UpstreamError, VllamaError
from vllama.translate import (
    ModelCaps,
    SSEDecoder,
    StreamAccumulator,
    chat_accumulator,
    decode_chat,
    decode_event,
    decode_generate,
    error_from_upstream,
    error_line,
    generate_accumulator,
    special_reply,
    stream_error,
)

SSE_DIR = Path(__file__).resolve().parent.parent / "data" / "sse"
T0 = 1_763_805_600_000_000_000
STEP = 1_000_000  # the fake clock advances 1 ms per reading


def clock() -> Callable[[], int]:
    counter = itertools.count(T0 + STEP, STEP)
    return lambda: next(counter)


def transcript(name: str) -> bytes:
    return (SSE_DIR / name).read_bytes()


def pieces(data: bytes, size: int) -> list[bytes]:
    if size <= 0:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


def replay(name: str, *, split: int = 0, **kw: Any) -> tuple[list[dict[str, Any]], bool]:
    """Run a transcript through SSEDecoder + StreamAccumulator; return the NDJSON objects
    (an error becomes the final {"error"} line, as the gateway writes it) and sse.done."""
    sse = SSEDecoder()
    opts: dict[str, Any] = {"model": "tiny:latest", "chat": True, "t0_ns": T0, "now_ns": clock()}
    opts.update(kw)
    acc = StreamAccumulator(**opts)
    acc.upstream_sent()
    out: list[bytes] = []
    try:
        for piece in pieces(transcript(name), split):
            for ev in sse.feed(piece):
                line = acc.feed(ev)
                if line is not None:
                    out.append(line)
        for ev in sse.close():
            line = acc.feed(ev)
            if line is not None:
                out.append(line)
        out.append(acc.finish())
    except VllamaError as err:
        out.append(error_line(err.message))
    if opts.get("stream", True):
        for line in out:
            assert line.endswith(b"\n") and line.count(b"\n") == 1, line  # no blank lines
        return [json.loads(line) for line in out], sse.done
    return [json.loads(out[-1])], sse.done


ALL = sorted(p.name for p in SSE_DIR.glob("*.txt"))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("split", [1, 7, 64])
def test_chunk_boundaries_do_not_matter(name: str, split: int) -> None:
    # (sse.done may differ on error transcripts: a whole-body feed parses [DONE] first)
    assert replay(name, split=split)[0] == replay(name)[0]


def test_chat_plain_without_usage() -> None:
    lines, done = replay("chat_plain.txt")
    assert done
    assert "".join(x["message"]["content"] for x in lines) == "Hello! How can I help?"
    assert len(lines) == 8  # 7 deltas (empty first/last skipped) + final
    for x in lines:
        assert x["model"] == "tiny:latest"
        assert x["message"]["role"] == "assistant"
        assert x["created_at"].endswith("Z")
    assert all(x["done"] is False for x in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 7  # estimated from deltas: no usage chunk
    assert "prompt_eval_count" not in final


def test_chat_usage_and_durations() -> None:
    lines, _ = replay("chat_usage.txt")
    final = lines[-1]
    # clock readings (ms after T0): upstream_sent 1, then one per output event (2..6),
    # finish 7
    assert final["prompt_eval_count"] == 14 and final["eval_count"] == 5
    assert final["load_duration"] == 1 * STEP
    assert final["prompt_eval_duration"] == 1 * STEP
    assert final["eval_duration"] == 5 * STEP
    assert final["total_duration"] == 7 * STEP
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
    assert lines[0]["created_at"] == "2025-11-22T10:00:00.002Z"


def test_load_duration_at_least_one_ns() -> None:
    sse = SSEDecoder()
    now = clock()
    acc = StreamAccumulator(model="m", chat=False, t0_ns=T0, now_ns=now)
    acc.upstream_sent(T0)
    for ev in sse.feed(transcript("completions_raw.txt")):
        acc.feed(ev)
    assert json.loads(acc.finish())["load_duration"] == 1


@pytest.mark.parametrize("name", ["chat_reasoning.txt", "chat_reasoning_content.txt"])
def test_reasoning_to_thinking(name: str) -> None:
    lines, _ = replay(name)
    thinking = "".join(x["message"].get("thinking", "") for x in lines)
    content = "".join(x["message"]["content"] for x in lines)
    assert thinking in ("Simple sum.", "Thinking.")
    assert content in ("4", "Done")
    assert lines[0]["message"]["content"] == ""  # content always present


def test_reasoning_dropped_when_think_false() -> None:
    lines, _ = replay("chat_reasoning.txt", think=False)
    assert all("thinking" not in x["message"] for x in lines)
    assert [x["message"]["content"] for x in lines] == ["4", ""]
    # the reasoning still counts as the first output for the timings
    assert lines[-1]["prompt_eval_duration"] == STEP


def test_generate_reasoning() -> None:
    lines, _ = replay("chat_reasoning.txt", chat=False)
    assert lines[0] == {"model": "tiny:latest", "created_at": lines[0]["created_at"],
                        "response": "", "thinking": "Simple", "done": False}
    assert "message" not in lines[-1] and lines[-1]["response"] == ""


def test_tool_calls_emitted_complete_on_final_chunk() -> None:
    lines, _ = replay("chat_tool_calls.txt", has_tools=True)
    assert len(lines) == 1  # nothing to show before the end
    final = lines[0]
    assert final["done_reason"] == "stop"  # not tool_calls
    assert final["message"]["tool_calls"] == [
        {"id": "chatcmpl-tool-5d0c9e8f2b7a4b1c",
         "function": {"index": 0, "name": "get_weather",
                      "arguments": {"city": "Tokyo", "unit": "celsius"}}},
        {"id": "chatcmpl-tool-77aa", "function": {"index": 1, "name": "get_time",
                                                  "arguments": {}}},
    ]
    assert final["prompt_eval_count"] == 169 and final["eval_count"] == 15


def test_tool_calls_aggregate_only_with_tools() -> None:
    [obj], _ = replay("chat_tool_calls.txt", stream=False, has_tools=True)
    assert len(obj["message"]["tool_calls"]) == 2
    [obj], _ = replay("chat_tool_calls.txt", stream=False, has_tools=False)
    assert "tool_calls" not in obj["message"]


def test_tool_call_without_id_gets_one_and_bad_arguments_fail() -> None:
    def ev(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    data = ev({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
        "name": "f", "arguments": '{"a":'}}]}}]})
    acc = StreamAccumulator(model="m", chat=True, t0_ns=T0, now_ns=clock())
    for e in SSEDecoder().feed(data + ev({"choices": [{"delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "1}"}}]}}]})):
        acc.feed(e)
    calls = json.loads(acc.finish())["message"]["tool_calls"]
    assert calls[0]["function"] == {"index": 0, "name": "f", "arguments": {"a": 1}}
    assert calls[0]["id"].startswith("call_") and len(calls[0]["id"]) == 13
    acc = StreamAccumulator(model="m", chat=True, t0_ns=T0, now_ns=clock())
    for e in SSEDecoder().feed(data):
        acc.feed(e)
    with pytest.raises(UpstreamError, match='invalid tool call arguments for \'f\''):
        acc.finish()


def test_length_finish() -> None:
    lines, _ = replay("chat_length.txt")
    assert lines[-1]["done_reason"] == "length"


def test_aggregate_chat() -> None:
    [obj], _ = replay("chat_reasoning.txt", stream=False)
    assert obj["message"] == {"role": "assistant", "content": "4", "thinking": "Simple sum."}
    assert obj["done"] is True and obj["eval_count"] == 9 and obj["prompt_eval_count"] == 12


def test_chat_logprobs_stream_and_aggregate() -> None:
    lines, _ = replay("chat_logprobs.txt", logprobs=True)
    assert lines[0]["logprobs"] == [{
        "token": "Hi", "logprob": -0.25, "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                         {"token": "Hello", "logprob": -1.5,
                          "bytes": [72, 101, 108, 108, 111]}]}]
    [obj], _ = replay("chat_logprobs.txt", logprobs=True, stream=False)
    assert [x["token"] for x in obj["logprobs"]] == ["Hi", " there"]
    lines, _ = replay("chat_logprobs.txt")
    assert all("logprobs" not in x for x in lines)


def test_completions_stream() -> None:
    lines, _ = replay("completions_raw.txt", chat=False)
    assert [x["response"] for x in lines] == [" Paris", " is", " the", " capital", ""]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 4
    [obj], _ = replay("completions_raw.txt", chat=False, stream=False)
    assert obj["response"] == " Paris is the capital" and obj["done"] is True


def test_completions_logprobs() -> None:
    lines, _ = replay("completions_logprobs.txt", chat=False, logprobs=True)
    assert lines[0]["logprobs"] == [{
        "token": " Paris", "logprob": -0.1,
        "top_logprobs": [{"token": " Paris", "logprob": -0.1},
                         {"token": " London", "logprob": -2.3}]}]


def test_error_mid_stream() -> None:
    lines, _ = replay("chat_error_midstream.txt")
    assert [x["message"]["content"] for x in lines[:-1]] == ["Once", " upon"]
    assert lines[-1] == {"error": "EngineCore encountered an issue. See stack trace (above) "
                                  "for the root cause."}


def test_error_old_shape() -> None:
    lines, _ = replay("chat_error_old_shape.txt")
    assert lines[-1] == {"error": "The decoder prompt (length 5000) is longer than the maximum "
                                  "model length of 2048."}


@pytest.mark.parametrize(
    ("payload", "message", "status"),
    [
        (b'{"error":{"message":"boom","type":"InternalServerError","code":500}}', "boom", 500),
        (b'{"error":{"message":"bad","code":400}}', "bad", 400),
        (b'{"error":{"message":"x","code":"weird"}}', "x", 500),
        (b'{"error":"plain"}', "plain", 500),
        (b'{"object":"error","message":"old","code":429}', "old", 429),
    ],
)
def test_stream_error(payload: bytes, message: str, status: int) -> None:
    err = stream_error(decode_event(payload))
    assert err is not None and (err.message, err.status) == (message, status)


def test_normal_event_is_not_an_error() -> None:
    assert stream_error(decode_event(b'{"choices":[]}')) is None


def test_sse_parser_details() -> None:
    sse = SSEDecoder()
    assert sse.feed(b"data: {\"choices\":[]") == []
    assert len(sse.feed(b"}\n\n: comment\nevent: x\nid: 3\nretry: 10\n\ndata:{}\r\n")) == 2
    assert not sse.done
    assert sse.feed(b"data: [DON") == []
    assert sse.feed(b"E]\n\n") == [] and sse.done
    tail = SSEDecoder()
    assert len(tail.feed(b'data: {"id":"a"}')) == 0
    assert [e.id for e in tail.close()] == ["a"]
    with pytest.raises(UpstreamError):
        SSEDecoder().feed(b"data: {not json}\n")


def test_unicode_split_inside_code_point() -> None:
    data = transcript("chat_unicode.txt")
    cut = data.index("🌍".encode()) + 2
    sse = SSEDecoder()
    events = sse.feed(data[:cut]) + sse.feed(data[cut:])
    contents = [e.choices[0].delta.content for e in events if e.choices and e.choices[0].delta]
    assert "héllo 🌍" in contents


def test_error_line_and_special_replies() -> None:
    assert error_line("boom") == b'{"error":"boom"}\n'
    assert msgspec.json.decode(special_reply("m", "2025-01-01T00:00:00Z", "load", chat=False)) == {
        "model": "m", "created_at": "2025-01-01T00:00:00Z", "response": "", "done": True,
        "done_reason": "load"}
    assert msgspec.json.decode(special_reply("m", "t", "unload", chat=True)) == {
        "model": "m", "created_at": "t", "message": {"role": "assistant", "content": ""},
        "done": True, "done_reason": "unload"}


def test_ollama_python_client_accepts_our_lines() -> None:
    from ollama import ChatResponse, GenerateResponse

    for line in replay("chat_tool_calls.txt", has_tools=True)[0]:
        ChatResponse(**line)
    for line in replay("chat_reasoning.txt")[0]:
        ChatResponse(**line)
    for line in replay("completions_raw.txt", chat=False)[0]:
        GenerateResponse(**line)
    [obj], _ = replay("chat_logprobs.txt", logprobs=True, stream=False)
    assert ChatResponse(**obj).message.content == "Hi there"


@pytest.mark.parametrize(
    ("status", "body", "message", "out_status"),
    [
        (404, b'{"error":{"message":"The model `nope` does not exist.","type":"NotFoundError",'
              b'"code":404}}', "The model `nope` does not exist.", 404),
        (400, b'{"object":"error","message":"too long","type":"BadRequestError","code":400}',
         "too long", 400),
        (404, b'{"detail":"Not Found"}', "Not Found", 404),
        (422, b'{"detail":[{"loc":["body"],"msg":"bad"}]}',
         '[{"loc":["body"],"msg":"bad"}]', 422),
        (503, b"Service Unavailable", "Service Unavailable", 503),
        (500, b"", "upstream returned 500", 500),
        (302, b"", "upstream returned 302", 502),
    ],
)
def test_error_from_upstream(status: int, body: bytes, message: str, out_status: int) -> None:
    err = error_from_upstream(status, body)
    assert (err.message, err.status) == (message, out_status)


def test_accumulator_factories() -> None:
    req = decode_chat(b'{"model":"q","messages":[{"role":"user"}],"tools":[{}],"logprobs":true,'
                      b'"stream":false,"think":false}')
    acc = chat_accumulator(req, ModelCaps(thinking=True, tools=True), t0_ns=T0, now_ns=clock())
    assert (acc.chat, acc.stream, acc.has_tools, acc.model) == (True, False, True, "q")
    for ev in SSEDecoder().feed(transcript("chat_reasoning.txt")):
        acc.feed(ev)
    assert "thinking" not in json.loads(acc.finish())["message"]
    greq = decode_generate(b'{"model":"q","prompt":"x"}')
    gacc = generate_accumulator(greq, ModelCaps(thinking=True), t0_ns=T0, now_ns=clock())
    assert (gacc.chat, gacc.stream) == (False, True)
    lines = [gacc.feed(ev) for ev in SSEDecoder().feed(transcript("chat_reasoning.txt"))]
    thinking = "".join(json.loads(x).get("thinking", "") for x in lines if x is not None)
    assert thinking == "Simple sum."  # unset think on a thinking model means on
