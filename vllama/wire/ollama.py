"""Ollama request and response shapes.

Requests: every field is optional and nullable because Go treats `null` as "unset" and ignores
unknown keys; fields whose JSON type varies (`format`, `think`, `keep_alive`, `input`,
`arguments`) are typed loosely and validated by `vllama.translate`, which also turns msgspec's
validation errors into Go's decoder texts. After `vllama.translate.decode_*`, `keep_alive` holds
float seconds (math.inf = forever) or None, and `think` holds bool, a level string, or None.

Responses: Go-omitempty fields default to a zero value and the Struct uses omit_defaults; fields
Ollama always writes are required, or use `msgspec.UNSET` where the Struct mixes both kinds.
"""

from __future__ import annotations

from typing import Any

import msgspec

# ---------------------------------------------------------------------------------------------
# Requests


class ToolCallFunction(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    # An object in Ollama; some clients send a JSON string, which we accept too.
    arguments: Any = None
    index: int | None = None


class ToolCall(msgspec.Struct, omit_defaults=True):
    function: ToolCallFunction | None = None
    id: str | None = None
    type: str | None = None


class Message(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class GenerateRequest(msgspec.Struct):
    model: str | None = None
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool | None = None
    # raw JSON bytes; empty when absent (msgspec cannot put Raw in a union)
    format: msgspec.Raw = msgspec.Raw()
    keep_alive: Any = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: Any = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    debug_render_only: bool | None = msgspec.field(default=None, name="_debug_render_only")


class ChatRequest(msgspec.Struct):
    model: str | None = None
    messages: list[Message] | None = None
    # Forwarded to vLLM as the client sent them (OpenAI shape); kept raw to avoid a re-encode.
    tools: list[msgspec.Raw] | None = None
    stream: bool | None = None
    # raw JSON bytes; empty when absent (msgspec cannot put Raw in a union)
    format: msgspec.Raw = msgspec.Raw()
    keep_alive: Any = None
    options: dict[str, Any] | None = None
    think: Any = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    debug_render_only: bool | None = msgspec.field(default=None, name="_debug_render_only")


class EmbedRequest(msgspec.Struct):
    model: str | None = None
    input: Any = None
    truncate: bool | None = None
    dimensions: int | None = None
    keep_alive: Any = None
    options: dict[str, Any] | None = None


class EmbeddingsRequest(msgspec.Struct):
    model: str | None = None
    prompt: str | None = None
    keep_alive: Any = None
    options: dict[str, Any] | None = None


class ShowRequest(msgspec.Struct):
    model: str | None = None
    name: str | None = None
    system: str | None = None
    template: str | None = None
    verbose: bool | None = None
    options: dict[str, Any] | None = None


class PullRequest(msgspec.Struct):
    model: str | None = None
    name: str | None = None
    insecure: bool | None = None
    username: str | None = None
    password: str | None = None
    stream: bool | None = None


class PushRequest(msgspec.Struct):
    model: str | None = None
    name: str | None = None
    insecure: bool | None = None
    username: str | None = None
    password: str | None = None
    stream: bool | None = None


class DeleteRequest(msgspec.Struct):
    model: str | None = None
    name: str | None = None


class CopyRequest(msgspec.Struct):
    source: str | None = None
    destination: str | None = None


class CreateRequest(msgspec.Struct):
    model: str | None = None
    name: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: Any = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    quantization: str | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None
    info: dict[str, Any] | None = None
    stream: bool | None = None


# ---------------------------------------------------------------------------------------------
# Responses


class TokenLogprob(msgspec.Struct, omit_defaults=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class Logprob(msgspec.Struct, omit_defaults=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TokenLogprob] | None = None


class ToolCallFunctionOut(msgspec.Struct):
    index: int
    name: str
    arguments: dict[str, Any]


class ToolCallOut(msgspec.Struct, omit_defaults=True):
    function: ToolCallFunctionOut
    id: str = ""


class ChatMessageOut(msgspec.Struct, omit_defaults=True):
    role: str
    content: str
    thinking: str = ""
    tool_calls: list[ToolCallOut] | None = None


class ChatResponse(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    message: ChatMessageOut
    done: bool
    done_reason: str = ""
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    logprobs: list[Logprob] | None = None


class GenerateResponse(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    response: str
    done: bool
    thinking: str = ""
    done_reason: str = ""
    context: list[int] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    tool_calls: list[ToolCallOut] | None = None
    logprobs: list[Logprob] | None = None


class EmbedResponse(msgspec.Struct, omit_defaults=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class EmbeddingsResponse(msgspec.Struct):
    embedding: list[float]


class ModelDetails(msgspec.Struct):
    """Go writes the first six always (families may be null); the lengths are omitempty, so
    they are UNSET (always omitted by msgspec) unless known."""

    parent_model: str = ""
    format: str = "safetensors"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int | msgspec.UnsetType = msgspec.UNSET
    embedding_length: int | msgspec.UnsetType = msgspec.UNSET


class ListModel(msgspec.Struct, omit_defaults=True):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str] | None = None


class ListResponse(msgspec.Struct):
    models: list[ListModel]


class ProcessModel(msgspec.Struct):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(msgspec.Struct):
    models: list[ProcessModel]


class ShowResponse(msgspec.Struct, omit_defaults=True):
    details: ModelDetails
    model_info: dict[str, Any]
    modified_at: str
    license: str = ""
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str = ""
    capabilities: list[str] | None = None


class ProgressResponse(msgspec.Struct, omit_defaults=True):
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


class ErrorResponse(msgspec.Struct):
    error: str
