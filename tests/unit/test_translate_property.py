"""Property: decoding + mapping arbitrary JSON never raises anything but VllamaError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllama.errors import VllamaError
from vllama.translate import (
    ModelCaps,
    chat_to_openai,
    decode_chat,
    decode_copy,
    decode_create,
    decode_delete,
    decode_embed,
    decode_embeddings,
    decode_generate,
    decode_pull,
    decode_push,
    decode_show,
    embed_to_openai,
    embeddings_to_openai,
    generate_to_openai,
)

CAPS = [ModelCaps(), ModelCaps(thinking=True, tools=True, insert_template="{prompt}|{suffix}")]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
KEYS = ["model", "prompt", "suffix", "system", "template", "context", "stream", "raw", "format",
        "keep_alive", "images", "options", "think", "logprobs", "top_logprobs", "messages",
        "tools", "input", "dimensions", "truncate", "name", "source", "destination", "from"]
fields = st.sampled_from(KEYS) | st.text(max_size=6)
message = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "Assistant", "tool", "system"]) | json_values,
    "content": st.text(max_size=10) | json_values,
    "images": st.lists(st.sampled_from(["iVBORw0KGgo=", "abc", "/9j/4AAQ"]), max_size=2),
    "tool_calls": st.lists(st.fixed_dictionaries({}, optional={
        "id": st.text(max_size=4), "function": st.fixed_dictionaries({}, optional={
            "name": st.text(max_size=5) | json_values, "arguments": json_values})}), max_size=2),
    "tool_name": st.text(max_size=4), "tool_call_id": st.text(max_size=4),
})
option_values = st.dictionaries(
    st.sampled_from(["num_predict", "temperature", "top_k", "stop", "seed", "use_mmap", "x"]),
    json_values, max_size=4)
bodies = st.dictionaries(fields, json_values, max_size=8) | st.fixed_dictionaries(
    {"model": st.just("m")},
    optional={"messages": st.lists(message, max_size=3), "options": option_values,
              "prompt": st.text(max_size=8), "raw": st.booleans(), "suffix": st.text(max_size=3),
              "think": json_values, "keep_alive": json_values, "format": json_values,
              "tools": st.lists(json_values, max_size=2), "input": json_values})


def _run(body: bytes) -> None:
    decoders: list[Callable[[bytes], Any]] = [decode_pull, decode_push, decode_delete,
                                              decode_copy, decode_create, decode_show]
    for dec in decoders:
        try:
            dec(body)
        except VllamaError:
            pass
    for caps in CAPS:
        try:
            chat_to_openai(decode_chat(body), "up", caps)
        except VllamaError:
            pass
        try:
            generate_to_openai(decode_generate(body), "up", caps)
        except VllamaError:
            pass
    try:
        embed_to_openai(decode_embed(body), "up")
    except VllamaError:
        pass
    try:
        embeddings_to_openai(decode_embeddings(body), "up")
    except VllamaError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_structured_bodies_only_raise_vllama_errors(body: dict[str, Any]) -> None:
    _run(msgspec.json.encode(body))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_only_raises_vllama_errors(value: Any) -> None:
    _run(msgspec.json.encode(value))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_only_raise_vllama_errors(data: bytes) -> None:
    _run(data)
