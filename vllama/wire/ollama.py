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
    # Name is the name of the function the model called.
    name: str | None = None
    # Arguments is an object in Ollama; some clients send a JSON string, accepted too.
    arguments: Any = None
    # Index is the call's position among the calls of one message.
    index: int | None = None


class ToolCall(msgspec.Struct, omit_defaults=True):
    function: ToolCallFunction | None = None
    # ID links a tool's answer (a "tool" message's tool_call_id) to this call.
    id: str | None = None
    type: str | None = None


class Message(msgspec.Struct, omit_defaults=True):
    """One chat message (Go's api.Message)."""

    # Role is "system", "user", "assistant" or "tool".
    role: str | None = None
    content: str | None = None
    # Thinking is the model's reasoning, kept apart from the content.
    thinking: str | None = None
    # Images are base64 strings (Go decodes them as []byte at bind time).
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    # ToolName names the tool whose result a "tool" message carries.
    tool_name: str | None = None
    tool_call_id: str | None = None


class _Generation(msgspec.Struct):
    """The fields generate and chat share (Go repeats them in both request types)."""

    # Model is the model name; resolved by vllama.models.
    model: str | None = None
    # Stream: false asks for one aggregated object instead of NDJSON lines.
    stream: bool | None = None
    # Format is "json" or a JSON schema; raw JSON bytes, empty when absent (msgspec cannot
    # put Raw in a union).
    format: msgspec.Raw = msgspec.Raw()
    # KeepAlive controls how long the model stays loaded: a Go duration string or seconds.
    keep_alive: Any = None
    # Options are Modelfile parameters (temperature, num_predict, stop, ...).
    options: dict[str, Any] | None = None
    # Think switches thinking on/off (bool) or sets its level ("low", "medium", "high").
    think: Any = None
    # Truncate cuts the prompt to the context instead of failing (Ollama's default: true).
    truncate: bool | None = None
    # Shift lets the context window shift when generation reaches its end.
    shift: bool | None = None
    # Logprobs asks for log probabilities; TopLogprobs how many alternatives per token.
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # DebugRenderOnly asks for the rendered prompt without generating (Ollama's debug aid).
    debug_render_only: bool | None = msgspec.field(default=None, name="_debug_render_only")


class GenerateRequest(_Generation):
    """/api/generate (Go's api.GenerateRequest)."""

    # Prompt is the text to complete; empty loads (or with keep_alive 0 unloads) the model.
    prompt: str | None = None
    # Suffix is the text after the insertion point (fill-in-the-middle).
    suffix: str | None = None
    # System overrides the model's system prompt; Template its prompt template.
    system: str | None = None
    template: str | None = None
    # Context is the token context of an earlier reply (deprecated by Ollama).
    context: list[int] | None = None
    # Raw sends the prompt as is, without the template.
    raw: bool | None = None
    images: list[str] | None = None


class ChatRequest(_Generation):
    """/api/chat (Go's api.ChatRequest)."""

    # Messages is the conversation so far; empty loads (or with keep_alive 0 unloads).
    messages: list[Message] | None = None
    # Tools the model may call, forwarded to vLLM as the client sent them (OpenAI shape);
    # kept raw to avoid a re-encode.
    tools: list[msgspec.Raw] | None = None


class EmbedRequest(msgspec.Struct):
    """/api/embed."""

    model: str | None = None
    # Input is a string or a list of strings.
    input: Any = None
    truncate: bool | None = None
    # Dimensions truncates each vector to this many dimensions (then renormalized).
    dimensions: int | None = None
    keep_alive: Any = None
    options: dict[str, Any] | None = None


class EmbeddingsRequest(msgspec.Struct):
    """/api/embeddings (deprecated by Ollama, still used by clients): one prompt."""

    model: str | None = None
    prompt: str | None = None
    keep_alive: Any = None
    options: dict[str, Any] | None = None


class _Named(msgspec.Struct):
    """Requests that name a model: `name` is the deprecated spelling of `model` that the
    ollama CLI and older clients still send."""

    model: str | None = None
    name: str | None = None


class ShowRequest(_Named):
    # System is shown as the system prompt (Ollama's show takes it as an override).
    system: str | None = None
    template: str | None = None
    # Verbose asks for the full model_info (tokenizer arrays in Ollama).
    verbose: bool | None = None
    options: dict[str, Any] | None = None


class PullRequest(_Named):
    # Insecure, Username, Password: registry options, accepted and ignored (vllama pulls
    # through huggingface_hub with HF_TOKEN).
    insecure: bool | None = None
    username: str | None = None
    password: str | None = None
    stream: bool | None = None


class PushRequest(PullRequest):
    """The same fields as a pull (Go's PushRequest is its own type with the same shape)."""


class DeleteRequest(_Named):
    pass


class CopyRequest(msgspec.Struct):
    # Source is an existing model; Destination the new name for it.
    source: str | None = None
    destination: str | None = None


class CreateRequest(_Named):
    """/api/create. vllama supports only `from` an existing model, with system, parameters and
    template: an alias with request defaults."""

    from_: str | None = msgspec.field(default=None, name="from")
    # Files and Adapters (digests of uploaded blobs), Quantize: not supported by vllama.
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


class UpstreamState(msgspec.Struct):
    """vllama's addition to /api/ps: one upstream of a model served by several."""

    upstream: str  # its base URL, or "local" for this machine's engine
    state: str  # up, ejected, down
    in_flight: int
    reason: str = ""


class ProcessModel(msgspec.Struct):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int
    # vllama's additions (clients ignore unknown keys): loading, loaded, sleeping (or, for
    # a model whose remote upstreams are all down, unavailable); a model with remote
    # upstreams lists them.
    state: str = "loaded"
    upstreams: list[UpstreamState] | msgspec.UnsetType = msgspec.UNSET


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
