"""Reading /v1/models answers, and the models they give."""

from __future__ import annotations

import pytest

from vllama.config import ModelConfig, RemoteSource, UpstreamRef
from vllama.fleet.discovery import Listed, discovered_models, parse_models, wanted

VLLM_LIST = (b'{"object":"list","data":[{"id":"tiny","object":"model","created":1,'
             b'"owned_by":"vllm","root":"/m","parent":null,"max_model_len":2048,'
             b'"permission":[]}]}')


@pytest.mark.parametrize(
    ("body", "listed"),
    [
        (VLLM_LIST, [Listed("tiny", 2048)]),
        (b'{"data":[{"id":"a"},{"id":"b","max_model_len":"big"}]}', [Listed("a"), Listed("b")]),
        # Entries that are not models are skipped; the rest is used.
        (b'{"data":[{"id":""},{"name":"x"},7,{"id":"ok","max_model_len":true}]}',
         [Listed("ok")]),
        (b'{"data":[]}', []),
    ],
)
def test_parse_models(body: bytes, listed: list[Listed]) -> None:
    assert parse_models(body) == listed


@pytest.mark.parametrize("body", [b"", b"<html>502 Bad Gateway</html>", b'{"data": 5}',
                                  b'{"models": []}', b"[]", b'{"data": [1,'])
def test_garbage_is_an_error_not_a_list(body: bytes) -> None:
    with pytest.raises(ValueError, match="not an OpenAI model list"):
        parse_models(body)


@pytest.mark.parametrize(
    ("model_id", "patterns", "taken"),
    [
        ("llama-3.1-8b", ("*",), True),
        ("llama-3.1-8b", ("llama-*",), True),
        ("qwen", ("llama-*", "qwen"), True),
        ("Qwen", ("qwen",), False),  # ids are exact
        ("qwen-coder", ("qwen",), False),
        ("org/model", ("org/*",), True),
    ],
)
def test_wanted(model_id: str, patterns: tuple[str, ...], taken: bool) -> None:
    assert wanted(model_id, patterns) is taken


def test_models_from_listings() -> None:
    a = RemoteSource("http://a:8000/v1", api_key="ka", prefix="cluster/",
                     capabilities=("completion", "tools"))
    b = RemoteSource("http://b:8000/v1", models=("llama*",), prefix="cluster/")
    listings = {
        "http://a:8000/v1": [Listed("llama", 8192), Listed("qwen", 4096)],
        "http://b:8000/v1": [Listed("llama", 4096), Listed("mistral", 1000)],
    }
    models = discovered_models([a, b], listings)
    assert models == [
        # Listed by both: one model, a member at each, the smaller context.
        ModelConfig(name="cluster/llama", upstreams=(UpstreamRef("http://a:8000/v1", "ka",
                                                                 "llama"),
                                                     UpstreamRef("http://b:8000/v1", "",
                                                                 "llama")),
                    capabilities=("completion", "tools"), context_length=4096, preload=False),
        ModelConfig(name="cluster/qwen", upstreams=(UpstreamRef("http://a:8000/v1", "ka",
                                                                "qwen"),),
                    capabilities=("completion", "tools"), context_length=4096, preload=False),
    ]


def test_configured_names_win_and_odd_names_are_skipped() -> None:
    source = RemoteSource("http://a/v1")
    listings = {"http://a/v1": [Listed("mine"), Listed("../etc"), Listed("ok:7b"),
                                Listed("bad\nname")]}
    configured = [ModelConfig(name="MINE:latest", source="org/x")]
    assert [m.name for m in discovered_models([source], listings, configured)] == ["ok:7b"]


def test_an_endpoint_not_heard_from_gives_nothing() -> None:
    assert discovered_models([RemoteSource("http://a/v1")], {}) == []
