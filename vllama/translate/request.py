"""Ollama requests -> vLLM OpenAI requests (reference §5, §6, §8.2). Pure functions.

Always stream upstream with usage (timings and counts need it); forward only the options the
client set; never send `suffix`, empty `tools`, or `stream_options` without `stream`.
"""

from __future__ import annotations

import binascii
import math
from typing import Any, Literal

import msgspec

from vllama.errors import BadRequest
from vllama.models.names import full_name
from vllama.translate.gojson import go_quote
from vllama.translate.values import decode_options, parse_format
from vllama.wire.ollama import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"

_STREAM_OPTIONS = {"include_usage": True}
_json_encode = msgspec.json.Encoder().encode


class ModelCaps(msgspec.Struct, frozen=True):
    """What a served model can do; the gateway builds it from config and vLLM flags.

    insert_template: FIM prompt with `{prompt}` and `{suffix}` placeholders (plain replace,
    not str.format, so braces in code are safe); None = no `insert` capability.
    think_kwarg: the chat-template variable that switches thinking (Qwen3: enable_thinking,
    DeepSeek V3.1: thinking); None when the template has none (the model always thinks).
    """

    completion: bool = True
    embedding: bool = False
    tools: bool = False
    thinking: bool = False
    vision: bool = False
    insert_template: str | None = None
    think_kwarg: str | None = "enable_thinking"

    def names(self) -> list[str]:
        """Ollama `capabilities` list for /api/show and /api/tags."""
        out: list[str] = []
        if self.completion:
            out.append("completion")
        if self.embedding:
            out.append("embedding")
        if self.tools:
            out.append("tools")
        if self.insert_template is not None:
            out.append("insert")
        if self.vision:
            out.append("vision")
        if self.thinking:
            out.append("thinking")
        return out


# ---------------------------------------------------------------------------------------------
# options


def options_to_openai(opts: dict[str, Any], body: dict[str, Any]) -> None:
    """Write the vLLM sampling fields for validated `opts` (see decode_options) into `body`.

    Only what the client set is forwarded, so vLLM falls back to the model's generation
    config. Options without a vLLM equivalent (num_ctx, typical_p, repeat_last_n, ...) are
    dropped. A completions body without num_predict gets its `max_tokens` from the engine
    once the gateway knows which engine serves it (`fill_max_tokens`).
    """
    n = opts.get("num_predict")
    if n is not None and n > 0:  # 0 and negatives mean "until stop or context end"
        body["max_tokens"] = n
    if "temperature" in opts:
        body["temperature"] = opts["temperature"]
    if "top_p" in opts:
        body["top_p"] = opts["top_p"]
    if opts.get("top_k", 0) > 0:
        body["top_k"] = opts["top_k"]
    if "min_p" in opts:
        body["min_p"] = opts["min_p"]
    seed = opts.get("seed")
    if seed is not None and seed >= 0:
        body["seed"] = seed
    if opts.get("stop"):
        body["stop"] = opts["stop"]
    if "repeat_penalty" in opts:
        body["repetition_penalty"] = opts["repeat_penalty"]
    if "presence_penalty" in opts:
        body["presence_penalty"] = opts["presence_penalty"]
    if "frequency_penalty" in opts:
        body["frequency_penalty"] = opts["frequency_penalty"]


def fill_max_tokens(path: str, body: dict[str, Any], max_model_len: int) -> None:
    """`max_tokens` from the engine's context (its max_model_len; 0: unknown). vLLM's
    /v1/completions caps a request without `max_tokens` (or with null) at 16 tokens, and
    clamps one equal to max_model_len to the room the prompt leaves: that is "until stop or
    the context ends". A larger num_predict is a 400 from vLLM, so it is clamped too."""
    if max_model_len <= 0:
        return
    asked = body.get("max_tokens")
    too_many = isinstance(asked, int) and asked > max_model_len
    if too_many or (asked is None and path == COMPLETIONS_PATH):
        body["max_tokens"] = max_model_len


# ---------------------------------------------------------------------------------------------
# checks shared by generate and chat


def resolve_think(think: bool | str | None, caps: ModelCaps, model: str) -> bool | str | None:
    """Ollama's rule: unset on a thinking model means on; truthy on another model is a 400."""
    if caps.thinking:
        return True if think is None else think
    if think is not None and think is not False:
        raise BadRequest(f"{go_quote(model)} does not support thinking")
    return think


def _think_fields(think: bool | str | None, caps: ModelCaps, body: dict[str, Any]) -> None:
    if not caps.thinking or think is None:
        return
    if caps.think_kwarg:  # a template without a switch: nothing to tell it
        body["chat_template_kwargs"] = {caps.think_kwarg: think is not False}
    if isinstance(think, str):
        body["reasoning_effort"] = think


def check_generate(req: GenerateRequest, caps: ModelCaps) -> bool | str | None:
    """Ollama's checks after name resolution, in its order; returns the effective think."""
    if req.raw and (req.template or req.system or req.context):
        raise BadRequest("raw mode does not support template, system, or context")
    think = resolve_think(req.think, caps, req.model or "")
    if not caps.completion:
        raise BadRequest(f"{go_quote(req.model or '')} does not support generate")
    if req.suffix and caps.insert_template is None:
        raise BadRequest(f"{full_name(req.model or '')} does not support insert")
    return think


def check_chat(req: ChatRequest, caps: ModelCaps) -> bool | str | None:
    think = resolve_think(req.think, caps, req.model or "")
    if not caps.completion:
        raise BadRequest(f"{go_quote(req.model or '')} does not support chat")
    if req.tools and not caps.tools:
        raise BadRequest(f"{full_name(req.model or '')} does not support tools")
    return think


Action = Literal["unload", "load", "generate"]


def generate_action(req: GenerateRequest) -> Action:
    """Empty prompt: a load reply, or an unload reply when keep_alive is 0 (reference §3.7).
    Call check_generate before answering "load" (Ollama checks think first)."""
    if not req.prompt:
        return "unload" if req.keep_alive == 0 else "load"
    return "generate"


def chat_action(req: ChatRequest) -> Action:
    if not req.messages:
        return "unload" if req.keep_alive == 0 else "load"
    return "generate"


# ---------------------------------------------------------------------------------------------
# messages


def sniff_image_mime(b64: str) -> str:
    """Mime type from the magic bytes; Ollama's own mapping defaults to image/jpeg."""
    head = b64[:16].replace("\n", "").replace("\r", "")
    try:
        raw = binascii.a2b_base64(head[: len(head) - len(head) % 4])
    except (binascii.Error, ValueError):
        return "image/jpeg"
    if raw.startswith(b"\x89PNG"):
        return "image/png"
    if raw.startswith(b"GIF8"):
        return "image/gif"
    if raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def image_part(b64: str) -> dict[str, Any]:
    if "\n" in b64 or "\r" in b64:
        b64 = b64.replace("\n", "").replace("\r", "")
    return {"type": "image_url", "image_url": {"url": f"data:{sniff_image_mime(b64)};base64,{b64}"}}


def _content(text: str, images: list[str] | None) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.extend(image_part(img) for img in images)
    return parts


def _arguments_json(args: Any) -> str:
    if args is None:
        return "{}"
    if isinstance(args, str):
        return args
    return _json_encode(args).decode()


def synth_call_id(msg_index: int, call_index: int) -> str:
    # 9 alphanumerics: some vLLM tool parsers (Mistral) insist on that exact shape
    return f"call{msg_index:03d}{call_index:02d}"


def messages_to_openai(messages: list[Message]) -> list[dict[str, Any]]:
    """Chat history -> OpenAI messages: roles lower-cased, images as parts, thinking dropped,
    assistant tool calls with ids and JSON-string arguments, tool results linked by id."""
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, function name), oldest first
    for mi, m in enumerate(messages):
        role = (m.role or "").lower()
        d: dict[str, Any] = {"role": role, "content": _content(m.content or "", m.images)}
        if m.tool_calls:
            calls = []
            for ci, tc in enumerate(m.tool_calls):
                fn = tc.function
                name = (fn.name if fn else None) or ""
                cid = tc.id or synth_call_id(mi, ci)
                calls.append({
                    "id": cid,
                    "type": "function",
                    "function": {"name": name,
                                 "arguments": _arguments_json(fn.arguments if fn else None)},
                })
                unanswered.append((cid, name))
            d["tool_calls"] = calls
        if role == "tool":
            cid = m.tool_call_id or ""
            name = m.tool_name or ""
            pos = -1
            if cid:
                pos = next((i for i, c in enumerate(unanswered) if c[0] == cid), -1)
            else:
                if name:
                    pos = next((i for i, c in enumerate(unanswered) if c[1] == name), -1)
                if pos < 0 and unanswered:
                    pos = 0
            if pos >= 0:
                cid = cid or unanswered[pos][0]
                name = name or unanswered[pos][1]
                del unanswered[pos]
            if cid:
                d["tool_call_id"] = cid
            if name:
                d["name"] = name
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------------
# generate / chat


def _common(body: dict[str, Any], options: dict[str, Any] | None, fmt: msgspec.Raw) -> None:
    options_to_openai(decode_options(options), body)
    rf = parse_format(fmt)
    if rf is not None:
        body["response_format"] = rf


def _chat_logprobs(body: dict[str, Any], logprobs: bool | None, top: int | None) -> None:
    if logprobs:
        body["logprobs"] = True
        if top:
            body["top_logprobs"] = top


def chat_to_openai(req: ChatRequest, upstream_model: str, caps: ModelCaps) -> dict[str, Any]:
    """The /v1/chat/completions body for an Ollama chat (runs check_chat first)."""
    think = check_chat(req, caps)
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages_to_openai(req.messages or []),
        "stream": True,
        "stream_options": _STREAM_OPTIONS,
    }
    if req.tools:
        body["tools"] = req.tools
    _common(body, req.options, req.format)
    _think_fields(think, caps, body)
    _chat_logprobs(body, req.logprobs, req.top_logprobs)
    return body


def fim_prompt(template: str, prompt: str, suffix: str) -> str:
    return template.replace("{prompt}", prompt).replace("{suffix}", suffix)


def generate_to_openai(req: GenerateRequest, upstream_model: str,
                       caps: ModelCaps) -> tuple[str, dict[str, Any]]:
    """(path, body) for an Ollama generate: chat completions normally; completions for raw
    prompts and for FIM (suffix) prompts built from caps.insert_template."""
    think = check_generate(req, caps)
    prompt = req.prompt or ""
    if req.suffix or req.raw:
        if req.suffix:
            prompt = fim_prompt(caps.insert_template or "", prompt, req.suffix)
        elif req.images:
            raise BadRequest("raw mode does not support images")
        body: dict[str, Any] = {
            "model": upstream_model,
            "prompt": prompt,
            "stream": True,
            "stream_options": _STREAM_OPTIONS,
        }
        _common(body, req.options, req.format)
        if req.logprobs:
            body["logprobs"] = req.top_logprobs or 0
        return COMPLETIONS_PATH, body
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": _content(prompt, req.images)})
    body = {
        "model": upstream_model,
        "messages": messages,
        "stream": True,
        "stream_options": _STREAM_OPTIONS,
    }
    _common(body, req.options, req.format)
    _think_fields(think, caps, body)
    _chat_logprobs(body, req.logprobs, req.top_logprobs)
    return CHAT_PATH, body


# ---------------------------------------------------------------------------------------------
# embeddings


def embed_inputs(raw: Any) -> list[str]:
    """/api/embed `input`: a string or a list of strings; "" / [] / null -> [] (the empty
    reply); anything else 400 `invalid input type`. [""] is embedded."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if isinstance(raw, list):
        for item in raw:
            if not isinstance(item, str):
                raise BadRequest("invalid input type")
        return raw
    raise BadRequest("invalid input type")


def embed_to_openai(req: EmbedRequest, upstream_model: str,
                    inputs: list[str] | None = None) -> dict[str, Any]:
    """The /v1/embeddings body. Validates options (500 on bad types, like Ollama).
    `dimensions` is not forwarded: the gateway truncates (normalize_embeddings)."""
    decode_options(req.options)
    body: dict[str, Any] = {
        "model": upstream_model,
        "input": embed_inputs(req.input) if inputs is None else inputs,
        "encoding_format": "float",
    }
    if req.truncate is None or req.truncate:
        body["truncate_prompt_tokens"] = -1
    return body


def embeddings_to_openai(req: EmbeddingsRequest, upstream_model: str) -> dict[str, Any]:
    """Legacy /api/embeddings: one prompt. Callers answer `{"embedding":[]}` for an empty
    prompt without calling this."""
    decode_options(req.options)
    return {"model": upstream_model, "input": [req.prompt or ""], "encoding_format": "float"}


def normalize_vector(vec: list[float]) -> list[float]:
    norm = math.hypot(*vec)
    if norm == 0:
        return list(vec)
    return [x / norm for x in vec]


def normalize_embeddings(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """Ollama's /api/embed post-processing: L2-normalize; with 0 < dimensions < len,
    truncate then renormalize."""
    out = []
    for vec in vectors:
        v = normalize_vector(vec)
        if dimensions and 0 < dimensions < len(v):
            v = normalize_vector(v[:dimensions])
        out.append(v)
    return out
