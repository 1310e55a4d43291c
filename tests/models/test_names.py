"""Name resolution and validation, as tables."""

from __future__ import annotations

import pytest

from vllama.config import ModelConfig
from vllama.models.aliases import BUILTIN_ALIASES, builtin_table
from vllama.models.names import (
    InvalidName,
    ServedIndex,
    display_name,
    full_name,
    is_valid_name,
    parse_name,
    resolve,
    resolve_served,
    split_tag,
    validate,
)

CONFIG = {"chat": "qwen2.5:7b", "Mine:v1": "Org/Model", "local": "/srv/models/x",
          "qwen2.5:7b": "Someone/Override"}
USER = {"copy:latest": "Qwen/Qwen2.5-0.5B-Instruct"}
CACHED = ["qwen/Qwen2.5-7B-Instruct", "TinyOrg/Tiny.Model"]


@pytest.mark.parametrize(("name", "shown", "source", "kind"), [
    # config aliases win over everything, matched case-insensitively, `:latest` implied
    ("chat", "chat:latest", "qwen/Qwen2.5-7B-Instruct", "config"),  # follows a built-in name
    ("CHAT:latest", "chat:latest", "qwen/Qwen2.5-7B-Instruct", "config"),
    ("mine:V1", "Mine:v1", "Org/Model", "config"),
    ("local", "local:latest", "/srv/models/x", "config"),
    ("qwen2.5:7b", "qwen2.5:7b", "Someone/Override", "config"),
    # vllama's own aliases (cp/create) next
    ("copy", "copy:latest", "Qwen/Qwen2.5-0.5B-Instruct", "user"),
    # built-in table; `latest` is the family default; default host/namespace accepted
    ("qwen2.5:0.5b", "qwen2.5:0.5b", "Qwen/Qwen2.5-0.5B-Instruct", "builtin"),
    ("qwen2.5-coder", "qwen2.5-coder:latest", "Qwen/Qwen2.5-Coder-7B-Instruct", "builtin"),
    ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b",
     "meta-llama/Llama-3.2-1B-Instruct", "builtin"),
    ("Llama3.1:8B", "llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct", "builtin"),
    ("nomic-embed-text", "nomic-embed-text:latest", "nomic-ai/nomic-embed-text-v1.5",
     "builtin"),
    ("all-minilm", "all-minilm:latest", "sentence-transformers/all-MiniLM-L6-v2", "builtin"),
    ("bge-m3:latest", "bge-m3:latest", "BAAI/bge-m3", "builtin"),
    # HF repo ids, `:latest` accepted, spelled as the cache spells them
    ("tinyorg/tiny.model", "TinyOrg/Tiny.Model:latest", "TinyOrg/Tiny.Model", "repo"),
    ("TinyOrg/Tiny.Model:latest", "TinyOrg/Tiny.Model:latest", "TinyOrg/Tiny.Model", "repo"),
    ("New.Org/New-Model", "New.Org/New-Model:latest", "New.Org/New-Model", "repo"),
])
def test_resolution_order(name: str, shown: str, source: str, kind: str) -> None:
    got = resolve(name, config_aliases=CONFIG, user_aliases=USER, cached_repos=CACHED)
    assert got is not None
    assert (got.name, got.source, got.kind) == (shown, source, kind)


def test_builtin_latest_resolves_to_the_qwen_7b() -> None:
    got = resolve("qwen2.5", cached_repos=CACHED)
    assert got is not None and got.source == "qwen/Qwen2.5-7B-Instruct"


@pytest.mark.parametrize("name", ["unknown-model", "nothing:here", "Org/Model:q4_0", "Org/Na--me"])
def test_unknown_names_resolve_to_none(name: str) -> None:
    assert resolve(name, cached_repos=CACHED) is None


def test_local_directories_only_when_allowed() -> None:
    got = resolve("/srv/models/tiny/", allow_paths=True)
    assert got is not None and (got.source, got.kind, got.is_path) == ("/srv/models/tiny",
                                                                         "path", True)
    with pytest.raises(InvalidName):
        resolve("/srv/models/tiny")


@pytest.mark.parametrize("name", [
    "../etc/passwd", "org/../x", "a/..", "org/./x", "/abs/../x", "back\\slash", "nul\0byte",
    "tab\tname", "", "a:b:c/d", "-leading-dash", "model:", ":tag", "org//name",
    "a/b/c/d", "x" * 81, "model:-tag", "/etc/passwd",
])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate(name)
    assert info.value.message == "invalid model name"
    assert info.value.status == 400


@pytest.mark.parametrize(("name", "shown"), [
    ("llama3.2", "llama3.2:latest"),
    ("user/model:tag", "user/model:tag"),
    ("registry.ollama.ai/library/m:t", "m:t"),
    ("host.io/ns/m", "host.io/ns/m:latest"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct:latest"),
    ("New.Org/Model", "New.Org/Model:latest"),
])
def test_display_names_have_explicit_tags(name: str, shown: str) -> None:
    assert display_name(name) == shown


def test_ollama_grammar_parts() -> None:
    parsed = parse_name("example.com:5000/team/model.v2:q4_K_M")
    assert parsed.valid
    assert (parsed.host, parsed.namespace, parsed.model, parsed.tag) == (
        "example.com:5000", "team", "model.v2", "q4_K_M")
    assert not parse_name("bad.namespace/model").valid  # Ollama: no `.` in a namespace


def test_builtin_table_is_consistent() -> None:
    rows = builtin_table()
    assert ("qwen2.5:latest", "Qwen/Qwen2.5-7B-Instruct") in rows
    for name, repo in rows:
        assert BUILTIN_ALIASES[name] == repo
        assert parse_name(name).valid
        assert repo.count("/") == 1
    families = {n.split(":")[0] for n, _ in rows}
    assert {"qwen2.5", "qwen3", "llama3.1", "llama3.2", "mistral", "gemma2", "gemma3", "phi3",
            "phi4", "nomic-embed-text", "bge-m3", "bge-large", "all-minilm",
            "mxbai-embed-large", "qwen2.5-coder"} <= families


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("llama3.2", True), ("llama3.2:latest", True), ("user/model:tag", True),
        ("host.com:8080/ns/model:v1.0", True), ("Qwen/Qwen2.5-7B-Instruct", True),
        ("_x", True), ("a" * 80, True), ("a" * 81, False), ("", False), ("-x", False),
        ("x:", False), ("x:-t", False), ("org.x/model", False), ("a//b", False), ("/x", False),
        ("x y", False), ("x:t/y", False), ("https://h/ns/m", True), ("a/b/c/d", False),
    ],
)
def test_is_valid_name(name: str, ok: bool) -> None:
    assert is_valid_name(name) is ok


@pytest.mark.parametrize(("name", "base", "tag"), [
    # one split_tag: "" when there is no tag (the twins once gave "" and None)
    ("qwen", "qwen", ""), ("qwen:7b", "qwen", "7b"), ("x:", "x", ""),
    ("host:8000/m", "host:8000/m", ""), ("host:8000/m:t", "host:8000/m", "t"),
])
def test_split_tag(name: str, base: str, tag: str) -> None:
    assert split_tag(name) == (base, tag)


def test_name_forms() -> None:
    assert full_name("x") == "registry.ollama.ai/library/x:latest"
    assert full_name("u/m:t") == "registry.ollama.ai/u/m:t"
    assert display_name("foo") == "foo:latest"
    assert display_name("registry.ollama.ai/library/foo:7b") == "foo:7b"
    assert display_name("Qwen/Qwen2.5") == "Qwen/Qwen2.5:latest"
    assert display_name("h.io/ns/m") == "h.io/ns/m:latest"
    assert display_name("llama3.2:1b") == "llama3.2:1b"
    assert display_name("host:8000/m") == "host:8000/m:latest"
    assert display_name("org.x/Model") == "org.x/Model:latest"  # outside Ollama's grammar


SERVED = ServedIndex([
    ModelConfig(name="tiny", source="/srv/tiny"),
    ModelConfig(name="org.x/Model", upstream="http://h/v1"),
    ModelConfig(name="alias:latest", source="Qwen/Qwen2.5-0.5B-Instruct"),
])


@pytest.mark.parametrize(
    ("requested", "served"),
    [
        ("tiny", "tiny"), ("tiny:latest", "tiny"), ("TINY:Latest", "tiny"),
        ("org.x/model:latest", "org.x/Model"),  # a vLLM id Ollama's grammar refuses
        ("alias", "alias:latest"), ("alias:latest", "alias:latest"),
        ("registry.ollama.ai/library/tiny", "tiny"),
        # a name that stands for a served source reaches the configured model
        ("Qwen/Qwen2.5-0.5B-Instruct", "alias:latest"), ("qwen2.5:0.5b", "alias:latest"),
        ("copy", "tiny"),  # a user alias of a served name
        ("tiny:7b", None), ("nope", None),
    ],
)
def test_one_resolver_for_served_names(requested: str, served: str | None) -> None:
    got = resolve(requested, served=SERVED, user_aliases={"copy": "tiny"})
    assert (got.served.name if got is not None and got.served is not None else None) == served


def test_served_names_resolve_without_io_and_refuse_traversal() -> None:
    hit = resolve_served("TINY", SERVED)
    assert hit is not None and (hit.name, hit.kind, hit.source) == ("tiny:latest", "served",
                                                                   "/srv/tiny")
    assert resolve_served("nothing", SERVED) is None
    with pytest.raises(InvalidName):
        resolve_served("../tiny", SERVED)
