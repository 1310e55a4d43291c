"""The config table: precedence, sources, errors, OLLAMA_HOST, the generated outputs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vllama import config
from vllama.config import CliOverrides, load
from vllama.errors import ConfigError

from ..conftest import REPO_ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_have_source_default() -> None:
    loaded = load(CliOverrides(), {}, use_files=False)
    assert loaded.config.host == "127.0.0.1"
    assert loaded.config.port == 11434
    assert loaded.sources["port"].kind == "default"
    assert loaded.path is None


def test_precedence_default_file_env_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 2000\nlog_level = 'debug'\nstartup_timeout = 5\n")
    env = {"VLLAMA_PORT": "3000", "VLLAMA_LOG_LEVEL": "warning"}
    loaded = load(CliOverrides(port=4000), env, path=path)
    assert loaded.config.port == 4000
    assert loaded.sources["port"].kind == "cli"
    assert loaded.config.log_level == "warning"
    assert loaded.sources["log_level"] == config.Source("env", "VLLAMA_LOG_LEVEL")
    assert loaded.config.startup_timeout == 5.0
    assert loaded.sources["startup_timeout"] == config.Source("file", str(path))
    assert loaded.sources["stop_timeout"].kind == "default"


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("0.0.0.0", "0.0.0.0", None),
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        (":5678", "127.0.0.1", 5678),
        ("http://example.org", "example.org", 80),
        ("https://example.org", "example.org", 443),
        ("http://10.0.0.1:9000/prefix", "10.0.0.1", 9000),
        ("[::1]:7000", "::1", 7000),
        ("  'localhost'  ", "localhost", None),
    ],
)
def test_parse_host_follows_ollama(value: str, host: str, port: int | None) -> None:
    assert config.parse_host(value) == (host, port)


def test_ollama_host_and_vllama_host_wins() -> None:
    loaded = load(CliOverrides(), {"OLLAMA_HOST": "0.0.0.0:8080"}, use_files=False)
    assert (loaded.config.host, loaded.config.port) == ("0.0.0.0", 8080)
    assert loaded.sources["host"] == config.Source("env", "OLLAMA_HOST")
    both = load(CliOverrides(), {"OLLAMA_HOST": "0.0.0.0:8080", "VLLAMA_HOST": "127.0.0.2"},
                use_files=False)
    assert (both.config.host, both.config.port) == ("127.0.0.2", 11434)


def test_env_port_beats_port_in_host() -> None:
    loaded = load(CliOverrides(), {"VLLAMA_HOST": "0.0.0.0:8080", "VLLAMA_PORT": "9"},
                  use_files=False)
    assert loaded.config.port == 9


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("prot = 1\n", "unknown key 'prot'"),
        ("port = 'x'\n", "port = 'x'"),
        ("port = 70000\n", "expected an integer >= 1"),
        ("log_level = 'loud'\n", "one of debug, info, warning, error"),
        ("cors_origins = 'a'\n", "expected a list of strings"),
        ("[[models]]\nname = 'a'\n", "set source (HF repo id or local directory), upstream"),
        ("[[models]]\nname = 'a'\nsource = 'x'\nbogus = 1\n", "unknown key models[0].bogus"),
        ("[[models]]\nname = 'a'\nupstream = 'ftp://x'\n", "expected an http(s):// URL"),
        ("[[models]]\nname='a'\nsource='x'\n[[models]]\nname='A:latest'\nsource='y'\n",
         "two models are named"),
        ("port = \n", "is not valid TOML"),
    ],
)
def test_bad_file_names_key_value_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(CliOverrides(), {}, path=path)
    assert needle in info.value.message
    assert "\n" not in info.value.message
    assert info.value.exit_code == 78


def test_bad_env_value_names_variable() -> None:
    needle = r"startup_timeout = 'soon' \(from VLLAMA_STARTUP_TIMEOUT"
    with pytest.raises(ConfigError, match=needle):
        load(CliOverrides(), {"VLLAMA_STARTUP_TIMEOUT": "soon"}, use_files=False)


def test_missing_explicit_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(CliOverrides(config="/nonexistent/vllama.toml"), {})
    with pytest.raises(ConfigError, match="does not exist"):
        load(CliOverrides(), {"VLLAMA_CONFIG": "/nonexistent/x.toml"})


def test_models_from_file_and_cli(tmp_path: Path) -> None:
    path = write(tmp_path, """
[[models]]
name = "qwen"
source = "Qwen/Qwen2.5-0.5B-Instruct"
vllm_args = ["--max-model-len", "4096"]

[[models]]
name = "remote"
upstream = "http://gpu-2:8000/v1"

[aliases]
coder = "Qwen/Qwen2.5-Coder-7B-Instruct"
""")
    loaded = load(CliOverrides(), {}, path=path)
    assert [m.name for m in loaded.config.models] == ["qwen", "remote"]
    assert loaded.config.models[0].vllm_args == ("--max-model-len", "4096")
    assert not loaded.config.models[1].is_local
    assert loaded.config.aliases == {"coder": "Qwen/Qwen2.5-Coder-7B-Instruct"}
    cli = load(CliOverrides(model="/srv/models/tiny", extra_vllm_args=("--dtype", "float32")),
               {}, path=path)
    assert [(m.name, m.source) for m in cli.config.models] == [("tiny", "/srv/models/tiny")]
    assert cli.config.models[0].vllm_args == ("--dtype", "float32")
    assert cli.sources["models"].kind == "cli"


def test_env_lists_and_args() -> None:
    loaded = load(CliOverrides(), {"VLLAMA_CORS_ORIGINS": "https://a.example, chrome-extension://*",
                                   "VLLAMA_VLLM_ARGS": "--dtype float32 --enforce-eager"},
                  use_files=False)
    assert loaded.config.cors_origins == ("https://a.example", "chrome-extension://*")
    assert loaded.config.vllm_args == ("--dtype", "float32", "--enforce-eager")


def test_hf_home_and_runtime() -> None:
    loaded = load(CliOverrides(), {"HF_HOME": "/data/hf", "NOTIFY_SOCKET": "@x",
                                   "WATCHDOG_USEC": "30000000", "HF_TOKEN": "t"},
                  use_files=False)
    assert loaded.config.models_dir == "/data/hf"
    assert loaded.sources["models_dir"] == config.Source("env", "HF_HOME")
    assert loaded.runtime.notify_socket == "@x"
    assert loaded.runtime.watchdog_usec == 30_000_000
    assert loaded.runtime.hf_token == "t"


def test_api_key_from_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("s3cret\n")
    loaded = load(CliOverrides(), {"CREDENTIALS_DIRECTORY": str(tmp_path)}, use_files=False)
    assert loaded.config.api_key == "s3cret"
    assert config.as_json(loaded)["api_key"]["value"] == "********"


def test_example_parses_and_every_setting_documented() -> None:
    example = config.example_toml()
    keys = tuple(f"#{s.key} = " for s in config.SETTINGS)
    uncommented = "\n".join(line[1:] for line in example.splitlines() if line.startswith(keys))
    data = tomllib.loads(uncommented)
    for setting in config.SETTINGS:
        assert setting.key in data, setting.key
        assert setting.env_var in example


def test_docs_configuration_table_is_generated() -> None:
    doc = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert config.markdown_table() in doc, "run: vllama config --markdown and update the doc"


@pytest.mark.parametrize(
    ("host", "url"),
    [("0.0.0.0", "http://127.0.0.1:11434"), ("::", "http://127.0.0.1:11434"),
     ("::1", "http://[::1]:11434"), ("10.1.2.3", "http://10.1.2.3:11434")],
)
def test_client_url_reaches_the_bind(host: str, url: str) -> None:
    assert config.client_url(host, 11434) == url


@pytest.mark.parametrize("text", ['host = ""\n', 'host = "  "\n'])
def test_empty_host_in_file_is_loopback(tmp_path: Path, text: str) -> None:
    loaded = load(CliOverrides(), {}, path=write(tmp_path, text))
    assert loaded.config.host == "127.0.0.1"  # as VLLAMA_HOST=":port", never every interface
    assert loaded.sources["host"].kind == "file"


def test_empty_host_everywhere_is_loopback() -> None:
    assert config.parse_host("") == ("127.0.0.1", None)
    assert load(CliOverrides(host=""), {}, use_files=False).config.host == "127.0.0.1"
    assert load(CliOverrides(), {"VLLAMA_HOST": ""}, use_files=False).config.host == \
        "127.0.0.1"
    assert load(CliOverrides(), {"OLLAMA_HOST": ":9"}, use_files=False).config.host == \
        "127.0.0.1"


def test_client_edge_settings_from_env() -> None:
    loaded = load(CliOverrides(), {"VLLAMA_ALLOWED_HOSTS": "a.example, *.b.example",
                                   "VLLAMA_CLIENT_HEADER_TIMEOUT": "5",
                                   "VLLAMA_MAX_CONNECTIONS": "10"}, use_files=False)
    assert loaded.config.allowed_hosts == ("a.example", "*.b.example")
    assert loaded.config.client_header_timeout == 5.0
    assert loaded.config.max_connections == 10
    with pytest.raises(ConfigError, match="max_connections = '0'"):
        load(CliOverrides(), {"VLLAMA_MAX_CONNECTIONS": "0"}, use_files=False)
