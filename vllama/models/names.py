"""Ollama-style model names <-> Hugging Face repo ids and local directories. Pure: no I/O.

Resolution order (first match wins): aliases from the config file, aliases made with
`vllama cp`/`create` (state dir), the built-in table (`aliases.py`), HF repo ids (`org/name`,
`:latest` accepted, matched case-insensitively against what the cache holds), and absolute
local directories. Names are validated first so nothing a client sends can walk out of the
cache (`..`, backslashes, NUL, absolute paths where a repo id is expected).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

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

Kind = Literal["config", "user", "builtin", "repo", "path"]


class InvalidName(BadRequest):
    """A name no lookup may use; endpoints re-word it with their own Ollama text."""

    def __init__(self, name: str) -> None:
        super().__init__(INVALID_NAME)
        self.name = name


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    def display(self) -> str:
        """Ollama's DisplayShortest: default host and namespace dropped, tag always shown."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


@dataclass(frozen=True)
class Resolved:
    """What a name stands for. `name` is the display name (explicit tag); `source` is a repo id
    spelled as the cache spells it, or an absolute directory."""

    name: str
    source: str
    kind: Kind

    @property
    def is_path(self) -> bool:
        return self.source.startswith("/")


def split_tag(name: str) -> tuple[str, str | None]:
    """The last `:` after the last `/` starts the tag."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, None


def parse_ollama(name: str) -> OllamaName | None:
    """Parse `[host/][namespace/]model[:tag]` with Ollama's rules, or None when Ollama would
    call it invalid."""
    base, tag = split_tag(name)
    if tag is None:
        tag = DEFAULT_TAG
    parts = base.split("/")
    if len(parts) > 3 or not _TAG_RE.fullmatch(tag):
        return None
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    if not (_HOST_RE.fullmatch(host) and _NAMESPACE_RE.fullmatch(namespace)
            and _MODEL_RE.fullmatch(model)):
        return None
    return OllamaName(host, namespace, model, tag)


def repo_id_of(name: str) -> str | None:
    """`org/name` or `org/name:latest` -> `org/name`; None if it is no valid HF repo id."""
    base, tag = split_tag(name)
    if tag is not None and tag.lower() != DEFAULT_TAG:
        return None
    parts = base.split("/")
    if len(parts) != 2 or not all(_REPO_PART_RE.fullmatch(p) for p in parts):
        return None
    if any(".." in p or "--" in p or p.endswith(".") for p in parts):
        return None
    return base


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
    if parse_ollama(name) is None and repo_id_of(name) is None:
        raise InvalidName(name)


def normalize(name: str) -> str:
    """The lookup key for alias tables: display form, lower-case (Ollama compares names with
    EqualFold)."""
    parsed = parse_ollama(name)
    if parsed is not None:
        return parsed.display().lower()
    base, tag = split_tag(name)
    return f"{base}:{tag or DEFAULT_TAG}".lower()


def display_name(name: str) -> str:
    """Ollama-style name with explicit tag: `qwen2.5` -> `qwen2.5:latest`,
    `Org/Name` -> `Org/Name:latest`. Directories are shown as they are."""
    if name.startswith("/"):
        return name
    parsed = parse_ollama(name)
    if parsed is not None:
        return parsed.display()
    base, tag = split_tag(name)
    return f"{base}:{tag or DEFAULT_TAG}"


def repo_display(repo_id: str) -> str:
    return f"{repo_id}:{DEFAULT_TAG}"


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
    step so the result is always a repo id or a directory."""
    if source.startswith("/"):
        return source
    builtin = BUILTIN_ALIASES.get(normalize(source))
    if builtin is not None and repo_id_of(source) is None:
        return _match_repo(builtin, cached)
    repo = repo_id_of(source)
    return _match_repo(repo, cached) if repo is not None else source


def resolve(name: str, *, config_aliases: Mapping[str, str] | None = None,
            user_aliases: Mapping[str, str] | None = None, cached_repos: Iterable[str] = (),
            allow_paths: bool = False) -> Resolved | None:
    """Resolve `name` in vllama's order, or None when nothing matches. Raises InvalidName for
    a name that must never be looked up."""
    validate(name, allow_paths=allow_paths)
    cached = list(cached_repos)
    if name.startswith("/"):
        return Resolved(name.rstrip("/") or "/", name.rstrip("/") or "/", "path")
    key = normalize(name)
    for kind, table in (("config", config_aliases), ("user", user_aliases)):
        hit = _alias_lookup(table or {}, key)
        if hit is not None:
            shown, source = hit
            return Resolved(shown, _target(source, cached), kind)  # type: ignore[arg-type]
    builtin = BUILTIN_ALIASES.get(key)
    if builtin is not None:
        return Resolved(key, _match_repo(builtin, cached), "builtin")
    repo = repo_id_of(name)
    if repo is not None:
        spelled = _match_repo(repo, cached)
        return Resolved(repo_display(spelled), spelled, "repo")
    return None
