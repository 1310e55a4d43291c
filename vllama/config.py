"""The one typed, frozen configuration of vllama and the only reader of the environment.

Values merge as defaults < TOML file < ``VLLAMA_*`` environment < CLI flags, and the source of
every value is recorded so ``vllama config`` can say where each came from. One table of
settings (``SETTINGS``) drives env parsing, ``vllama config`` output, the example file and
``docs/configuration.md``, so the four can never disagree.
"""

from __future__ import annotations

import os
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import platformdirs

from vllama.errors import ConfigError, VllamaError

DEFAULT_PORT = 11434
LOOPBACK = "127.0.0.1"
SourceKind = Literal["default", "file", "env", "cli"]


class UpstreamRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One remote member of a model's group: an OpenAI base URL, its key and the model id it
    knows (empty: the model's `upstream_api_key` and `upstream_model`, else its name)."""

    url: str
    api_key: str = ""
    model: str = ""


class RemoteSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An `[[upstreams]]` table: a remote OpenAI endpoint whose models are discovered from its
    `/v1/models`: all of them (`models = "*"`) or those matching a list of ids or globs,
    served under `prefix` + their id."""

    url: str
    api_key: str = ""
    models: tuple[str, ...] = ("*",)
    prefix: str = ""
    capabilities: tuple[str, ...] = ()


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model clients can ask for: run locally from ``source``, reached at remote
    upstreams (``upstream``, or several in ``upstreams``), or both (a group)."""

    name: str
    source: str = ""
    upstream: str = ""
    upstream_api_key: str = ""
    upstream_model: str = ""
    upstreams: tuple[UpstreamRef, ...] = ()
    # The context length a remote model serves (what /api/tags and /api/show report); a
    # discovered model gets the max_model_len its upstream lists. Local engines: use
    # --max-model-len in vllm_args.
    context_length: int = 0
    vllm_args: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    fim_template: str = ""
    preload: bool = True
    # How long the engine stays loaded after its last request: a Go duration ("10m") or
    # seconds, negative = forever. Unset: forever for a preloaded model, else `keep_alive`.
    keep_alive: str | float | None = None
    system: str = ""
    template: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """A local engine serves it (perhaps beside remote members)."""
        return bool(self.source)

    @property
    def remotes(self) -> tuple[UpstreamRef, ...]:
        """The remote members, `upstream` first, each with its key and model id filled in."""
        refs = ((UpstreamRef(self.upstream),) if self.upstream else ()) + self.upstreams
        key, model = self.upstream_api_key, self.upstream_model or self.name
        return tuple(UpstreamRef(r.url.rstrip("/"), r.api_key or key, r.model or model)
                     for r in refs)


class Config(msgspec.Struct, frozen=True):
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    models: tuple[ModelConfig, ...] = ()
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    upstreams: tuple[RemoteSource, ...] = ()
    vllm_command: str = "vllm"
    vllm_args: tuple[str, ...] = ()
    startup_timeout: float = 3600.0
    stop_timeout: float = 30.0
    restart_max: int = 5
    restart_window: float = 600.0
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 60.0
    restart_stable_after: float = 300.0
    health_poll_interval: float = 1.0
    engine_hang_timeout: float = 30.0
    stream_idle_timeout: float = 300.0
    nvml_interval: float = 5.0
    log_level: str = "info"
    log_format: str = "auto"
    api_key: str = ""
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    models_dir: str = ""
    state_dir: str = ""
    ollama_version: str = "0.12.6"
    max_body_bytes: int = 64 * 1024 * 1024
    upstream_connections: int = 1000
    upstream_keepalive: float = 60.0
    upstream_connect_timeout: float = 10.0
    upstream_probe_interval: float = 5.0
    upstream_probe_timeout: float = 3.0
    upstream_eject_initial: float = 1.0
    upstream_eject_max: float = 30.0
    upstream_discovery_interval: float = 30.0
    upstream_routing: str = "affinity"
    upstream_affinity_bytes: int = 2000
    upstream_affinity_load: float = 1.25
    keep_alive: float = 300.0  # seconds; math.inf = forever
    max_loaded_models: int = -1
    max_queue: int = 512
    load_timeout: float = 300.0
    memory_budget: int = 0
    engine_overhead: int = 0
    sleep_mode: str = "auto"
    workers: int = 0
    client_header_timeout: float = 20.0
    client_body_timeout: float = 60.0
    client_idle_timeout: float = 75.0
    max_connections: int = 4096

    @property
    def vllm_argv(self) -> list[str]:
        return shlex.split(self.vllm_command)


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    origin: str = ""  # the file path, the variable name or the flag

    def __str__(self) -> str:
        return f"{self.kind} ({self.origin})" if self.origin else self.kind


@dataclass(frozen=True)
class Runtime:
    """Facts about the process's surroundings that are not settings (systemd, journald, HF).

    Read from the environment here, once, so the rest of vllama receives them as values."""

    notify_socket: str = ""
    watchdog_usec: int = 0
    watchdog_pid: int = 0
    journal_stream: str = ""
    invocation_id: str = ""
    hf_token: str = ""
    hf_endpoint: str = ""
    credentials_directory: str = ""


@dataclass(frozen=True)
class Loaded:
    config: Config
    sources: Mapping[str, Source]
    runtime: Runtime
    path: Path | None
    # A snapshot of the environment, for the engines' children only (they inherit it, minus
    # what systemd meant for vllama itself); nothing reads settings from it.
    environ: Mapping[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Setting:
    key: str
    kind: Literal["str", "int", "float", "bool", "list", "args", "enum", "secret", "duration",
                  "size"]
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    env: bool = True  # settable through VLLAMA_<KEY>
    ollama_env: str = ""  # Ollama's variable for the same setting, read when ours is unset

    @property
    def env_var(self) -> str:
        return f"VLLAMA_{self.key.upper()}"

    @property
    def default(self) -> Any:
        return getattr(Config(), self.key)


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "str", "Address the gateway binds. Also read from OLLAMA_HOST "
            "(Ollama's syntax, e.g. 0.0.0.0 or 0.0.0.0:8080); VLLAMA_HOST wins when both are set."),
    Setting("port", "int", "TCP port of the gateway.", minimum=1),
    Setting("vllm_command", "str", "Command that runs the engine (`<command> serve MODEL ...`); "
            "may be several words, e.g. /opt/vllm/bin/vllm or "
            "`python -m vllm.entrypoints.cli.main`."),
    Setting("vllm_args", "args", "Extra `vllm serve` arguments for every local model, before "
            "each model's own vllm_args."),
    Setting("startup_timeout", "float", "Seconds an engine may take to answer /health before it "
            "counts as failed. Large models take minutes.", minimum=1),
    Setting("stop_timeout", "float", "Seconds between SIGTERM and SIGKILL when an engine stops.",
            minimum=0),
    Setting("restart_max", "int", "Start-up failures (children that never became ready) within "
            "restart_window after which an engine is given up (state failed); the next request "
            "tries again after restart_backoff_max. An engine that served is always restarted.",
            minimum=1),
    Setting("restart_window", "float", "Window in seconds for counting crashes.", minimum=1),
    Setting("restart_backoff_initial", "float", "First restart delay in seconds; doubles per "
            "crash, with jitter.", minimum=0),
    Setting("restart_backoff_max", "float", "Cap of the restart delay in seconds.", minimum=0),
    Setting("restart_stable_after", "float", "Seconds of uptime after which the backoff resets.",
            minimum=0),
    Setting("health_poll_interval", "float", "Seconds between readiness probes of a loading "
            "engine.", minimum=0.05),
    Setting("engine_hang_timeout", "float", "Seconds a ready engine may show no progress (its "
            "token counters still while requests run, a one-token request unanswered while "
            "idle) before it counts as hung: its requests end with an error line and it is "
            "restarted. 0: never.", minimum=0),
    Setting("stream_idle_timeout", "float", "Seconds a streamed upstream response may send "
            "nothing before its request ends with an error line; a stream that keeps sending is "
            "never cut. 0: no limit.", minimum=0),
    Setting("nvml_interval", "float", "Seconds between GPU (NVML) snapshots.", minimum=0.1),
    Setting("log_level", "enum", "Log level.", choices=("debug", "info", "warning", "error")),
    Setting("log_format", "enum", "Log output: auto (journald when started by systemd, else "
            "text), text, json (one object per line) or journal.",
            choices=("auto", "text", "json", "journal")),
    Setting("api_key", "secret", "Bearer key required on every route but /health/live and "
            "/health, which answers only its status code and {\"status\"} without it (load "
            "balancers cannot send a key); its details need the key. Empty: no key. Under "
            "systemd prefer LoadCredential=api-key:FILE (read from "
            "$CREDENTIALS_DIRECTORY/api-key)."),
    Setting("cors_origins", "list", "Extra allowed CORS origins (comma-separated in the "
            "environment), on top of Ollama's localhost/app/file/tauri/vscode defaults. "
            "OLLAMA_ORIGINS is read too. A request with any other Origin is refused (403)."),
    Setting("allowed_hosts", "list", "Extra Host header names accepted while the gateway "
            "is bound to a loopback address (the DNS-rebinding guard), e.g. the public name a "
            "reverse proxy forwards; `*.example.org` matches subdomains, `*` turns the guard "
            "off. Always accepted: localhost, *.localhost, *.local, *.internal, this machine's "
            "hostname and IP addresses that are loopback, private or unspecified."),
    Setting("models_dir", "str", "Hugging Face cache root holding the models (HF_HOME); "
            "default: $HF_HOME, else ~/.cache/huggingface."),
    Setting("state_dir", "str", "Where vllama keeps its own state (aliases made by cp/create); "
            "default: the user state dir ($STATE_DIRECTORY under systemd)."),
    Setting("ollama_version", "str", "Version reported by /api/version; clients gate features "
            "on it, so it names a recent Ollama."),
    Setting("max_body_bytes", "int", "Largest request body accepted (images are base64).",
            minimum=1024),
    Setting("upstream_connections", "int", "Connection pool size per upstream.", minimum=1),
    Setting("upstream_keepalive", "float", "Seconds an idle upstream connection is kept.",
            minimum=0),
    Setting("upstream_connect_timeout", "float", "Seconds to connect to an upstream.",
            minimum=0.1),
    Setting("upstream_probe_interval", "float", "Seconds between active health probes of "
            "each remote upstream (its /health, else its /v1/models).", minimum=0.1),
    Setting("upstream_probe_timeout", "float", "Seconds a health probe (or a discovery "
            "request) may take before the upstream counts as down.", minimum=0.1),
    Setting("upstream_eject_initial", "float", "Seconds a remote upstream is left out after "
            "a failed request (connection error, 5xx); doubles with each failure in a row.",
            minimum=0),
    Setting("upstream_eject_max", "float", "Cap of that ejection in seconds.", minimum=0),
    Setting("upstream_discovery_interval", "float", "Seconds between refreshes of the "
            "models of each [[upstreams]] endpoint (its /v1/models).", minimum=1),
    Setting("upstream_routing", "enum", "How a request picks one of a model's upstreams: "
            "affinity (the same conversation prefix goes to the same upstream while its load "
            "allows, so its prefix cache is reused; else the least busy) or least_loaded.",
            choices=("affinity", "least_loaded")),
    Setting("upstream_affinity_bytes", "int", "How much of a conversation makes its affinity "
            "key: its first messages up to the first user message (or its prompt), as JSON, "
            "cut to this many bytes (head and tail).", minimum=16),
    Setting("upstream_affinity_load", "float", "Bounded load of affinity routing: an "
            "upstream takes a conversation only while its requests in flight stay under this "
            "factor times the group's average (1.25: at most 25% above it).", minimum=1),
    Setting("keep_alive", "duration", "How long a model stays loaded after its last request "
            "ends: a duration (`5m`, `1h30m`) or seconds; negative keeps models loaded, 0 "
            "unloads at once. A request's own keep_alive replaces it for that model.",
            ollama_env="OLLAMA_KEEP_ALIVE"),
    Setting("max_loaded_models", "int", "Most models loaded at once (sleeping ones not "
            "counted); -1: 3 per GPU, 3 on a CPU host (Ollama's default); 0: limited by "
            "memory only.", minimum=-1, ollama_env="OLLAMA_MAX_LOADED_MODELS"),
    Setting("max_queue", "int", "Most requests waiting for a model to load; more answer 503 "
            "`server busy`.", minimum=1, ollama_env="OLLAMA_MAX_QUEUE"),
    Setting("load_timeout", "duration", "How long a request waits for memory to free up "
            "(every other model busy or pinned) before it fails.", minimum=1),
    Setting("memory_budget", "size", "Memory the engines may use in all, in bytes (`24GiB` "
            "works): on a CPU host instead of available RAM, on a GPU host per GPU instead of "
            "what NVML reports. 0: measure it."),
    Setting("engine_overhead", "size", "Memory an engine needs beyond weights and KV cache "
            "(CUDA context, activations, the process itself), per GPU. 0: 1.5 GiB per GPU, "
            "1.5 GiB on a CPU host."),
    Setting("workers", "int", "Gateway processes sharing the port (SO_REUSEPORT), beside the "
            "main process that keeps the engines; 0: one per 8 CPUs, at most 4 (so 1 on small "
            "machines); 1: the main process serves the API itself.", minimum=0),
    Setting("sleep_mode", "enum", "Park idle models with vLLM's sleep mode (weights to host "
            "memory) instead of stopping them: auto (on GPUs, when host memory allows) or off.",
            choices=("auto", "off")),
    Setting("client_header_timeout", "float", "Seconds a client has to send a request's "
            "headers, from the connection or from the request's first byte; then 408 and the "
            "connection is closed (slow-client protection).", minimum=0.1),
    Setting("client_body_timeout", "float", "Seconds a request body may pause between two "
            "reads before the request fails with 408. Never applies to a response being "
            "streamed.", minimum=0.1),
    Setting("client_idle_timeout", "float", "Seconds an idle keep-alive connection stays open "
            "between requests.", minimum=0.1),
    Setting("max_connections", "int", "Most client connections open at once; at the limit the "
            "connection waiting longest for a request is closed for a new one, else the new one "
            "is refused with 503. Capped at half the open-file limit (RLIMIT_NOFILE).", minimum=1),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}
_MODEL_KEEP_ALIVE = Setting("keep_alive", "duration", "a model's keep_alive")
MODEL_KEYS = set(ModelConfig.__struct_fields__)
FILE_ONLY_KEYS = {"models", "aliases", "upstreams"}
REMOTE_KEYS = set(RemoteSource.__struct_fields__)


def _describe(setting: Setting) -> str:
    if setting.kind == "enum":
        return "one of " + ", ".join(setting.choices)
    return {
        "str": "a string",
        "secret": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "list": "a list of strings",
        "args": "a list of arguments",
        "duration": "a duration (`5m`, `1h`) or seconds",
        "size": "bytes, or a size like `16GiB`",
    }[setting.kind] + (f" >= {setting.minimum:g}" if setting.minimum is not None else "")


def _bad(setting: Setting, value: object, where: str) -> ConfigError:
    return ConfigError(
        f"config error: {setting.key} = {value!r} ({where}) is invalid: expected "
        f"{_describe(setting)}"
    )


def coerce(setting: Setting, value: object, where: str, *, from_text: bool) -> Any:
    """Turn a raw value (TOML value, or text from the environment) into the setting's type."""
    kind = setting.kind
    out: Any
    if kind in ("str", "secret"):
        if not isinstance(value, str):
            raise _bad(setting, value, where)
        out = value
    elif kind == "enum":
        if not isinstance(value, str) or value.lower() not in setting.choices:
            raise _bad(setting, value, where)
        out = value.lower()
    elif kind == "bool":
        if from_text and isinstance(value, str) and value.lower() in _BOOL_TEXT:
            out = _BOOL_TEXT[value.lower()]
        elif isinstance(value, bool):
            out = value
        else:
            raise _bad(setting, value, where)
    elif kind in ("int", "float"):
        out = _number(setting, value, where, from_text=from_text)
    elif kind == "duration":
        out = _duration(setting, value, where)
    elif kind == "size":
        out = _size(setting, value, where)
    elif from_text and isinstance(value, str):
        items = shlex.split(value) if kind == "args" else value.split(",")
        out = tuple(i.strip() for i in items if i.strip())
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        out = tuple(value)
    else:
        raise _bad(setting, value, where)
    return out


def _duration(setting: Setting, value: object, where: str) -> float:
    """Seconds, math.inf for "forever": a Go duration or a number of seconds, as Ollama reads
    OLLAMA_KEEP_ALIVE (text that is a number counts as seconds)."""
    from vllama.translate.values import parse_keep_alive

    raw = value
    if isinstance(value, str):
        try:
            raw = float(value.strip())
        except ValueError:
            raw = value.strip()
    try:
        seconds = parse_keep_alive(raw)
    except VllamaError:
        raise _bad(setting, value, where) from None
    if seconds is None or (setting.minimum is not None and seconds < setting.minimum):
        raise _bad(setting, value, where)
    return seconds


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
               "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1 << 10,
               "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def _size(setting: Setting, value: object, where: str) -> int:
    """Bytes: an integer, or a number with a unit (`24GiB`, `512M`, `1.5 GB`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("kmgtib")
        unit = text[len(number):]
        try:
            amount = float(number)
        except ValueError:
            raise _bad(setting, value, where) from None
        if unit in _SIZE_UNITS and amount >= 0:
            return int(amount * _SIZE_UNITS[unit])
    raise _bad(setting, value, where)


_BOOL_TEXT = {"1": True, "true": True, "yes": True, "on": True,
              "0": False, "false": False, "no": False, "off": False}


def _number(setting: Setting, value: object, where: str, *, from_text: bool) -> int | float:
    num: int | float
    if isinstance(value, bool):
        raise _bad(setting, value, where)
    if from_text and isinstance(value, str):
        try:
            num = int(value) if setting.kind == "int" else float(value)
        except ValueError:
            raise _bad(setting, value, where) from None
    elif isinstance(value, int) or (isinstance(value, float) and setting.kind == "float"):
        num = float(value) if setting.kind == "float" else value
    else:
        raise _bad(setting, value, where)
    if setting.minimum is not None and num < setting.minimum:
        raise _bad(setting, value, where)
    if setting.key == "port" and num > 65535:
        raise _bad(setting, value, where)
    return num


# ----------------------------------------------------------------------------- OLLAMA_HOST


def parse_host(value: str) -> tuple[str, int | None]:
    """Parse Ollama's host syntax: ``host``, ``host:port``, ``:port``, ``http://host[:port]``,
    ``[::1]:port``. A scheme without a port means 80/443 as in Ollama; no scheme and no port
    leaves the port to the ``port`` setting."""
    raw = value.strip().strip("\"'")
    if not raw:
        return LOOPBACK, None  # as ":port" does: an empty host never means every interface
    scheme = ""
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
        scheme = scheme.lower()
    raw = raw.split("/", 1)[0]
    parts = urlsplit(f"//{raw}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in {value!r}") from exc
    host = parts.hostname or (LOOPBACK if raw.startswith(":") or not raw else "")
    if not host:
        raise ValueError(f"no host in {value!r}")
    if port is None and scheme in ("http", "https"):
        port = 80 if scheme == "http" else 443
    return host, port


def client_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a daemon bound to ``host``: a wildcard bind
    is reached on loopback, and an IPv6 address needs brackets."""
    if host in ("0.0.0.0", "::", ""):
        host = LOOPBACK
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# ----------------------------------------------------------------------------- loading


def find_config_file(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config, then $VLLAMA_CONFIG (both must exist), then the user config dir, then /etc."""
    for explicit in (cli_path, environ.get("VLLAMA_CONFIG")):
        if explicit:
            path = Path(explicit).expanduser()
            if not path.is_file():
                raise ConfigError(f"config error: config file {path} does not exist")
            return path
    for candidate in (
        Path(platformdirs.user_config_dir("vllama")) / "config.toml",
        Path("/etc/vllama/config.toml"),
    ):
        if candidate.is_file():
            return candidate
    return None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None


def _file_models(raw: object, path: Path) -> tuple[ModelConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"config error: models in {path} must be an array of tables "
                          "([[models]])")
    models = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"config error: models[{i}] in {path} must be a table")
        for key in item:
            if key not in MODEL_KEYS:
                raise ConfigError(f"config error: unknown key models[{i}].{key} in {path}; "
                                  f"known keys: {', '.join(sorted(MODEL_KEYS))}")
        models.append(_model(item, f"models[{i}] in {path}"))
    return tuple(models)


def _model(item: Mapping[str, Any], where: str) -> ModelConfig:
    item = dict(item)
    if "upstreams" in item:
        item["upstreams"] = _refs(item["upstreams"], where)
    try:
        model = msgspec.convert(item, ModelConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config error: {where}: {exc}") from None
    if not model.name:
        raise ConfigError(f"config error: {where}: name is required")
    here = f"{where} ({model.name})"
    if model.upstream and model.upstreams:
        raise ConfigError(f"config error: {here}: set upstream (one URL) or upstreams (a "
                          "list), not both")
    if not model.source and not model.remotes:
        raise ConfigError(f"config error: {here}: set source (HF repo id or local directory), "
                          "upstream (URL) or upstreams (a list of URLs), or source with "
                          "upstreams")
    if model.keep_alive is not None:
        model_keep_alive(model, where)
    seen: set[tuple[str, str]] = set()
    for ref in model.remotes:
        _check_url(ref.url, f"{here}: upstream")
        if (ref.url, ref.model) in seen:
            raise ConfigError(f"config error: {here}: upstream {ref.url} (model "
                              f"{ref.model!r}) is listed twice")
        seen.add((ref.url, ref.model))
    if model.context_length < 0:
        raise ConfigError(f"config error: {here}: context_length must be >= 0")
    return model


def _refs(raw: object, where: str) -> list[Any]:
    """`upstreams` items: a URL, or an inline table {url, api_key, model}."""
    if not isinstance(raw, list):
        raise ConfigError(f"config error: {where}: upstreams must be a list of URLs or of "
                          "{url, api_key, model} tables")
    return [{"url": item} if isinstance(item, str) else item for item in raw]


def _check_url(url: str, what: str) -> None:
    if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
        raise ConfigError(f"config error: {what} = {url!r} is invalid: expected an http(s):// "
                          "URL")


def _file_remotes(raw: object, path: Path) -> tuple[RemoteSource, ...]:
    """`[[upstreams]]` tables: url, api_key, models ("*" or a list of ids/globs), prefix."""
    if not isinstance(raw, list):
        raise ConfigError(f"config error: upstreams in {path} must be an array of tables "
                          "([[upstreams]])")
    out = []
    for i, item in enumerate(raw):
        where = f"upstreams[{i}] in {path}"
        if not isinstance(item, dict):
            raise ConfigError(f"config error: {where} must be a table")
        for key in item:
            if key not in REMOTE_KEYS:
                raise ConfigError(f"config error: unknown key upstreams[{i}].{key} in {path}; "
                                  f"known keys: {', '.join(sorted(REMOTE_KEYS))}")
        table = dict(item)
        if isinstance(table.get("models"), str):
            table["models"] = [table["models"]]
        try:
            source = msgspec.convert(table, RemoteSource)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"config error: {where}: {exc}") from None
        _check_url(source.url, f"{where}: url")
        if not source.models:
            raise ConfigError(f"config error: {where}: models must be \"*\" or a non-empty "
                              "list of model ids")
        out.append(msgspec.structs.replace(source, url=source.url.rstrip("/")))
    return tuple(out)


def model_keep_alive(model: ModelConfig, where: str = "") -> float | None:
    """A model's own keep_alive in seconds (math.inf = forever), None when unset."""
    if model.keep_alive is None:
        return None
    try:
        return _duration(_MODEL_KEEP_ALIVE, model.keep_alive, where or f"model {model.name}")
    except ConfigError:
        raise ConfigError(f"config error: {where} ({model.name}): keep_alive = "
                          f"{model.keep_alive!r} is invalid: expected a duration (`5m`, `1h`) "
                          "or seconds (negative: forever)") from None


def _file_aliases(raw: object, path: Path) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ConfigError(f"config error: aliases in {path} must be a table of name = \"source\"")
    return dict(raw)


@dataclass
class CliOverrides:
    """What the command line set; None means "not given"."""

    config: str | None = None
    host: str | None = None
    port: int | None = None
    model: str | None = None
    name: str | None = None
    extra_vllm_args: Sequence[str] = ()
    log_level: str | None = None
    log_format: str | None = None
    vllm_command: str | None = None
    workers: int | None = None


def load(cli: CliOverrides | None = None, environ: Mapping[str, str] | None = None,
         *, path: Path | None = None, use_files: bool = True) -> Loaded:
    """Merge defaults < file < environment < CLI into a frozen Config, with sources."""
    cli = cli or CliOverrides()
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {s.key: Source("default") for s in SETTINGS}
    sources["models"] = Source("default")
    sources["aliases"] = Source("default")
    sources["upstreams"] = Source("default")

    if path is None and use_files:
        path = find_config_file(cli.config, env)
    if path is not None:
        _apply_file(path, values, sources)
    _apply_env(env, values, sources)
    _apply_cli(cli, values, sources)
    _apply_derived(env, values, sources)

    try:
        config = Config(**values)
    except TypeError as exc:  # pragma: no cover - every key is validated above
        raise ConfigError(f"config error: {exc}") from None
    _check_models(config)
    return Loaded(config=config, sources=sources, runtime=_runtime(env), path=path, environ=env)


def _apply_file(path: Path, values: dict[str, Any], sources: dict[str, Source]) -> None:
    data = _read_file(path)
    src = Source("file", str(path))
    for key, raw in data.items():
        if key == "models":
            values["models"] = _file_models(raw, path)
        elif key == "aliases":
            values["aliases"] = _file_aliases(raw, path)
        elif key == "upstreams":
            values["upstreams"] = _file_remotes(raw, path)
        elif key in SETTINGS_BY_KEY:
            values[key] = coerce(SETTINGS_BY_KEY[key], raw, f"in {path}", from_text=False)
            if key == "host":  # "" is loopback, as VLLAMA_HOST=":port" is, never every interface
                values[key] = values[key].strip() or LOOPBACK
        else:
            known = ", ".join(sorted([*SETTINGS_BY_KEY, *FILE_ONLY_KEYS]))
            raise ConfigError(f"config error: unknown key {key!r} in {path}; known keys: {known}")
        sources[key] = src


def _apply_env(env: Mapping[str, str], values: dict[str, Any],
               sources: dict[str, Source]) -> None:
    ollama_host = env.get("OLLAMA_HOST", "").strip()
    if ollama_host and not env.get("VLLAMA_HOST"):
        _apply_host(ollama_host, "OLLAMA_HOST", values, sources, Source("env", "OLLAMA_HOST"))
    for setting in SETTINGS:
        name = setting.env_var
        raw = env.get(name)
        if not raw and setting.ollama_env:
            name, raw = setting.ollama_env, env.get(setting.ollama_env)
        if raw is None or raw == "" or not setting.env:
            continue
        src = Source("env", name)
        if setting.key == "host":
            _apply_host(raw, setting.env_var, values, sources, src)
            continue
        values[setting.key] = coerce(setting, raw, f"from {name}", from_text=True)
        sources[setting.key] = src
    if env.get("OLLAMA_ORIGINS") and not env.get("VLLAMA_CORS_ORIGINS"):
        values["cors_origins"] = coerce(SETTINGS_BY_KEY["cors_origins"], env["OLLAMA_ORIGINS"],
                                        "from OLLAMA_ORIGINS", from_text=True)
        sources["cors_origins"] = Source("env", "OLLAMA_ORIGINS")
    model = env.get("VLLAMA_MODEL")
    if model:
        name = env.get("VLLAMA_MODEL_NAME") or default_model_name(model)
        values["models"] = (_model({"name": name, **_source_or_upstream(model)},
                                   "VLLAMA_MODEL"),)
        sources["models"] = Source("env", "VLLAMA_MODEL")


def _apply_host(raw: str, origin: str, values: dict[str, Any], sources: dict[str, Source],
                src: Source) -> None:
    try:
        host, port = parse_host(raw)
    except ValueError:
        raise ConfigError(f"config error: host = {raw!r} (from {origin}) is invalid: expected "
                          "HOST, HOST:PORT or http://HOST:PORT") from None
    values["host"] = host
    sources["host"] = src
    if port is not None:
        values["port"] = port
        sources["port"] = src


def _apply_cli(cli: CliOverrides, values: dict[str, Any], sources: dict[str, Source]) -> None:
    if cli.host is not None:
        _apply_host(cli.host, "--host", values, sources, Source("cli", "--host"))
    for key, raw, flag in (
        ("port", cli.port, "--port"),
        ("log_level", cli.log_level, "--log-level"),
        ("log_format", cli.log_format, "--log-format"),
        ("vllm_command", cli.vllm_command, "--vllm-command"),
        ("workers", cli.workers, "--workers"),
    ):
        if raw is not None:
            values[key] = coerce(SETTINGS_BY_KEY[key], raw, f"from {flag}",
                                 from_text=isinstance(raw, str))
            sources[key] = Source("cli", flag)
    if cli.model:
        name = cli.name or default_model_name(cli.model)
        spec: dict[str, Any] = {"name": name, **_source_or_upstream(cli.model),
                                "vllm_args": tuple(cli.extra_vllm_args)}
        values["models"] = (_model(spec, "--model"),)
        sources["models"] = Source("cli", "--model")
    elif cli.extra_vllm_args:
        values["vllm_args"] = (*values.get("vllm_args", ()), *cli.extra_vllm_args)
        sources["vllm_args"] = Source("cli", "--")


def _apply_derived(env: Mapping[str, str], values: dict[str, Any],
                   sources: dict[str, Source]) -> None:
    if not values.get("models_dir"):
        if env.get("HF_HOME"):
            values["models_dir"] = env["HF_HOME"]
            sources["models_dir"] = Source("env", "HF_HOME")
        else:
            values["models_dir"] = str(Path("~/.cache/huggingface").expanduser())
    if not values.get("state_dir"):
        if env.get("STATE_DIRECTORY"):
            values["state_dir"] = env["STATE_DIRECTORY"].split(":")[0]
            sources["state_dir"] = Source("env", "STATE_DIRECTORY")
        else:
            values["state_dir"] = platformdirs.user_state_dir("vllama")
    if not values.get("api_key") and env.get("CREDENTIALS_DIRECTORY"):
        key_file = Path(env["CREDENTIALS_DIRECTORY"]) / "api-key"
        if key_file.is_file():
            values["api_key"] = key_file.read_text().strip()
            sources["api_key"] = Source("file", str(key_file))


def _source_or_upstream(value: str) -> dict[str, str]:
    if value.startswith(("http://", "https://")):
        return {"upstream": value}
    return {"source": value}


def default_model_name(source: str) -> str:
    """The name clients use for a model given only by its source: the repo id, or a local
    directory's base name, or an upstream URL's host."""
    if source.startswith(("http://", "https://")):
        return urlsplit(source).hostname or "upstream"
    if source.startswith(("/", "./", "../", "~")):
        return Path(source).expanduser().name or "model"
    return source


def _check_models(config: Config) -> None:
    seen: set[str] = set()
    for model in config.models:
        key = model.name.lower().removesuffix(":latest")
        if key in seen:
            raise ConfigError(f"config error: two models are named {model.name!r}; names must "
                              "be unique")
        seen.add(key)


def runtime(environ: Mapping[str, str] | None = None) -> Runtime:
    """The process's surroundings (systemd, journald, HF), without loading any settings: for
    a gateway worker, which gets its settings from the main process."""
    return _runtime(dict(os.environ if environ is None else environ))


def _runtime(env: Mapping[str, str]) -> Runtime:
    def as_int(name: str) -> int:
        try:
            return int(env.get(name, "0") or 0)
        except ValueError:
            return 0

    return Runtime(
        notify_socket=env.get("NOTIFY_SOCKET", ""),
        watchdog_usec=as_int("WATCHDOG_USEC"),
        watchdog_pid=as_int("WATCHDOG_PID"),
        journal_stream=env.get("JOURNAL_STREAM", ""),
        invocation_id=env.get("INVOCATION_ID", ""),
        hf_token=env.get("HF_TOKEN", "") or env.get("HUGGING_FACE_HUB_TOKEN", ""),
        hf_endpoint=env.get("HF_ENDPOINT", ""),
        credentials_directory=env.get("CREDENTIALS_DIRECTORY", ""),
    )


# ----------------------------------------------------------------------------- output


def _public(setting: Setting, value: Any) -> Any:
    if setting.kind == "secret" and value:
        return "********"
    if isinstance(value, tuple):
        return list(value)
    return value


def as_json(loaded: Loaded) -> dict[str, Any]:
    """The effective config with each value's source, for ``vllama config --json``."""
    cfg = loaded.config
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        src = loaded.sources[setting.key]
        out[setting.key] = {"value": _public(setting, getattr(cfg, setting.key)),
                            "source": src.kind, "origin": src.origin}
    models_src = loaded.sources["models"]
    out["models"] = {
        "value": [msgspec.to_builtins(m) for m in cfg.models],
        "source": models_src.kind, "origin": models_src.origin,
    }
    for model in out["models"]["value"]:
        if model.get("upstream_api_key"):
            model["upstream_api_key"] = "********"
        for ref in model.get("upstreams", ()):
            if ref.get("api_key"):
                ref["api_key"] = "********"
    remotes_src = loaded.sources["upstreams"]
    remotes = [msgspec.to_builtins(r) for r in cfg.upstreams]
    for remote in remotes:
        if remote.get("api_key"):
            remote["api_key"] = "********"
    out["upstreams"] = {"value": remotes, "source": remotes_src.kind,
                        "origin": remotes_src.origin}
    aliases_src = loaded.sources["aliases"]
    out["aliases"] = {"value": dict(cfg.aliases), "source": aliases_src.kind,
                      "origin": aliases_src.origin}
    return out


def as_text(loaded: Loaded) -> str:
    lines = [f"# config file: {loaded.path or 'none'}"]
    for key, entry in as_json(loaded).items():
        value = msgspec.json.encode(entry["value"]).decode()
        origin = f" ({entry['origin']})" if entry["origin"] else ""
        lines.append(f"{key} = {value}  # {entry['source']}{origin}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return msgspec.json.encode(value).decode()


def example_toml() -> str:
    """A commented example config file, every setting at its default."""
    out = ["# vllama configuration (TOML). Every setting is shown at its default, commented out.",
           "# Precedence: defaults < this file < VLLAMA_* environment < command-line flags.",
           "# `vllama config` prints the effective values and where each came from.", ""]
    for setting in SETTINGS:
        out.append(f"# {setting.help}")
        also = f" (or {setting.ollama_env})" if setting.ollama_env else ""
        out.append(f"# Environment: {setting.env_var}{also}")
        out.append(f"#{setting.key} = {_toml_value(setting.default)}")
        out.append("")
    out += [
        "# Models to serve. Each has a name (what clients ask for) and either a source (a Hugging",
        "# Face repo id or a local directory; vllama runs `vllm serve` for it) or an upstream",
        "# (the base URL of an OpenAI-compatible server vllama does not run).",
        "#[[models]]",
        '#  name = "qwen2.5:7b"',
        '#  source = "Qwen/Qwen2.5-7B-Instruct"',
        '#  vllm_args = ["--max-model-len", "16384"]',
        "#  preload = true",
        "",
        "#[[models]]",
        '#  name = "llama3.1:70b"',
        '#  upstream = "http://gpu-node-2:8000/v1"',
        '#  upstream_api_key = ""',
        "",
        "# A group: several upstreams serve one model (health-checked, least busy first, a",
        "# conversation kept on the upstream that holds its prefix). With a source too, the",
        "# local engine is one more member.",
        "#[[models]]",
        '#  name = "llama3.1:8b"',
        '#  upstreams = ["http://gpu-3:8000/v1",',
        '#               {url = "http://gpu-4:8000/v1", api_key = "...", model = "llama"}]',
        "",
        "# A whole endpoint (a vLLM production-stack or llm-d gateway, another vLLM): its",
        '# models are discovered from its /v1/models ("*", or a list of ids or globs) and',
        "# served as prefix + id.",
        "#[[upstreams]]",
        '#  url = "http://router.cluster:8000/v1"',
        '#  api_key = ""',
        '#  models = "*"',
        '#  prefix = "cluster/"',
        "",
        "# Extra names for models: name = source.",
        "#[aliases]",
        '#  "coder" = "Qwen/Qwen2.5-Coder-7B-Instruct"',
        "",
    ]
    return "\n".join(out)


def markdown_table() -> str:
    """The settings table of docs/configuration.md."""
    rows = ["| Setting | Environment | Default | Type | Meaning |",
            "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = _toml_value(s.default) if s.default not in ("", ()) else "(empty)"
        if s.key == "models_dir":
            default = "`$HF_HOME` or `~/.cache/huggingface`"
        elif s.key == "state_dir":
            default = "`$STATE_DIRECTORY` or the user state dir"
        else:
            default = f"`{default}`"
        meaning = s.help.replace("|", "\\|")
        env = f"`{s.env_var}`" + (f" or `{s.ollama_env}`" if s.ollama_env else "")
        rows.append(f"| `{s.key}` | {env} | {default} | {_describe(s)} | {meaning} |")
    return "\n".join(rows) + "\n"


Loader = Callable[[], Loaded]
