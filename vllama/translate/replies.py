"""Encoded replies for the embedding endpoints (reference §3.9, §3.10)."""

from __future__ import annotations

import msgspec

from vllama.errors import UpstreamError
from vllama.translate.request import normalize_embeddings
from vllama.wire.ollama import EmbeddingsResponse, EmbedResponse
from vllama.wire.openai import EmbeddingResponse

_encode = msgspec.json.Encoder().encode
_emb_decoder = msgspec.json.Decoder(EmbeddingResponse)


def vectors_from_openai(body: bytes) -> tuple[list[list[float]], int]:
    """vLLM /v1/embeddings JSON -> (vectors in `index` order, usage.prompt_tokens)."""
    try:
        resp = _emb_decoder.decode(body)
    except msgspec.DecodeError as err:
        raise UpstreamError(f"invalid upstream embeddings response: {err}") from None
    data = sorted(resp.data, key=lambda d: d.index)
    return [d.embedding for d in data], resp.usage.prompt_tokens if resp.usage else 0


def embed_reply(model: str, vectors: list[list[float]], *, dimensions: int | None,
                prompt_eval_count: int, total_duration: int, load_duration: int) -> bytes:
    """/api/embed reply: vectors L2-normalized (and truncated to `dimensions`)."""
    return _encode(EmbedResponse(
        model=model,
        embeddings=normalize_embeddings(vectors, dimensions),
        total_duration=total_duration,
        load_duration=max(load_duration, 1),
        prompt_eval_count=prompt_eval_count,
    ))


def embed_empty_reply(model: str) -> bytes:
    """Empty `input` ("", [], null): `{"model":m,"embeddings":[]}`, no upstream call."""
    return _encode(EmbedResponse(model=model, embeddings=[]))


def embeddings_reply(vector: list[float]) -> bytes:
    """/api/embeddings (legacy): the raw vector, not re-normalized."""
    return _encode(EmbeddingsResponse(vector))


def embeddings_empty_reply() -> bytes:
    return b'{"embedding":[]}'
