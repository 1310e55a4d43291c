"""Ollama request -> vLLM request mapping (reference §5, §6, §8.2)."""

from __future__ import annotations

import base64
import math
from typing import Any

import msgspec
import pytest

from vllama.errors import BadRequest, VllamaError
from vllama.translate import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    ModelCaps,
    chat_action,
    chat_to_openai,
    decode_chat,
    decode_embed,
    decode_embeddings,
    decode_generate,
    embed_inputs,
    embed_to_openai,
    embeddings_to_openai,
    fill_max_tokens,
    generate_action,
    generate_to_openai,
    normalize_embeddings,
    sniff_image_mime,
)

PLAIN = ModelCaps()
THINKER = ModelCaps(thinking=True, tools=True)
FIM = ModelCaps(insert_template="<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 8).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 12).decode()
GIF = base64.b64encode(b"GIF89a" + b"\0" * 10).decode()
WEBP = base64.b64encode(b"RIFF\0\0\0\0WEBPVP8 ").decode()


def enc(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def chat(body: dict[str, Any], caps: ModelCaps = PLAIN) -> dict[str, Any]:
    return chat_to_openai(decode_chat(enc({"model": "m", **body})), "up/m", caps)


def generate(body: dict[str, Any], caps: ModelCaps = PLAIN) -> tuple[str, dict[str, Any]]:
    return generate_to_openai(decode_generate(enc({"model": "m", **body})), "up/m", caps)


def test_chat_minimal() -> None:
    body = chat({"messages": [{"role": "USER", "content": "hi"}], "tools": []})
    assert body == {
        "model": "up/m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {}),
        ({"num_predict": 100}, {"max_tokens": 100}),
        ({"num_predict": -1}, {}),
        ({"num_predict": -2}, {}),
        ({"num_predict": 0}, {}),
        ({"temperature": 0, "top_p": 0.9, "min_p": 0.05}, {"temperature": 0.0, "top_p": 0.9,
                                                            "min_p": 0.05}),
        ({"top_k": 40}, {"top_k": 40}),
        ({"top_k": 0}, {}),
        ({"seed": 42}, {"seed": 42}),
        ({"seed": -1}, {}),
        ({"stop": ["\n", "User:"]}, {"stop": ["\n", "User:"]}),
        ({"stop": []}, {}),
        ({"repeat_penalty": 1.1}, {"repetition_penalty": 1.1}),
        ({"presence_penalty": 0.5, "frequency_penalty": 0.25},
         {"presence_penalty": 0.5, "frequency_penalty": 0.25}),
        ({"num_ctx": 8192, "typical_p": 0.5, "repeat_last_n": 64, "num_keep": 4,
          "num_batch": 512, "num_gpu": 99, "num_thread": 8, "mirostat": 1, "tfs_z": 1.0,
          "use_mmap": True, "main_gpu": 0}, {}),
        ({"temperature": None, "mirostat": None}, {}),
    ],
)
def test_chat_options(options: dict[str, Any], expected: dict[str, Any]) -> None:
    body = chat({"messages": [{"role": "user", "content": "x"}], "options": options})
    extra = {k: v for k, v in body.items()
             if k not in ("model", "messages", "stream", "stream_options")}
    assert extra == expected


@pytest.mark.parametrize(
    ("n", "engine", "max_tokens"),
    [
        # without num_predict: the engine's context (vLLM would stop at 16 tokens)
        (None, 2048, 2048), (-1, 2048, 2048), (-2, 2048, 2048), (0, 2048, 2048),
        (50, 2048, 50),
        (5000, 2048, 2048),  # more than the context is vLLM's 400: clamped
        (None, 0, None), (50, 0, 50),  # the engine's context unknown: nothing to fill in
    ],
)
def test_completions_get_max_tokens_from_the_engine(n: int | None, engine: int,
                                                    max_tokens: int | None) -> None:
    opts = {} if n is None else {"num_predict": n}
    path, body = generate({"prompt": "x", "raw": True, "options": opts})
    assert path == COMPLETIONS_PATH
    fill_max_tokens(path, body, engine)
    assert body.get("max_tokens") == max_tokens


@pytest.mark.parametrize(("n", "max_tokens"), [(None, None), (-1, None), (50, 50),
                                               (5000, 2048)])
def test_chat_max_tokens_only_when_asked(n: int | None, max_tokens: int | None) -> None:
    body = chat({"messages": [{"role": "user"}],
                 "options": {} if n is None else {"num_predict": n}})
    fill_max_tokens(CHAT_PATH, body, 2048)
    assert body.get("max_tokens") == max_tokens


def test_bad_option_type_is_500() -> None:
    with pytest.raises(VllamaError) as exc:
        chat({"messages": [{"role": "user"}], "options": {"temperature": "x"}})
    assert exc.value.status == 500


def test_format_to_response_format() -> None:
    body = chat({"messages": [{"role": "user"}], "format": "json"})
    assert body["response_format"] == {"type": "json_object"}
    _, body = generate({"prompt": "x", "format": {"type": "object"}})
    assert enc(body["response_format"]) == (
        b'{"type":"json_schema","json_schema":{"name":"schema","schema":{"type":"object"}}}')
    with pytest.raises(BadRequest, match="invalid format"):
        chat({"messages": [{"role": "user"}], "format": "yaml"})


def test_images_become_parts_with_sniffed_mime() -> None:
    body = chat({"messages": [{"role": "user", "content": "what?", "images": [PNG, JPEG]}]})
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]
    body = chat({"messages": [{"role": "user", "images": [GIF]}]})
    assert body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{GIF}"}}]


@pytest.mark.parametrize(
    ("b64", "mime"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"),
     ("AAAA", "image/jpeg"), ("", "image/jpeg")],
)
def test_sniff(b64: str, mime: str) -> None:
    assert sniff_image_mime(b64) == mime


def test_history_tool_calls_and_results() -> None:
    body = chat({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "thinking": "let me look",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
                        {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "ok",
         "tool_calls": [{"id": "lc-1", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "content": "r", "tool_call_id": "lc-1"},
    ]})
    msgs = body["messages"]
    assert msgs[1] == {
        "role": "assistant", "content": "",
        "tool_calls": [
            {"id": "call00100", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}},
            {"id": "call00101", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    assert "thinking" not in msgs[1]
    assert msgs[2] == {"role": "tool", "content": "12:00", "tool_call_id": "call00101",
                       "name": "get_time"}
    assert msgs[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call00100",
                       "name": "get_weather"}
    assert msgs[4]["tool_calls"][0]["id"] == "lc-1"
    assert msgs[4]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    assert msgs[5] == {"role": "tool", "content": "r", "tool_call_id": "lc-1", "name": "f"}


def test_tools_forwarded_raw_when_non_empty() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer", "minimum": 0}}}}}
    body = chat({"messages": [{"role": "user"}], "tools": [tool]}, THINKER)
    assert msgspec.json.decode(enc(body["tools"])) == [tool]
    with pytest.raises(BadRequest) as exc:
        chat({"messages": [{"role": "user"}], "tools": [tool]})
    assert exc.value.message == "registry.ollama.ai/library/m:latest does not support tools"


@pytest.mark.parametrize(
    ("think", "caps", "expected"),
    [
        (None, THINKER, {"chat_template_kwargs": {"enable_thinking": True}}),
        (True, THINKER, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, THINKER, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("high", THINKER, {"chat_template_kwargs": {"enable_thinking": True},
                           "reasoning_effort": "high"}),
        ("low", ModelCaps(thinking=True, think_kwarg="thinking"),
         {"chat_template_kwargs": {"thinking": True}, "reasoning_effort": "low"}),
        # a template that always thinks has no switch: nothing to send it
        (False, ModelCaps(thinking=True, think_kwarg=None), {}),
        ("high", ModelCaps(thinking=True, think_kwarg=None), {"reasoning_effort": "high"}),
        (None, PLAIN, {}),
        (False, PLAIN, {}),
    ],
)
def test_think_mapping(think: Any, caps: ModelCaps, expected: dict[str, Any]) -> None:
    body = chat({"messages": [{"role": "user"}], "think": think}, caps)
    got = {k: body[k] for k in ("chat_template_kwargs", "reasoning_effort") if k in body}
    assert got == expected


@pytest.mark.parametrize("think", [True, "high", "max"])
def test_think_on_non_thinking_model(think: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        chat({"messages": [{"role": "user"}], "think": think})
    assert exc.value.message == '"m" does not support thinking'
    with pytest.raises(BadRequest, match=r'^"m" does not support thinking$'):
        generate({"prompt": "x", "think": think})


def test_logprobs_mapping() -> None:
    body = chat({"messages": [{"role": "user"}], "logprobs": True, "top_logprobs": 3})
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    body = chat({"messages": [{"role": "user"}], "logprobs": True})
    assert body["logprobs"] is True and "top_logprobs" not in body
    body = chat({"messages": [{"role": "user"}], "top_logprobs": 3})
    assert "logprobs" not in body
    _, body = generate({"prompt": "x", "raw": True, "logprobs": True, "top_logprobs": 2})
    assert body["logprobs"] == 2


def test_generate_chat_path() -> None:
    path, body = generate({"prompt": "hello", "system": "be brief", "images": [PNG],
                           "template": "ignored", "context": [1, 2]})
    assert path == CHAT_PATH
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "hello"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "max_tokens" not in body


def test_generate_raw() -> None:
    path, body = generate({"prompt": "<s>hi", "raw": True, "think": True},
                          ModelCaps(thinking=True))
    assert path == COMPLETIONS_PATH
    assert body == {"model": "up/m", "prompt": "<s>hi", "stream": True,
                    "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(
    "extra", [{"system": "s"}, {"template": "t"}, {"context": [1]}]
)
def test_raw_rejects_template_system_context(extra: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as exc:
        generate({"prompt": "x", "raw": True, **extra})
    assert exc.value.message == "raw mode does not support template, system, or context"


def test_suffix_fim() -> None:
    path, body = generate({"prompt": "def f(", "suffix": "):\n  pass"}, FIM)
    assert path == COMPLETIONS_PATH
    assert body["prompt"] == "<|fim_prefix|>def f(<|fim_suffix|>):\n  pass<|fim_middle|>"
    assert "suffix" not in body
    with pytest.raises(BadRequest) as exc:
        generate({"prompt": "a", "suffix": "b"})
    assert exc.value.message == "registry.ollama.ai/library/m:latest does not support insert"


def test_capability_errors() -> None:
    emb = ModelCaps(completion=False, embedding=True)
    with pytest.raises(BadRequest, match=r'^"m" does not support generate$'):
        generate({"prompt": "x"}, emb)
    with pytest.raises(BadRequest, match=r'^"m" does not support chat$'):
        chat({"messages": [{"role": "user"}]}, emb)


@pytest.mark.parametrize(
    ("body", "action"),
    [
        ({}, "load"), ({"prompt": ""}, "load"), ({"keep_alive": 0}, "unload"),
        ({"keep_alive": "0s"}, "unload"), ({"keep_alive": 0.0}, "unload"),
        ({"keep_alive": "5m"}, "load"), ({"prompt": "x", "keep_alive": 0}, "generate"),
    ],
)
def test_generate_action(body: dict[str, Any], action: str) -> None:
    assert generate_action(decode_generate(enc({"model": "m", **body}))) == action


@pytest.mark.parametrize(
    ("body", "action"),
    [({}, "load"), ({"messages": []}, "load"), ({"messages": None, "keep_alive": "0"}, "unload"),
     ({"messages": [{"role": "user"}]}, "generate")],
)
def test_chat_action(body: dict[str, Any], action: str) -> None:
    assert chat_action(decode_chat(enc({"model": "m", **body}))) == action


@pytest.mark.parametrize(
    ("raw", "inputs"),
    [(None, []), ("", []), ([], []), ("a", ["a"]), (["a", ""], ["a", ""]), ([""], [""])],
)
def test_embed_inputs(raw: Any, inputs: list[str]) -> None:
    assert embed_inputs(raw) == inputs


@pytest.mark.parametrize("raw", [1, [1], ["a", None], {"a": 1}, True, [["a"]]])
def test_embed_invalid_input(raw: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        embed_inputs(raw)
    assert exc.value.message == "invalid input type"


def test_embed_to_openai() -> None:
    req = decode_embed(b'{"model":"e","input":["a","b"],"dimensions":2,"options":{"x":null}}')
    assert embed_to_openai(req, "up/e") == {
        "model": "up/e", "input": ["a", "b"], "encoding_format": "float",
        "truncate_prompt_tokens": -1}
    req = decode_embed(b'{"model":"e","input":"a","truncate":false}')
    assert embed_to_openai(req, "up/e") == {"model": "up/e", "input": ["a"],
                                            "encoding_format": "float"}
    req = decode_embed(b'{"model":"e","input":"a","options":{"num_ctx":"x"}}')
    with pytest.raises(VllamaError) as exc:
        embed_to_openai(req, "up/e")
    assert exc.value.status == 500
    req2 = decode_embeddings(b'{"model":"e","prompt":"hi"}')
    assert embeddings_to_openai(req2, "up/e") == {"model": "up/e", "input": ["hi"],
                                                  "encoding_format": "float"}


def test_normalize_embeddings() -> None:
    out = normalize_embeddings([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], None)
    assert out[0] == pytest.approx([3 / 13, 4 / 13, 12 / 13])
    assert out[1] == [0.0, 0.0, 0.0]
    out = normalize_embeddings([[3.0, 4.0, 12.0]], 2)
    assert out[0] == pytest.approx([0.6, 0.8])
    assert math.hypot(*out[0]) == pytest.approx(1.0)
    assert normalize_embeddings([[1.0, 1.0]], 5)[0] == pytest.approx([2 ** -0.5] * 2)
    assert normalize_embeddings([[2.0, 0.0]], 0)[0] == [1.0, 0.0]
