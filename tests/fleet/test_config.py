"""The config shape of upstream groups: a model's `upstreams` list and `[[upstreams]]` tables."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from vllama import config
from vllama.config import CliOverrides, ModelConfig, RemoteSource, UpstreamRef, load
from vllama.errors import ConfigError

GROUPS = """
[[models]]
name = "llama3.1:8b"
upstreams = ["http://a:8000/v1/", {url = "http://b:8000/v1", api_key = "kb", model = "llama"}]
upstream_api_key = "shared"

[[models]]
name = "mixed"
source = "Qwen/Qwen2.5-0.5B-Instruct"
upstreams = ["http://c:8000/v1"]

[[models]]
name = "legacy"
upstream = "http://d:8000/v1"
upstream_model = "meta/legacy"
context_length = 8192

[[upstreams]]
url = "http://router:8000/v1/"
api_key = "kr"
models = "*"
prefix = "cluster/"

[[upstreams]]
url = "http://e:8000/v1"
models = ["qwen*", "mistral"]
capabilities = ["completion", "tools"]
"""


def loaded(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load(CliOverrides(), {}, path=path).config


def test_the_issue_shape(tmp_path: Path) -> None:
    cfg = loaded(tmp_path, GROUPS)
    group, mixed, legacy = cfg.models
    # A string is a URL; a table names its own key and model id; the model's
    # upstream_api_key is the default key, its name the default id.
    assert group.remotes == (UpstreamRef("http://a:8000/v1", "shared", "llama3.1:8b"),
                             UpstreamRef("http://b:8000/v1", "kb", "llama"))
    assert not group.is_local
    assert mixed.is_local and mixed.remotes == (UpstreamRef("http://c:8000/v1", "", "mixed"),)
    assert legacy.remotes == (UpstreamRef("http://d:8000/v1", "", "meta/legacy"),)
    assert legacy.context_length == 8192
    assert cfg.upstreams == (
        RemoteSource("http://router:8000/v1", "kr", ("*",), "cluster/"),
        RemoteSource("http://e:8000/v1", "", ("qwen*", "mistral"),
                     capabilities=("completion", "tools")),
    )


def test_the_config_travels_to_workers_and_prints_without_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(GROUPS)
    result = load(CliOverrides(), {}, path=path)
    # Gateway workers get the Config over msgpack.
    cfg = result.config
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(cfg), type=config.Config) == cfg
    shown = config.as_json(result)
    text = msgspec.json.encode(shown).decode()
    assert "kb" not in text and "kr" not in text and "shared" not in text
    assert shown["upstreams"]["source"] == "file"
    assert shown["models"]["value"][0]["upstreams"][1]["api_key"] == "********"


def test_only_discovery_tables(tmp_path: Path) -> None:
    cfg = loaded(tmp_path, '[[upstreams]]\nurl = "http://r/v1"\n')
    assert cfg.models == ()
    assert cfg.upstreams == (RemoteSource("http://r/v1"),)  # models = "*" by default


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[models]]\nname='a'\nupstream='http://x/v1'\nupstreams=['http://y/v1']\n",
         "set upstream (one URL) or upstreams (a list), not both"),
        ("[[models]]\nname='a'\nupstreams='http://x/v1'\n", "upstreams must be a list"),
        ("[[models]]\nname='a'\nupstreams=[]\n", "set source (HF repo id"),
        ("[[models]]\nname='a'\nupstreams=['x:8000']\n", "expected an http(s):// URL"),
        ("[[models]]\nname='a'\nupstreams=[{url='http://x/v1', key='k'}]\n",
         "unknown field `key`"),
        ("[[models]]\nname='a'\nupstreams=['http://x/v1', 'http://x/v1/']\n", "listed twice"),
        ("[[models]]\nname='a'\nupstream='http://x/v1'\ncontext_length=-1\n",
         "context_length must be >= 0"),
        ("upstreams = 'http://x'\n", "upstreams in"),
        ("[[upstreams]]\nmodels='*'\n", "missing required field `url`"),
        ("[[upstreams]]\nurl='ftp://x'\n", "expected an http(s):// URL"),
        ("[[upstreams]]\nurl='http://x/v1'\nmodels=[]\n", "non-empty list"),
        ("[[upstreams]]\nurl='http://x/v1'\nname='x'\n", "unknown key upstreams[0].name"),
        ("upstream_routing = 'random'\n", "one of affinity, least_loaded"),
        ("upstream_affinity_load = 0.5\n", "expected a number >= 1"),
    ],
)
def test_bad_groups_name_what_is_wrong(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        loaded(tmp_path, text)
    assert needle in info.value.message
    assert "\n" not in info.value.message


def test_the_same_url_with_another_model_id_is_another_member(tmp_path: Path) -> None:
    cfg = loaded(tmp_path, "[[models]]\nname='a'\nupstreams=[{url='http://x/v1', model='m1'}, "
                           "{url='http://x/v1', model='m2'}]\n")
    assert [r.model for r in cfg.models[0].remotes] == ["m1", "m2"]


def test_routing_settings_from_the_environment() -> None:
    cfg = load(CliOverrides(), {"VLLAMA_UPSTREAM_ROUTING": "least_loaded",
                                "VLLAMA_UPSTREAM_PROBE_INTERVAL": "2.5"},
               use_files=False).config
    assert (cfg.upstream_routing, cfg.upstream_probe_interval) == ("least_loaded", 2.5)


def test_the_example_file_parses_with_its_groups_uncommented() -> None:
    example = config.example_toml()
    lines = example.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#[[models]]"))
    # Commented-out TOML is "#[table]" or "#  key = value"; prose is "# Text".
    body = "\n".join(line[1:] if line.startswith(("#[", "#  ")) else ""
                     for line in lines[start:])
    data = tomllib.loads(body)
    assert any("upstreams" in m for m in data["models"])
    assert data["upstreams"][0]["models"] == "*"


def test_model_config_defaults_stay_compatible() -> None:
    # The fields every existing config and test builds with are unchanged.
    model = ModelConfig(name="x", upstream="http://h/v1")
    assert model.remotes == (UpstreamRef("http://h/v1", "", "x"),)
    assert not model.is_local
