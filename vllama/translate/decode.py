"""One decode function per Ollama endpoint: bytes -> request Struct, with Ollama's 400 texts.

Go binds the body before anything else, so everything Go checks at decode time is checked here
too: JSON syntax and types, `keep_alive` and `think` (custom Go unmarshalers), base64 images
([]byte fields) and `top_logprobs`. Afterwards `keep_alive` holds float seconds or None and
`think` holds bool | level | None.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from vllama.errors import BadRequest
from vllama.translate.gojson import (
    GoSyntaxError,
    go_b64_error_offset,
    go_depth_error,
    go_scan,
    go_type_error,
    is_blank,
)
from vllama.translate.values import check_top_logprobs, parse_keep_alive, parse_think
from vllama.wire.ollama import (
    ChatRequest,
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    PullRequest,
    PushRequest,
    ShowRequest,
)

T = TypeVar("T")

_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls)
    for cls in (
        GenerateRequest,
        ChatRequest,
        EmbedRequest,
        EmbeddingsRequest,
        ShowRequest,
        PullRequest,
        PushRequest,
        DeleteRequest,
        CopyRequest,
        CreateRequest,
    )
}


def decode_body(cls: type[T], body: bytes) -> T:
    """Decode `body` into `cls` or raise BadRequest with Go's json.Decoder text."""
    too_deep = go_depth_error(body)  # before msgspec, which would exhaust the stack
    if too_deep is not None:
        raise BadRequest(too_deep)
    dec = _DECODERS[cls]
    try:
        return dec.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as err:
        raise BadRequest(go_type_error(cls, err, body)) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    # Slow path: say what Go would say, or accept what Go accepts (trailing bytes after the
    # first value, invalid UTF-8 inside strings).
    if is_blank(body):
        raise BadRequest("missing request body")
    try:
        end = go_scan(body)
    except GoSyntaxError as err:
        raise BadRequest(str(err)) from None
    text = body[:end].decode("utf-8", "replace").encode()
    try:
        return dec.decode(text)  # type: ignore[no-any-return]
    except msgspec.ValidationError as err:
        raise BadRequest(go_type_error(cls, err, text)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:  # pragma: no cover
        raise BadRequest(str(err)) from None


def check_images(images: list[str] | None) -> None:
    """Go decodes []byte fields as standard base64 at bind time."""
    if not images:
        return
    for img in images:
        off = go_b64_error_offset(img)
        if off is not None:
            raise BadRequest(f"illegal base64 data at input byte {off}")


Generation = TypeVar("Generation", GenerateRequest, ChatRequest)


def _checked(req: Generation) -> Generation:
    """What Go checks at bind time for both generate and chat."""
    req.keep_alive = parse_keep_alive(req.keep_alive)
    req.think = parse_think(req.think)
    check_top_logprobs(req.top_logprobs)
    req.model = req.model or ""
    return req


def decode_generate(body: bytes) -> GenerateRequest:
    req = decode_body(GenerateRequest, body)
    check_images(req.images)
    return _checked(req)


def decode_chat(body: bytes) -> ChatRequest:
    req = decode_body(ChatRequest, body)
    for msg in req.messages or ():
        check_images(msg.images)
    return _checked(req)


def decode_embed(body: bytes) -> EmbedRequest:
    req = decode_body(EmbedRequest, body)
    req.keep_alive = parse_keep_alive(req.keep_alive)
    req.model = req.model or ""
    return req


def decode_embeddings(body: bytes) -> EmbeddingsRequest:
    req = decode_body(EmbeddingsRequest, body)
    req.keep_alive = parse_keep_alive(req.keep_alive)
    req.model = req.model or ""
    return req


# The requests that name a model in `model` or in the deprecated `name` (the ollama CLI and
# the JS client still send it): afterwards `model` holds whichever was set, or "".
Named = TypeVar("Named", ShowRequest, PullRequest, PushRequest, DeleteRequest, CreateRequest)


def _decode_named(cls: type[Named], body: bytes) -> Named:
    req = decode_body(cls, body)
    req.model = req.model or req.name or ""
    return req


def decode_show(body: bytes) -> ShowRequest:
    return _decode_named(ShowRequest, body)


def decode_pull(body: bytes) -> PullRequest:
    return _decode_named(PullRequest, body)


def decode_push(body: bytes) -> PushRequest:
    return _decode_named(PushRequest, body)


def decode_delete(body: bytes) -> DeleteRequest:
    return _decode_named(DeleteRequest, body)


def decode_copy(body: bytes) -> CopyRequest:
    req = decode_body(CopyRequest, body)
    req.source = req.source or ""
    req.destination = req.destination or ""
    return req


def decode_create(body: bytes) -> CreateRequest:
    req = _decode_named(CreateRequest, body)
    for msg in req.messages or ():
        check_images(msg.images)
    return req
