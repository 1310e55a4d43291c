"""Which upstream serves which model name: the routing table of the gateway.

One ``Target`` per configured model. A local target reaches its engine (owned by the
supervisor) on 127.0.0.1:<port>; an external target reaches a configured base URL. Each target
has its own pooled ``ClientSession``, created and closed with the app (``cleanup_ctx``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp import web

from vllama.config import Config, ModelConfig
from vllama.errors import Unavailable
from vllama.supervisor.argv import flag_name
from vllama.translate.request import ModelCaps
from vllama.translate.values import CreatedAt
from vllama.upstream import new_session

logger = logging.getLogger("vllama.gateway")


class EngineView(Protocol):
    """What the gateway needs of a supervised engine (the supervisor's Engine satisfies it)."""

    @property
    def ready(self) -> bool: ...

    @property
    def port(self) -> int | None: ...

    def status(self) -> Any:
        """An object with at least ``pid`` (the engine's process-group leader)."""

    def unavailable_reason(self) -> str: ...


CAPABILITIES = ("completion", "embedding", "tools", "thinking", "vision", "insert")


def _has_flag(args: Iterable[str], *flags: str) -> str | None:
    """The value of the last of ``flags`` in an argv (``--f v`` or ``--f=v``), '' for a bare
    flag, None when absent or switched off (``--no-f``). Spellings are normalized the way
    the supervisor reads them (``supervisor.argv.flag_name``: underscores count as dashes),
    so what the engine runs with and what the gateway advertises agree."""
    found: str | None = None
    items = list(args)
    for i, arg in enumerate(items):
        if flag_name(arg) not in flags:
            continue
        if arg.split("=", 1)[0].replace("_", "-").startswith("--no-"):
            found = None
        elif "=" in arg:
            found = arg.split("=", 1)[1]
        else:
            nxt = items[i + 1] if i + 1 < len(items) else ""
            found = "" if nxt.startswith("--") else nxt
    return found


def capabilities(model: ModelConfig, engine_args: Iterable[str],
                 hf_config: Mapping[str, Any] | None) -> ModelCaps:
    """Ollama capabilities, decided from the engine flags and the model's config.json.

    tools needs vLLM's auto tool choice, thinking needs a reasoning parser (a wrong
    `thinking` breaks every `ollama run` chat), embedding is the pooling runner."""
    if model.capabilities:
        return _caps(model.capabilities, model.fim_template)
    args = [*engine_args, *model.vllm_args]
    caps: list[str] = []
    runner = _has_flag(args, "--runner")
    convert = _has_flag(args, "--convert")
    archs = " ".join((hf_config or {}).get("architectures") or [])
    embedding = (runner == "pooling" or convert in ("embed", "classify")
                 or any(k in archs for k in ("BertModel", "EmbeddingModel", "XLMRobertaModel"))
                 or (hf_config or {}).get("model_type") in ("bert", "nomic_bert", "xlm-roberta"))
    caps.append("embedding" if embedding else "completion")
    if not embedding:
        if _has_flag(args, "--enable-auto-tool-choice") is not None:
            caps.append("tools")
        if _has_flag(args, "--reasoning-parser") is not None:
            caps.append("thinking")
        if hf_config and ("vision_config" in hf_config or "ForConditionalGeneration" in archs):
            caps.append("vision")
        if model.fim_template:
            caps.append("insert")
    return _caps(caps, model.fim_template)


def _caps(names: Iterable[str], fim_template: str) -> ModelCaps:
    wanted = set(names)
    return ModelCaps(completion="completion" in wanted, embedding="embedding" in wanted,
                     tools="tools" in wanted, thinking="thinking" in wanted,
                     vision="vision" in wanted,
                     insert_template=(fim_template or None) if "insert" in wanted else None)


def max_model_len(model: ModelConfig, engine_args: Iterable[str],
                  hf_config: Mapping[str, Any] | None) -> int:
    """The context the engine runs with: --max-model-len if given, else the model's own."""
    value = _has_flag([*engine_args, *model.vllm_args], "--max-model-len")
    if value:
        try:
            return int(value.lower().removesuffix("k")) * (1024 if value.lower().endswith("k")
                                                           else 1)
        except ValueError:
            pass
    cfg = hf_config or {}
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = (text or {}).get(key)
        if isinstance(v, int) and v > 0:
            return v
    return 0


@dataclass
class Target:
    """One model name clients can ask for, and how to reach the server that serves it."""

    model: ModelConfig
    session: aiohttp.ClientSession
    caps: ModelCaps
    context_length: int = 0
    hf_config: Mapping[str, Any] | None = None
    chat_template: str = ""
    model_dir: Path | None = None
    lookup: Callable[[str], EngineView | None] | None = None
    created: float = field(default_factory=time.time)
    # created_at formatter shared by this target's requests: its per-second cache then
    # survives from one request to the next (a fresh one per request formats every time).
    created_at: CreatedAt = field(default_factory=CreatedAt, repr=False, compare=False)

    @property
    def engine(self) -> EngineView | None:
        """The supervised engine, looked up live (engines are replaced on reload)."""
        if self.model.upstream or self.lookup is None:
            return None
        return self.lookup(self.model.name)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def upstream_model(self) -> str:
        """The model id the upstream knows: our served-model-name for local engines."""
        return self.model.upstream_model or self.model.name

    @property
    def digest(self) -> str:
        basis = f"{self.model.name}\0{self.model.source}\0{self.model.upstream}"
        return hashlib.sha256(basis.encode()).hexdigest()

    @property
    def weights_size(self) -> int:
        """Bytes of weights on disk (0 for an external upstream)."""
        if self.model_dir is None:
            return 0
        return sum(p.stat().st_size for p in self.model_dir.glob("*.safetensors"))

    def base_url(self) -> str:
        """Where requests go now; Unavailable (503, with why) while the engine is not ready."""
        if self.model.upstream:
            return self.model.upstream.rstrip("/")
        engine = self.engine
        if engine is None:
            raise Unavailable(f"model '{self.name}' is not running yet (vllama is starting)")
        if not engine.ready or engine.port is None:
            raise Unavailable(engine.unavailable_reason())
        return f"http://127.0.0.1:{engine.port}/v1"

    def server_url(self) -> str:
        """Base URL without /v1, for vLLM's own routes (/health, /tokenize, /metrics)."""
        base = self.base_url()
        return base[:-3] if base.endswith("/v1") else base


def read_model_files(model: ModelConfig, models_dir: str) -> tuple[Path | None, dict[str, Any] |
                                                                    None, str]:
    """config.json and the chat template of a local model (a directory or a cached HF repo)."""
    directory = model_directory(model.source, models_dir) if model.source else None
    if directory is None:
        return None, None, ""
    hf_config: dict[str, Any] | None = None
    try:
        hf_config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        hf_config = None
    return directory, hf_config, chat_template(directory)


def chat_template(directory: Path) -> str:
    try:
        return (directory / "chat_template.jinja").read_text()
    except OSError:
        pass
    try:
        tok = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return ""
    template = tok.get("chat_template", "")
    if isinstance(template, list):  # named templates: the default one
        for item in template:
            if isinstance(item, dict) and item.get("name") == "default":
                return str(item.get("template", ""))
        return ""
    return str(template or "")


def model_directory(source: str, models_dir: str) -> Path | None:
    """A local directory as given, or the newest snapshot of a repo in the HF cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if "/" not in source or source.startswith(("/", ".")):
        return None
    repo_dir = Path(models_dir) / "hub" / ("models--" + source.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    try:
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
    except OSError:
        snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
        if not snapshots:
            return None
        snapshot = snapshots[-1]
    return snapshot if snapshot.is_dir() else None


class Router:
    """Name -> Target. Built once from config (and rebuilt on reload); read-only on the
    request path, so no lock is needed."""

    def __init__(self, targets: Iterable[Target]) -> None:
        self._index(list(targets))

    def _index(self, targets: list[Target]) -> None:
        # Built aside and swapped in whole: a request sees the old or the new table, never a mix.
        by_name = {t.name: t for t in targets}
        folded = {k.lower(): v for k, v in by_name.items()}
        self.targets, self._by_name, self._folded = targets, by_name, folded

    def replace(self, new: list[Target]) -> list[Target]:
        """Swap in a new table (config reload). Targets whose model settings did not change
        are kept with their pooled sessions; returns the dropped targets (close them)."""
        old = {_model_key(t.model): t for t in self.targets}
        kept: list[Target] = []
        unused: list[Target] = []
        for target in new:
            previous = old.pop(_model_key(target.model), None)
            if previous is not None:
                kept.append(previous)
                unused.append(target)
            else:
                kept.append(target)
        self._index(kept)
        return [*old.values(), *unused]

    def resolve(self, requested: str) -> Target | None:
        """Exact name, then without ``:latest`` (or with it), then case-insensitively."""
        for candidate in (requested, requested.removesuffix(":latest"), requested + ":latest"):
            hit = self._by_name.get(candidate)
            if hit is not None:
                return hit
        for candidate in (requested, requested.removesuffix(":latest"), requested + ":latest"):
            hit = self._folded.get(candidate.lower())
            if hit is not None:
                return hit
        return None

    def for_upstream_model(self, model_id: str) -> Target | None:
        for target in self.targets:
            if target.upstream_model == model_id:
                return target
        return None


ROUTER = web.AppKey("router", Router)


def _model_key(model: ModelConfig) -> bytes:
    return msgspec.json.encode(model)


EngineLookup = Callable[[str], EngineView | None]


def build_targets(cfg: Config, lookup: EngineLookup | None, engine_key: str = ""
                  ) -> list[Target]:
    """One target per configured model. ``engine_key`` is the private key the daemon gives
    its engines (VLLM_API_KEY), so only the gateway can use them."""
    targets = []
    for model in cfg.models:
        directory, hf_config, template = read_model_files(model, cfg.models_dir)
        key = model.upstream_api_key if model.upstream else engine_key
        session = new_session(limit=cfg.upstream_connections, keepalive=cfg.upstream_keepalive,
                              connect_timeout=cfg.upstream_connect_timeout, api_key=key)
        targets.append(Target(
            model=model, session=session,
            caps=capabilities(model, cfg.vllm_args, hf_config),
            context_length=max_model_len(model, cfg.vllm_args, hf_config),
            hf_config=hf_config, chat_template=template, model_dir=directory,
            lookup=lookup,
        ))
    return targets


def router_ctx(cfg: Config, lookup: EngineLookup | None, engine_key: str = "") -> Any:
    """cleanup_ctx: sessions open with the app and close with it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        router = app[ROUTER]
        router.replace(build_targets(cfg, lookup, engine_key))
        try:
            yield
        finally:
            for target in router.targets:
                await target.session.close()

    return ctx
