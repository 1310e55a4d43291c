"""Model names: Ollama's grammar, the forms names are shown in, and the one resolver. Pure.

Resolution order (first match wins): the names of configured models (so a vLLM id such as
`org.x/Model` that Ollama's grammar refuses still works), aliases from the config file,
aliases made with `vllama cp`/`create` (state dir), the built-in table (`aliases.py`), HF repo
ids (`org/name`, `:latest` accepted, matched case-insensitively against what the cache holds),
and absolute local directories. A source that a configured model serves resolves to that
configured model, so every name for the same weights reaches the same engine. Names are
validated first so nothing a client sends can walk out of the cache (`..`, backslashes, NUL,
absolute paths where a repo id is expected).

Names compare the way Ollama compares them: case-insensitively, with `:latest` implied
(`normalize`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from vllama.config import ModelConfig
from vllama.errors import BadRequest
from vllama.models.aliases import BUILTIN_ALIASES

INVALID_NAME = "invalid model name"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's part grammar (§1.4 of the API reference): first char alnum or `_`, then the listed set.
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE = _MODEL_RE
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
# Hugging Face repo ids: `org/name`, each part word chars, `.` and `-`, at most 96 characters.
_REPO_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")

# "served": the name of a configured model; the rest say which table an alias came from.
Kind = Literal["served", "config", "user", "builtin", "repo", "path"]


class InvalidName(BadRequest):
    """A name no lookup may use; endpoints re-word it with their own Ollama text."""

    def __init__(self, name: str) -> None:
        super().__init__(INVALID_NAME)
        self.name = name


@dataclass(frozen=True)
class OllamaName:
    """Go's ParseName: defaults filled in; a part the user wrote empty (`a//b`, `x:`) is `!`,
    which no part grammar accepts."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def valid(self) -> bool:
        return bool(_MODEL_RE.fullmatch(self.model) and _TAG_RE.fullmatch(self.tag)
                    and _NAMESPACE_RE.fullmatch(self.namespace)
                    and _HOST_RE.fullmatch(self.host))

    def display(self) -> str:
        """Ollama's DisplayShortest: default host and namespace dropped, tag always shown."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def split_tag(name: str) -> tuple[str, str]:
    """(base, tag): the tag starts at the last `:` after the last `/`; "" when there is none."""
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return name, ""


def _cut_last(s: str) -> tuple[str, str] | None:
    """Go's cut at the last `/`: (before, after), each "!" when the user wrote it empty."""
    slash = s.rfind("/")
    if slash < 0:
        return None
    return s[:slash] or "!", s[slash + 1 :] or "!"


def parse_name(name: str) -> OllamaName:
    """Parse `[scheme://][host/][namespace/]model[:tag]` as Go's ParseName does."""
    rest, tag = split_tag(name)
    if rest != name and tag == "":
        tag = "!"
    tag = tag or DEFAULT_TAG
    cut = _cut_last(rest)
    if cut is None:
        return OllamaName(DEFAULT_HOST, DEFAULT_NAMESPACE, rest, tag)
    rest, model = cut
    cut = _cut_last(rest)
    if cut is None:
        return OllamaName(DEFAULT_HOST, rest, model, tag)
    host, namespace = cut
    return OllamaName(host.split("://", 1)[-1], namespace, model, tag)


def is_valid_name(name: str) -> bool:
    """Ollama's model-name validation (§1.4 table)."""
    return bool(name) and parse_name(name).valid


def repo_id_of(name: str) -> str | None:
    """`org/name` or `org/name:latest` -> `org/name`; None if it is no valid HF repo id."""
    base, tag = split_tag(name)
    if base != name and tag.lower() != DEFAULT_TAG:
        return None
    parts = base.split("/")
    if len(parts) != 2 or not all(_REPO_PART_RE.fullmatch(p) for p in parts):
        return None
    if any(".." in p or "--" in p or p.endswith(".") for p in parts):
        return None
    return base


def display_name(name: str) -> str:
    """The name as listed, with an explicit tag: `qwen2.5` -> `qwen2.5:latest`,
    `Org/Name` -> `Org/Name:latest`, `registry.ollama.ai/library/m` -> `m:latest`. A name
    outside Ollama's grammar (a vLLM id like `org.x/Model`) keeps its spelling plus the tag;
    directories are shown as they are."""
    if name.startswith("/"):
        return name
    parsed = parse_name(name)
    if parsed.valid:
        return parsed.display()
    base, tag = split_tag(name)
    return f"{base}:{tag or DEFAULT_TAG}"


def full_name(name: str) -> str:
    """`registry.ollama.ai/library/x:latest`, as in `... does not support insert`."""
    return parse_name(name).full()


@functools.lru_cache(maxsize=4096)
def normalize(name: str) -> str:
    """The key names are compared by (Ollama compares with EqualFold, `:latest` implied).
    Pure and asked on every request, so its answers are kept (bounded: a client inventing
    names evicts only cache entries)."""
    return display_name(name).lower()


def _unsafe(name: str) -> bool:
    if not name or len(name) > 1024 or "\\" in name:
        return True
    if any(ord(c) < 32 or ord(c) == 127 for c in name):  # NUL and other control characters
        return True
    return any(part in ("..", ".") for part in name.split("/"))


def validate(name: str, *, allow_paths: bool = False) -> None:
    """Raise InvalidName unless `name` is a usable Ollama name, repo id or (if allowed) an
    absolute directory."""
    if _unsafe(name):
        raise InvalidName(name)
    if name.startswith("/"):
        if allow_paths:
            return
        raise InvalidName(name)
    if not parse_name(name).valid and repo_id_of(name) is None:
        raise InvalidName(name)


@dataclass(frozen=True)
class Resolved:
    """What a name stands for. `name` is the name as listed (explicit tag); `source` is a repo
    id spelled as the cache spells it, an absolute directory, or "" for a remote upstream;
    `served` is the configured model that serves it (None: a local model no entry in the
    config names)."""

    name: str
    source: str
    kind: Kind
    served: ModelConfig | None = None

    @property
    def is_path(self) -> bool:
        return self.source.startswith("/")


class ServedIndex:
    """The configured models by normalized name and by source: built once per config, read on
    every request without I/O."""

    def __init__(self, models: Iterable[ModelConfig]) -> None:
        self.models = tuple(models)
        self.exact = {m.name: m for m in self.models}  # the name as configured: no parsing
        self.by_name = {normalize(m.name): m for m in self.models}
        self.resolved = {m.name: Resolved(display_name(m.name), m.source, "served", m)
                         for m in self.models}
        self.by_source: dict[str, ModelConfig] = {}
        for m in self.models:
            if m.source:
                self.by_source.setdefault(m.source.rstrip("/").lower(), m)

    def named(self, name: str) -> ModelConfig | None:
        return self.exact.get(name) or self.by_name.get(normalize(name))

    def serving(self, source: str) -> ModelConfig | None:
        """The configured model whose source is `source`, or whose name `source` is (an alias
        whose target is a served name)."""
        return self.by_source.get(source.rstrip("/").lower()) or self.named(source)


def resolve_served(name: str, served: ServedIndex) -> Resolved | None:
    """The first step of `resolve`, which needs no I/O: a configured model's own name. Asked
    on every request: the name exactly as configured is one dict lookup."""
    hit = served.resolved.get(name)
    if hit is not None:
        return hit
    if _unsafe(name):
        raise InvalidName(name)
    model = served.named(name)
    return served.resolved[model.name] if model is not None else None


def _alias_lookup(table: Mapping[str, str], key: str) -> tuple[str, str] | None:
    for alias, source in table.items():
        if normalize(alias) == key:
            return display_name(alias), source
    return None


def _match_repo(repo: str, cached: Iterable[str]) -> str:
    lowered = repo.lower()
    for candidate in cached:
        if candidate.lower() == lowered:
            return candidate
    return repo


def _target(source: str, cached: Iterable[str]) -> str:
    """An alias's source may itself be a built-in name (`chat = "qwen2.5:7b"`): follow it one
    step so the result is always a repo id, a directory or a served name."""
    if source.startswith("/"):
        return source
    builtin = BUILTIN_ALIASES.get(normalize(source))
    if builtin is not None and repo_id_of(source) is None:
        return _match_repo(builtin, cached)
    repo = repo_id_of(source)
    return _match_repo(repo, cached) if repo is not None else source


def resolve(name: str, *, served: ServedIndex | None = None,
            config_aliases: Mapping[str, str] | None = None,
            user_aliases: Mapping[str, str] | None = None, cached_repos: Iterable[str] = (),
            allow_paths: bool = False) -> Resolved | None:
    """Resolve `name` in vllama's order, or None when nothing matches. Raises InvalidName for
    a name that must never be looked up."""
    index = served or ServedIndex(())
    hit = resolve_served(name, index)
    if hit is not None:
        return hit
    validate(name, allow_paths=allow_paths)
    cached = list(cached_repos)
    found: Resolved | None = None
    if name.startswith("/"):
        path = name.rstrip("/") or "/"
        found = Resolved(path, path, "path")
    else:
        key = normalize(name)
        for kind, table in (("config", config_aliases), ("user", user_aliases)):
            alias = _alias_lookup(table or {}, key)
            if alias is not None:
                shown, source = alias
                found = Resolved(shown, _target(source, cached), kind)  # type: ignore[arg-type]
                break
        if found is None:
            builtin = BUILTIN_ALIASES.get(key)
            if builtin is not None:
                found = Resolved(key, _match_repo(builtin, cached), "builtin")
        if found is None:
            repo = repo_id_of(name)
            if repo is not None:
                spelled = _match_repo(repo, cached)
                found = Resolved(display_name(spelled), spelled, "repo")
    if found is None:
        return None
    model = index.serving(found.source)
    if model is not None:
        return Resolved(found.name, model.source, found.kind, model)
    return found
