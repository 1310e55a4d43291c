"""ModelStore: the one object the gateway and the CLI use for models on this machine. It joins
names (names.py), the HF cache (cache.py), what model files say (info.py), vllama's own aliases
(state.py) and pulling (pull.py).

Methods doing file I/O are synchronous and cheap (stat calls and small JSON files); the gateway
runs them with `asyncio.to_thread`. `pull` is an async iterator of Ollama progress objects.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from vllama.errors import BadRequest, NotFound
from vllama.models import cache, info
from vllama.models.names import (
    InvalidName,
    Resolved,
    display_name,
    parse_ollama,
    repo_display,
    resolve,
    validate,
)
from vllama.models.state import AliasStore, UserAlias
from vllama.wire.ollama import ListModel as TagEntry
from vllama.wire.ollama import ModelDetails


def hub_cache_dir(models_dir: str | Path) -> Path:
    """The hub cache inside an HF_HOME-style root (`Config.models_dir`): `<root>/hub`."""
    return Path(models_dir).expanduser() / "hub"


def rfc3339(ts: float) -> str:
    """Local time with offset, as Ollama writes modified_at."""
    return datetime.fromtimestamp(ts).astimezone().isoformat()


class Overrides(msgspec.Struct, kw_only=True, frozen=True):
    """Request defaults an alias made by `/api/create` applies: the gateway uses `system` when
    the request has none, merges `parameters` under the request's options, and `template`."""

    system: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    template: str = ""


@dataclass(frozen=True)
class LocalModel:
    """A model present on this machine under one name."""

    name: str  # display name with tag
    source: str  # repo id or absolute directory
    path: Path  # the directory vLLM loads (snapshot or local dir)
    kind: str  # names.Kind
    size: int
    digest: str
    modified: float
    details: ModelDetails

    def tag_entry(self) -> TagEntry:
        return TagEntry(name=self.name, model=self.name, modified_at=rfc3339(self.modified),
                        size=self.size, digest=self.digest, details=self.details)


@dataclass(frozen=True)
class _Present:
    source: str
    path: Path
    size: int
    digest: str
    modified: float
    details: ModelDetails
    pulled_as: tuple[str, ...]


class ModelStore:
    def __init__(self, cache_dir: Path, state_dir: Path, *, token: str | None = None,
                 endpoint: str | None = None, config_aliases: Mapping[str, str] | None = None,
                 max_workers: int = 4) -> None:
        """cache_dir: the hub cache (`hub_cache_dir(config.models_dir)`); state_dir: vllama's
        state dir (aliases.json); token/endpoint: HF_TOKEN/HF_ENDPOINT as config read them
        (None: huggingface_hub's own defaults); config_aliases: `Config.aliases`."""
        self.cache_dir = cache_dir
        self.state_dir = state_dir
        self.token = token or None
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.config_aliases = dict(config_aliases or {})
        self.max_workers = max_workers
        self.user_aliases = AliasStore(state_dir)
        # (path, digest) -> details: reading safetensors headers on every /api/tags is wasteful.
        self._details: dict[tuple[Path, str], ModelDetails] = {}

    # ------------------------------------------------------------------ names

    def resolve(self, name: str, *, allow_paths: bool = False) -> Resolved | None:
        """Resolve a name (raises InvalidName); None if nothing matches."""
        users = {a.name: a.source for a in self.user_aliases.load()}
        return resolve(name, config_aliases=self.config_aliases, user_aliases=users,
                       cached_repos=cache.cached_repo_ids(self.cache_dir),
                       allow_paths=allow_paths)

    def overrides_for(self, name: str) -> Overrides | None:
        """Defaults made with `/api/create` (or carried over by cp) for `name`, if any."""
        try:
            validate(name)
        except InvalidName:
            return None
        alias = self.user_aliases.get(name)
        if alias is None or not (alias.system or alias.parameters or alias.template):
            return None
        return Overrides(system=alias.system, parameters=dict(alias.parameters),
                         template=alias.template)

    # ------------------------------------------------------------------ presence

    def _present_repo(self, repo_id: str) -> _Present | None:
        snap = cache.current_snapshot(self.cache_dir, repo_id)
        if snap is None or not cache.is_complete(snap):
            return None
        digest = cache.snapshot_digest(snap.path)
        pulled_as: tuple[str, ...] = ()
        marker = info.read_json(snap.complete_marker)
        if isinstance(marker.get("names"), list):
            pulled_as = tuple(str(n) for n in marker["names"])
        return _Present(repo_id, snap.path, cache.snapshot_size(snap.path), digest,
                        cache.modified_time(snap), self._details_for(snap.path, digest),
                        pulled_as)

    def _present_dir(self, path: Path) -> _Present | None:
        if not (path / "config.json").is_file():
            return None
        digest = cache.dir_digest(path)
        size = sum(f.stat().st_size for f in cache.snapshot_files(path) if f.is_file())
        return _Present(str(path), path, size, digest, (path / "config.json").stat().st_mtime,
                        self._details_for(path, digest), ())

    def _present(self, source: str) -> _Present | None:
        if source.startswith("/"):
            return self._present_dir(Path(source))
        return self._present_repo(source)

    def _details_for(self, path: Path, digest: str) -> ModelDetails:
        key = (path, digest)
        if key not in self._details:
            self._details[key] = info.details(path)
        return self._details[key]

    def find(self, name: str, *, allow_paths: bool = False) -> LocalModel | None:
        """The model `name` stands for if it is complete on this machine (raises InvalidName)."""
        resolved = self.resolve(name, allow_paths=allow_paths)
        if resolved is None:
            return None
        present = self._present(resolved.source)
        if present is None:
            return None
        return _local(resolved.name, resolved.kind, present)

    def local_path(self, name: str, *, allow_paths: bool = False) -> Path | None:
        """The directory to hand to `vllm serve` for `name`, if present."""
        found = self.find(name, allow_paths=allow_paths)
        return found.path if found else None

    def list_models(self) -> list[LocalModel]:
        """Every complete model under every name it answers to, newest first."""
        models: dict[str, LocalModel] = {}
        by_source: dict[str, _Present] = {}
        for repo_id in cache.cached_repo_ids(self.cache_dir):
            present = self._present_repo(repo_id)
            if present is None:
                continue
            by_source[repo_id.lower()] = present
            names = present.pulled_as or (repo_display(repo_id),)
            for shown in names:
                models.setdefault(shown.lower(), _local(shown, "repo", present))
        aliases = [(n, s, "config") for n, s in self.config_aliases.items()]
        aliases += [(a.name, a.source, "user") for a in self.user_aliases.load()]
        for alias, _source, kind in aliases:
            resolved = self.resolve(alias, allow_paths=True)
            if resolved is None:
                continue
            present = by_source.get(resolved.source.lower())
            if present is None and resolved.is_path:
                present = self._present_dir(Path(resolved.source))
            if present is not None:
                shown = display_name(alias)
                models.setdefault(shown.lower(), _local(shown, kind, present))
        return sorted(models.values(), key=lambda m: (-m.modified, m.name))

    # ------------------------------------------------------------------ show

    def show(self, name: str, *, allow_paths: bool = False) -> dict[str, Any]:
        """`/api/show`'s body for a local model; NotFound with Ollama's text otherwise."""
        found = self.find(name, allow_paths=allow_paths)
        if found is None:
            raise NotFound(f"model '{display_name(name)}' not found")
        return show_body(found, self.overrides_for(name))

    # ------------------------------------------------------------------ rm / cp / create

    def rm(self, name: str) -> int:
        """Remove `name`: only the alias if it is one of vllama's aliases, else the repo's
        whole cache folder. Returns the bytes freed."""
        validate(name)
        if self.user_aliases.remove(name):
            return 0
        resolved = self.resolve(name)
        if resolved is None:
            raise NotFound(f"model '{name}' not found")
        if resolved.kind == "config":
            raise BadRequest(f"{resolved.name} is an alias in vllama's config file; remove it "
                             "there")
        if resolved.is_path:
            raise BadRequest(f"{resolved.source} is a local directory; vllama does not delete "
                             "it")
        repo_dir = self.cache_dir / cache.repo_folder(resolved.source)
        if not repo_dir.is_dir():
            raise NotFound(f"model '{name}' not found")
        freed = _tree_size(repo_dir)
        shutil.rmtree(repo_dir)
        return freed

    def cp(self, source: str, destination: str) -> None:
        found = self.find(source)
        if found is None:
            raise NotFound(f'model "{source}" not found')
        if parse_ollama(destination) is None:
            raise InvalidName(destination)
        carried = self.user_aliases.get(source)
        self.user_aliases.put(UserAlias(
            name=display_name(destination), source=found.source,
            system=carried.system if carried else "",
            parameters=dict(carried.parameters) if carried else {},
            template=carried.template if carried else "", created_at=time.time()))

    def create(self, name: str, from_: str, *, system: str = "",
               parameters: Mapping[str, Any] | None = None, template: str = "") -> None:
        """An alias of an existing model with request defaults (`/api/create` with `from`)."""
        if parse_ollama(name) is None:
            raise InvalidName(name)
        found = self.find(from_)
        if found is None:
            raise NotFound(f"model '{from_}' not found")
        base = self.user_aliases.get(from_)
        merged = {**(base.parameters if base else {}), **dict(parameters or {})}
        self.user_aliases.put(UserAlias(
            name=display_name(name), source=found.source,
            system=system or (base.system if base else ""), parameters=merged,
            template=template or (base.template if base else ""), created_at=time.time()))

    def pull(self, name: str) -> AsyncGenerator[dict[str, Any], None]:
        from vllama.models.pull import pull

        return pull(self, name)

    def aliases_table(self) -> list[tuple[str, str, str]]:
        """(name, source, origin) rows: config, then vllama's own, then built-in."""
        from vllama.models.aliases import builtin_table

        rows = [(display_name(n), s, "config") for n, s in self.config_aliases.items()]
        rows += [(a.name, a.source, "user") for a in self.user_aliases.load()]
        rows += [(n, s, "builtin") for n, s in builtin_table()]
        return rows


def _local(name: str, kind: str, present: _Present) -> LocalModel:
    return LocalModel(name=name, source=present.source, path=present.path, kind=kind,
                      size=present.size, digest=present.digest, modified=present.modified,
                      details=present.details)


def _tree_size(path: Path) -> int:
    total = 0
    for f in cache.snapshot_files(path):
        if f.is_file() and not f.is_symlink():
            total += f.stat().st_size
    return total


def show_body(model: LocalModel, overrides: Overrides | None) -> dict[str, Any]:
    """Ollama's ShowResponse for a local model. `model_info` is always present: the Python
    client requires the key."""
    path = model.path
    config = info.read_json(path / "config.json")
    template = info.chat_template(path)
    params = info.generation_defaults(path)
    system = ""
    if overrides is not None:
        params.update(overrides.parameters)
        system = overrides.system
        template = overrides.template or template
    parameters = info.parameters_text(params)
    license_ = info.license_text(path)
    lines = ['# Modelfile generated by "ollama show"',
             "# To build a new Modelfile based on this, replace FROM with:",
             f"# FROM {model.name}", "", f"FROM {model.source}"]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER {line}" for line in parameters.splitlines()]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    body: dict[str, Any] = {
        "modelfile": "\n".join(lines) + "\n",
        "parameters": parameters,
        "template": template,
        "details": msgspec.to_builtins(model.details),
        "model_info": info.model_info(path, model.source.rsplit("/", 1)[-1]),
        "capabilities": info.capabilities(path, config, template),
        "modified_at": rfc3339(model.modified),
    }
    if system:
        body["system"] = system
    if license_:
        body["license"] = license_
    return body


def store_from_config(config: Any, runtime: Any) -> ModelStore:
    """The store over a loaded Config's cache and state dirs (the daemon's and the CLI's):
    the HF token and endpoint come from the runtime, the config's aliases first."""
    return ModelStore(hub_cache_dir(config.models_dir), Path(config.state_dir),
                      token=runtime.hf_token or None, endpoint=runtime.hf_endpoint or None,
                      config_aliases=dict(config.aliases))


__all__ = ["LocalModel", "ModelStore", "Overrides", "TagEntry", "hub_cache_dir", "show_body",
           "store_from_config"]
