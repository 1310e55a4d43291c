"""The affinity key of a request: what identifies its conversation's prefix, so the requests
of one conversation go to the upstream whose prefix cache already holds it.

A chat conversation grows by appending messages, so its first messages never change: the key
is the leading messages up to and including the first user message (the system prompt and
the opening question). A prompt (`/v1/completions`, raw `/api/generate`) is its own key. Keys
longer than `limit` bytes keep their head and tail (a long system prompt shared by every
conversation still leaves the first question, at the tail, to tell them apart).

Read from the request's JSON as the upstream gets it, with the messages as raw bytes: nothing
but their roles is decoded. Pure."""

from __future__ import annotations

import msgspec

_ABSENT = msgspec.Raw(b"")


class _Prefix(msgspec.Struct):
    messages: list[msgspec.Raw] | None = None
    prompt: msgspec.Raw = _ABSENT  # (a Raw cannot be in a union: absent is empty)
    input: msgspec.Raw = _ABSENT  # /v1/responses


class _Role(msgspec.Struct):
    role: str = ""


_decode_prefix = msgspec.json.Decoder(_Prefix).decode
_decode_role = msgspec.json.Decoder(_Role).decode
_decode_items = msgspec.json.Decoder(list[msgspec.Raw]).decode


def _role(item: msgspec.Raw) -> str:
    try:
        return _decode_role(item).role
    except (msgspec.DecodeError, msgspec.ValidationError):  # not an object: a string prompt
        return ""


_MAX_LEADING = 16  # messages before the first user message looked at, at most


def _leading(items: list[msgspec.Raw], limit: int) -> bytes:
    """Messages up to the first user message; items without a role (prompts, token ids) up
    to `limit` bytes; joined."""
    parts: list[bytes] = []
    size = 0
    for item in items[:_MAX_LEADING] if _role(items[0]) else items:
        raw = bytes(item)
        parts.append(raw)
        size += len(raw)
        role = _role(item)
        if role == "user" or (not role and size >= limit):
            break
    return b"\x1e".join(parts)


def _cut(key: bytes, limit: int) -> bytes:
    if len(key) <= limit:
        return key
    half = limit // 2
    return key[:half] + key[len(key) - (limit - half):]


def affinity_key(body: bytes, limit: int) -> bytes | None:
    """The conversation-prefix key of an OpenAI request body; None when it has none (an
    embedding request, or a body that is not JSON: routed by load alone)."""
    try:
        doc = _decode_prefix(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if doc.messages:
        return _cut(_leading(doc.messages, limit), limit)
    for raw in (doc.prompt, doc.input):
        data = bytes(raw)
        if data in (b"", b"null"):
            continue
        if data.startswith(b"["):  # a batch of prompts, token ids, or /v1/responses items
            try:
                items = _decode_items(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
            data = _leading(items, limit) if items else b""
        return _cut(data, limit) or None
    return None
