"""OpenAI/vLLM shapes that vllama decodes on the hot path.

One `StreamChunk` covers both `chat.completion.chunk` and `text_completion` SSE events, plus
vLLM's in-stream error events (`{"error": {...}}` and the older `{"object": "error", ...}`),
so the relay needs a single prebuilt decoder. Every field is optional: vLLM versions differ and
an unknown field must never break a stream.
"""

from __future__ import annotations

from typing import Any

import msgspec


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    role: str | None = None
    content: str | None = None
    # current vLLM says `reasoning`, older builds `reasoning_content`
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class TopLogprob(msgspec.Struct):
    token: str = ""
    logprob: float = 0.0
    bytes: list[int] | None = None


class LogprobToken(msgspec.Struct):
    token: str = ""
    logprob: float = 0.0
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] | None = None


class Logprobs(msgspec.Struct):
    """Chat uses `content`; completions use the parallel lists (top_logprobs: token -> lp)."""

    content: list[LogprobToken] | None = None
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class Choice(msgspec.Struct):
    index: int = 0
    delta: Delta | None = None
    text: str | None = None
    logprobs: Logprobs | None = None
    finish_reason: str | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ErrorInfo(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: int | str | None = None
    param: Any = None


class StreamChunk(msgspec.Struct):
    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[Choice] | None = None
    usage: Usage | None = None
    # error events: new style {"error": {...}}, old style {"object": "error", "message": ...}
    error: ErrorInfo | str | None = None
    message: str | None = None
    code: int | str | None = None


class EmbeddingData(msgspec.Struct):
    index: int = 0
    embedding: list[float] = []


class EmbeddingResponse(msgspec.Struct):
    data: list[EmbeddingData] = []
    model: str | None = None
    usage: Usage | None = None


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(msgspec.Struct):
    data: list[ModelCard] = []
    object: str = "list"


_model_list = msgspec.json.Decoder(ModelList)


def served_max_model_len(body: bytes | None, served_name: str) -> int:
    """The max_model_len a `/v1/models` body reports for the served model (the only one, if
    none has its name); 0 when the body says nothing usable."""
    if not body:
        return 0
    try:
        cards = _model_list.decode(body).data
    except msgspec.DecodeError:
        return 0
    card = next((c for c in cards if c.id == served_name),
                cards[0] if len(cards) == 1 else None)
    return (card.max_model_len or 0) if card is not None else 0


class ErrorBody(msgspec.Struct):
    """A non-2xx body from vLLM: either {"error": {...}} or the older flat shape, or FastAPI's
    {"detail": ...}."""

    error: ErrorInfo | str | None = None
    object: str | None = None
    message: str | None = None
    code: int | str | None = None
    detail: Any = None
