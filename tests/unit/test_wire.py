"""Wire shapes: what is always written, what is omitted (Go-omitempty), and tolerance."""

from __future__ import annotations

import msgspec
import pytest

from vllama.translate import (
    embed_empty_reply,
    embed_reply,
    embeddings_empty_reply,
    embeddings_reply,
    vectors_from_openai,
)
from vllama.wire.ollama import (
    ChatMessageOut,
    ChatResponse,
    GenerateResponse,
    ListModel,
    ListResponse,
    ModelDetails,
    ProcessModel,
    ProcessResponse,
    ProgressResponse,
    ShowResponse,
)
from vllama.wire.openai import ErrorBody, ModelList, StreamChunk

enc = msgspec.json.encode


def test_chat_chunk_always_has_message_role_content_done() -> None:
    out = enc(ChatResponse("m", "t", ChatMessageOut("assistant", ""), False))
    assert out == (b'{"model":"m","created_at":"t","message":{"role":"assistant","content":""},'
                   b'"done":false}')


def test_generate_chunk_always_has_response() -> None:
    assert enc(GenerateResponse("m", "t", "", False)) == (
        b'{"model":"m","created_at":"t","response":"","done":false}')


def test_details_always_written() -> None:
    out = msgspec.json.decode(enc(ModelDetails()))
    assert out == {"parent_model": "", "format": "safetensors", "family": "",
                   "families": None, "parameter_size": "", "quantization_level": ""}


def test_listing_shapes() -> None:
    d = ModelDetails(family="qwen2", families=["qwen2"], context_length=2048)
    tags = ListResponse([ListModel("x:latest", "x:latest", "2025-01-01T00:00:00Z", 1, "a" * 64,
                                   d)])
    out = msgspec.json.decode(enc(tags))
    assert out["models"][0]["details"]["context_length"] == 2048
    assert "capabilities" not in out["models"][0]
    assert enc(ListResponse([])) == b'{"models":[]}'
    ps = ProcessResponse([ProcessModel("x:latest", "x:latest", 5, "a" * 64, d,
                                       "2318-01-01T00:00:00Z", 5, 2048)])
    assert msgspec.json.decode(enc(ps))["models"][0]["size_vram"] == 5


def test_show_always_has_model_info() -> None:
    out = msgspec.json.decode(enc(ShowResponse(ModelDetails(), {}, "2025-01-01T00:00:00Z")))
    assert out["model_info"] == {}
    assert "template" not in out and "capabilities" not in out


def test_progress() -> None:
    assert enc(ProgressResponse("success")) == b'{"status":"success"}'


def test_stream_chunk_tolerates_unknown_fields() -> None:
    ev = msgspec.json.decode(
        b'{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","system_'
        b'fingerprint":null,"prompt_token_ids":null,"choices":[{"index":0,"delta":{"role":'
        b'"assistant","content":"hi","annotations":[]},"logprobs":null,"finish_reason":null,'
        b'"stop_reason":null,"token_ids":null}],"usage":null,"kv_transfer_params":null}',
        type=StreamChunk)
    assert ev.choices and ev.choices[0].delta and ev.choices[0].delta.content == "hi"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":{"message":"The model `nope` does not exist.","type":"NotFoundError",'
         b'"code":404}}', "The model `nope` does not exist."),
        (b'{"object":"error","message":"old","type":"BadRequestError","code":400}', "old"),
        (b'{"detail":"Not Found"}', None),
    ],
)
def test_error_body_shapes(body: bytes, message: str | None) -> None:
    err = msgspec.json.decode(body, type=ErrorBody)
    got = err.error.message if err.error is not None and not isinstance(err.error, str) \
        else err.message
    assert got == message


def test_model_list() -> None:
    ml = msgspec.json.decode(
        b'{"object":"list","data":[{"id":"tiny","object":"model","created":1,"owned_by":"vllm",'
        b'"root":"/m","parent":null,"max_model_len":2048,"permission":[{}]}]}', type=ModelList)
    assert ml.data[0].id == "tiny" and ml.data[0].max_model_len == 2048


def test_embedding_replies() -> None:
    vecs, tokens = vectors_from_openai(
        b'{"object":"list","data":[{"index":1,"object":"embedding","embedding":[0.0,2.0]},'
        b'{"index":0,"object":"embedding","embedding":[3.0,4.0]}],"model":"e",'
        b'"usage":{"prompt_tokens":7,"total_tokens":7}}')
    assert vecs == [[3.0, 4.0], [0.0, 2.0]] and tokens == 7
    out = msgspec.json.decode(embed_reply("e", vecs, dimensions=None, prompt_eval_count=7,
                                          total_duration=10, load_duration=0))
    assert out == {"model": "e", "embeddings": [[0.6, 0.8], [0.0, 1.0]], "total_duration": 10,
                   "load_duration": 1, "prompt_eval_count": 7}
    assert embed_empty_reply("e") == b'{"model":"e","embeddings":[]}'
    assert embeddings_reply([3.0, 4.0]) == b'{"embedding":[3.0,4.0]}'
    assert embeddings_empty_reply() == b'{"embedding":[]}'
