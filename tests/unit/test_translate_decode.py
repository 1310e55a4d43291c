"""decode_* : Ollama's exact 400s for bodies (reference §1.3, §3.7-3.10)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from vllama.errors import BadRequest, VllamaError
from vllama.translate import (
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
    parse_format,
)

ALL: list[Callable[[bytes], Any]] = [
    decode_generate, decode_chat, decode_embed, decode_embeddings, decode_show, decode_pull,
    decode_push, decode_delete, decode_copy, decode_create,
]


@pytest.mark.parametrize("decode", ALL)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"  \n", "missing request body"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (b"{", "unexpected EOF"),
        (b'{"model":"a"', "unexpected EOF"),
        (b'{"model" "a"}', "invalid character '\"' after object key"),
        (b'{"model":"a" "b":1}', "invalid character '\"' after object key:value pair"),
        (b"{model:1}", "invalid character 'm' looking for beginning of object key string"),
        (b'{"a":[1,]}', "invalid character ']' looking for beginning of value"),
        (b'{"a":[1 2]}', "invalid character '2' after array element"),
        (b'{"a":tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b'{"a":nul}', "invalid character '}' in literal null (expecting 'l')"),
        (b'{"a":-}', "invalid character '}' in numeric literal"),
        (b'{"a":1.}', "invalid character '}' after decimal point in numeric literal"),
        (b'{"a":1e}', "invalid character '}' in exponent of numeric literal"),
        (b'{"a":"\\q"}', "invalid character 'q' in string escape code"),
        (b'{"a":"\\u12x4"}', "invalid character 'x' in \\u hexadecimal character escape"),
        (b'{"a":"\n"}', "invalid character '\\n' in string literal"),
        (b"{'a':1}", "invalid character '\\'' looking for beginning of object key string"),
    ],
)
def test_syntax_errors(decode: Callable[[bytes], Any], body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        decode(body)
    assert exc.value.message == message
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("decode", "body", "message"),
    [
        (decode_generate, b'{"model":"m","prompt":1}',
         "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type "
         "string"),
        (decode_generate, b'{"model":"m","stream":"yes"}',
         "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"),
        (decode_generate, b'{"model":"m","top_logprobs":1.5}',
         "json: cannot unmarshal number 1.5 into Go struct field GenerateRequest.top_logprobs "
         "of type int"),
        (decode_generate, b'{"model":"m","context":"x"}',
         "json: cannot unmarshal string into Go struct field GenerateRequest.context of type "
         "[]int"),
        (decode_generate, b'{"model":"m","options":[1]}',
         "json: cannot unmarshal array into Go struct field GenerateRequest.options of type "
         "map[string]interface {}"),
        (decode_generate, b'{"model":"m","images":"abc"}',
         "json: cannot unmarshal string into Go struct field GenerateRequest.images of type "
         "[]api.ImageData"),
        (decode_generate, b'{"model":"m","images":[1]}',
         "json: cannot unmarshal number into Go struct field GenerateRequest.images of type "
         "api.ImageData"),
        (decode_generate, b'"hi"',
         "json: cannot unmarshal string into Go value of type api.GenerateRequest"),
        (decode_chat, b"[]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (decode_chat, b'{"model":"m","messages":{}}',
         "json: cannot unmarshal object into Go struct field ChatRequest.messages of type "
         "[]api.Message"),
        (decode_chat, b'{"model":"m","messages":[{"role":"user","content":5}]}',
         "json: cannot unmarshal number into Go struct field Message.messages.content of type "
         "string"),
        (decode_chat, b'{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":1}}]}]}',
         "json: cannot unmarshal number into Go struct field ToolCallFunction.messages.tool_calls"
         ".function.name of type string"),
        (decode_chat, b'{"model":"m","tools":{}}',
         "json: cannot unmarshal object into Go struct field ChatRequest.tools of type api.Tools"),
        (decode_embed, b'{"model":"m","dimensions":"4"}',
         "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions of type int"),
        (decode_show, b'{"model":1}',
         "json: cannot unmarshal number into Go struct field ShowRequest.model of type string"),
        (decode_generate, b'{"model":"m","context":[1.5]}',
         "json: cannot unmarshal number 1.5 into Go struct field GenerateRequest.context of type "
         "int"),
        (decode_create, b'{"model":"m","files":{"a.gguf":1}}',
         "json: cannot unmarshal number into Go struct field CreateRequest.files of type string"),
        (decode_create, b'{"model":"m","parameters":[]}',
         "json: cannot unmarshal array into Go struct field CreateRequest.parameters of type "
         "map[string]interface {}"),
        (decode_copy, b'{"source":true}',
         "json: cannot unmarshal bool into Go struct field CopyRequest.source of type string"),
    ],
)
def test_type_errors(decode: Callable[[bytes], Any], body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        decode(body)
    assert exc.value.message == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model":"m","keep_alive":true}', "Unsupported type: 'bool'"),
        (b'{"model":"m","keep_alive":"10"}', 'time: missing unit in duration "10"'),
        (b'{"model":"m","keep_alive":"abc"}', 'time: invalid duration "abc"'),
        (b'{"model":"m","think":"huge"}',
         'invalid think value: "huge" (must be "high", "medium", "low", "max", true, or false)'),
        (b'{"model":"m","think":1}',
         'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
        (b'{"model":"m","top_logprobs":21}', "top_logprobs must be between 0 and 20"),
        (b'{"model":"m","top_logprobs":-1}', "top_logprobs must be between 0 and 20"),
        (b'{"model":"m","images":["data:image/png;base64,AAAA"]}',
         "illegal base64 data at input byte 4"),
        (b'{"model":"m","images":["abc"]}', "illegal base64 data at input byte 0"),
        (b'{"model":"m","images":["aGVsbG8"]}', "illegal base64 data at input byte 4"),
        (b'{"model":"m","images":["aGV=sbA=="]}', "illegal base64 data at input byte 4"),
        (b'{"model":"m","images":["aGVsbA==x"]}', "illegal base64 data at input byte 8"),
    ],
)
def test_generate_value_errors(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        decode_generate(body)
    assert exc.value.message == message


def test_chat_message_images_checked() -> None:
    with pytest.raises(BadRequest, match="illegal base64 data at input byte 1"):
        decode_chat(b'{"model":"m","messages":[{"role":"user","images":["a!"]}]}')


def test_generate_accepts_go_client_body() -> None:
    # the Go CLI always sends these, empty; Go's decoder ignores unknown fields
    body = (b'{"model":"llama3.2","prompt":"","suffix":"","system":"","template":"",'
            b'"options":null,"keep_alive":"5m0s","metadata":{"x":1},"num_predict":3,'
            b'"images":["aGVs\\nbG8="],"format":null,"think":"low"}')
    req = decode_generate(body)
    assert req.model == "llama3.2"
    assert req.keep_alive == 300.0
    assert req.think == "low"
    assert parse_format(req.format) is None  # null means unset


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(b"0", 0.0), (b"0.0", 0.0), (b'"0"', 0.0), (b'"0s"', 0.0), (b"-1", math.inf),
     (b'"-1m"', math.inf), (b"1800", 1800.0), (b'"1h30m"', 5400.0), (b"null", None)],
)
def test_keep_alive_decoded(raw: bytes, seconds: float | None) -> None:
    req = decode_chat(b'{"model":"m","keep_alive":' + raw + b"}")
    assert req.keep_alive == seconds


def test_trailing_data_after_value_is_ignored_like_go_decoder() -> None:
    assert decode_generate(b'{"model":"m"}\n{"junk"').model == "m"


def test_invalid_utf8_inside_strings_is_accepted_like_go() -> None:
    req = decode_generate(b'{"model":"m","prompt":"a\xffb"}')
    assert req.prompt == "a\ufffdb"


@pytest.mark.parametrize(
    ("decode", "body", "model"),
    [
        (decode_show, b'{"model":"","name":"x"}', "x"),
        (decode_show, b'{"name":"x"}', "x"),
        (decode_show, b'{"model":"y","name":"x"}', "y"),
        (decode_pull, b'{"model":"","name":"x","insecure":false}', "x"),
        (decode_push, b'{"name":"x"}', "x"),
        (decode_delete, b'{"name":"x"}', "x"),
        (decode_create, b'{"name":"x","from":"y"}', "x"),
        (decode_delete, b"{}", ""),
        (decode_generate, b"{}", ""),
        (decode_chat, b'{"model":null}', ""),
    ],
)
def test_deprecated_name(decode: Callable[[bytes], Any], body: bytes, model: str) -> None:
    assert decode(body).model == model


def test_create_from_alias_and_copy_defaults() -> None:
    assert decode_create(b'{"model":"a","from":"b"}').from_ == "b"
    req = decode_copy(b"{}")
    assert (req.source, req.destination) == ("", "")


def test_null_means_unset() -> None:
    req = decode_chat(b'{"model":"m","messages":null,"options":null,"format":null,'
                      b'"keep_alive":null,"think":null,"stream":null,"tools":null}')
    assert req.messages is None and req.keep_alive is None and req.think is None
    assert req.stream is None


def test_errors_are_vllama_errors() -> None:
    with pytest.raises(VllamaError):
        decode_embeddings(b'{"model":"m","prompt":[1]}')


DEEP = 1000  # a 2 KB body: past the stack msgspec and the Go-text scanner recurse on


@pytest.mark.parametrize("decode", ALL)
@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"model":"m","options":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
        b'{"model":1,"format":' + b"[" * DEEP,  # a type error before the depth
        b'{"model":"m","x":' + b"[" * 300 + b"}",  # a syntax error past the depth
        b"[" * 100_000,
    ],
)
def test_deep_nesting_is_a_400(decode: Callable[[bytes], Any], body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        decode(body)
    assert info.value.message in ("invalid character '[' exceeded max depth",
                                  "invalid character '{' exceeded max depth")


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine() -> None:
    from vllama.translate.gojson import MAX_DEPTH

    inner = b"[" * (MAX_DEPTH - 2) + b"]" * (MAX_DEPTH - 2)
    req = decode_chat(b'{"model":"m","format":{"a":' + inner + b"}}")
    assert req.model == "m"
    brackets = b'"' + b"[{" * 5000 + b'\\"]"'
    assert decode_generate(b'{"model":"m","prompt":' + brackets + b"}").prompt == \
        "[{" * 5000 + '"]'
