"""Models discovered at remote endpoints (`[[upstreams]]` tables): what a `/v1/models` answer
lists, and the models vllama serves from those lists. Pure; `fleet` does the fetching.

A production-stack or llm-d gateway, a plain `vllm serve` and another vllama all answer
`/v1/models` with `{"data": [{"id": ..., "max_model_len": ...}, ...]}` (max_model_len is
vLLM's addition). Anything else is an error the caller reports; it never reaches /api/tags.
The same id listed by several endpoints (under the same prefix) becomes one model with a
member at each: a group, found rather than configured."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from vllama.config import ModelConfig, RemoteSource, UpstreamRef
from vllama.models.names import InvalidName, normalize, validate


@dataclass(frozen=True)
class Listed:
    """One model an endpoint lists."""

    id: str
    max_model_len: int = 0


class _List(msgspec.Struct):
    data: list[Any]


_decode_list = msgspec.json.Decoder(_List).decode


def parse_models(body: bytes) -> list[Listed]:
    """The models of a `/v1/models` body; ValueError saying what is wrong when it is not
    one. Entries without a string id are skipped (a listing is used as far as it is sound)."""
    try:
        doc = _decode_list(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not an OpenAI model list: {exc}") from None
    out: list[Listed] = []
    for item in doc.data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            continue
        length = item.get("max_model_len")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            length = 0
        out.append(Listed(item["id"], length))
    return out


def wanted(model_id: str, patterns: Sequence[str]) -> bool:
    """Whether an `[[upstreams]]` table's `models` ("*", ids or globs) takes this id."""
    return any(p == model_id or fnmatch.fnmatchcase(model_id, p) for p in patterns)


def servable_name(name: str) -> bool:
    try:
        validate(name)
    except InvalidName:
        return False
    return True


def discovered_models(sources: Sequence[RemoteSource],
                      listings: Mapping[str, Iterable[Listed]],
                      configured: Iterable[ModelConfig] = ()) -> list[ModelConfig]:
    """The models the endpoints' listings give (`listings` by endpoint URL; an endpoint not
    heard from yet has none). A configured model's name wins over a discovered one; a name
    vllama cannot serve (path-like, control characters) is skipped."""
    taken = {normalize(m.name) for m in configured}
    members: dict[str, list[UpstreamRef]] = {}
    lengths: dict[str, int] = {}
    caps: dict[str, tuple[str, ...]] = {}
    names: dict[str, str] = {}
    for source in sources:
        for listed in listings.get(source.url, ()):
            if not wanted(listed.id, source.models):
                continue
            name = source.prefix + listed.id
            key = normalize(name) if servable_name(name) else ""
            if not key or key in taken:
                continue
            ref = UpstreamRef(source.url, source.api_key, listed.id)
            refs = members.setdefault(key, [])
            if ref in refs:
                continue
            refs.append(ref)
            names.setdefault(key, name)
            caps.setdefault(key, source.capabilities)
            if listed.max_model_len:  # members may differ: the smallest serves everywhere
                known = lengths.get(key, 0)
                lengths[key] = min(known, listed.max_model_len) if known else listed.max_model_len
    return [ModelConfig(name=names[key], upstreams=tuple(refs), capabilities=caps[key],
                        context_length=lengths.get(key, 0), preload=False)
            for key, refs in members.items()]
