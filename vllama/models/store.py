"""ModelStore: the one object the gateway and the CLI ask about models. It joins the configured
models, names (names.py), the HF cache (cache.py), what model files say (facts.py), vllama's
own aliases (state.py) and pulling (pull.py), so a name means the same model everywhere.

Methods doing file I/O are synchronous and cheap (stat calls and small JSON files); the gateway
runs them with `asyncio.to_thread`, except `resolve_served`, which does no I/O. `pull` is an
async iterator of Ollama progress objects.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from vllama.config import Config, ModelConfig, Runtime
from vllama.errors import BadRequest, NotFound
from vllama.models import cache, facts
from vllama.models.facts import ModelFiles
from vllama.models.names import (
    InvalidName,
    Resolved,
    ServedIndex,
    display_name,
    normalize,
    parse_name,
    resolve,
    resolve_served,
    validate,
)
from vllama.models.pulls import Pulls
from vllama.models.state import AliasStore, UserAlias
from vllama.translate.request import ModelCaps
from vllama.wire.ollama import ListModel, ModelDetails, ShowResponse

NO_STORE = ("model management is not available: vllama runs without a model cache or state "
            "directory (set models_dir and state_dir)")


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
    """A model under one of its names, with what its files say."""

    name: str  # display name with tag
    source: str  # repo id, absolute directory, or "" (a remote upstream)
    path: Path | None  # the directory vLLM loads (snapshot or local dir); None: not on disk
    kind: str  # names.Kind
    size: int
    digest: str
    modified: float
    files: ModelFiles
    model: ModelConfig  # the configured model, or what serving this source would use
    served: bool  # a configured model serves it

    @property
    def details(self) -> ModelDetails:
        return facts.details(self.files)


@dataclass(frozen=True)
class _Present:
    source: str
    path: Path
    size: int
    digest: str
    modified: float
    pulled_as: tuple[str, ...]


class ModelStore:
    def __init__(self, cache_dir: Path | None, state_dir: Path | None, *,
                 models: Sequence[ModelConfig] = (), common_args: Sequence[str] = (),
                 token: str | None = None, endpoint: str | None = None,
                 config_aliases: Mapping[str, str] | None = None, max_workers: int = 4,
                 pulls: Pulls | None = None, hub_timeout: float | None = None) -> None:
        """cache_dir: the hub cache (`hub_cache_dir(config.models_dir)`), None for none;
        state_dir: vllama's state dir (aliases.json), None for none; models: the configured
        models; common_args: the config's global vllm_args; token/endpoint: HF_TOKEN /
        HF_ENDPOINT as config read them (None: huggingface_hub's own defaults); pulls: the
        pulls in progress (a store made anew on a reload takes over the old one's);
        hub_timeout: seconds a hub metadata call may take (None: huggingface_hub's
        HF_HUB_ETAG_TIMEOUT)."""
        self.cache_dir = cache_dir
        self.state_dir = state_dir
        self.configured = tuple(models)
        self.served = ServedIndex(self.configured)
        self.common_args = tuple(common_args)
        self.token = token or None
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.config_aliases = dict(config_aliases or {})
        self.max_workers = max_workers
        self.pulls = pulls or Pulls()
        self.hub_timeout = hub_timeout
        self.user_aliases = AliasStore(state_dir) if state_dir is not None else None
        self.started = time.time()
        # (path, digest) -> facts: reading safetensors headers on every /api/tags is wasteful.
        self._files: dict[tuple[Path, str], ModelFiles] = {}

    @classmethod
    def from_config(cls, config: Config, runtime: Runtime | None = None,
                    pulls: Pulls | None = None) -> ModelStore:
        """The store over a Config's models, cache and state dirs (the daemon's and the
        CLI's); an empty models_dir or state_dir means none (Config() in tests)."""
        return cls(hub_cache_dir(config.models_dir) if config.models_dir else None,
                   Path(config.state_dir) if config.state_dir else None,
                   models=config.models, common_args=config.vllm_args,
                   token=(runtime.hf_token or None) if runtime else None,
                   endpoint=(runtime.hf_endpoint or None) if runtime else None,
                   config_aliases=dict(config.aliases), pulls=pulls)

    @property
    def cache(self) -> Path:
        """The hub cache (BadRequest saying what to set when this store has none)."""
        if self.cache_dir is None:
            raise BadRequest(NO_STORE)
        return self.cache_dir

    # ------------------------------------------------------------------ names

    def resolve_served(self, name: str) -> Resolved | None:
        """A configured model's own name, without I/O (the gateway's fast path)."""
        return resolve_served(name, self.served)

    def set_remote(self, models: Sequence[ModelConfig]) -> None:
        """Models discovered at remote endpoints (`[[upstreams]]`), served beside the
        configured ones (a configured name wins). The index is swapped whole: readers in
        other threads see the old one or the new one."""
        taken = {normalize(m.name) for m in self.configured}
        self.served = ServedIndex((*self.configured,
                                   *(m for m in models if normalize(m.name) not in taken)))

    def resolve(self, name: str, *, allow_paths: bool = False) -> Resolved | None:
        """Resolve a name (raises InvalidName); None if nothing matches."""
        users = {a.name: a.source for a in self._aliases()}
        return resolve(name, served=self.served, config_aliases=self.config_aliases,
                       user_aliases=users, cached_repos=self._cached_repo_ids(),
                       allow_paths=allow_paths)

    def _aliases(self) -> list[UserAlias]:
        return self.user_aliases.load() if self.user_aliases is not None else []

    def _cached_repo_ids(self) -> list[str]:
        return cache.cached_repo_ids(self.cache_dir) if self.cache_dir is not None else []

    def overrides_for(self, name: str) -> Overrides | None:
        """Defaults made with `/api/create` (or carried over by cp) for `name`, if any."""
        if self.user_aliases is None:
            return None
        try:
            validate(name)
        except InvalidName:
            return None
        alias = self.user_aliases.get(name)
        if alias is None or not (alias.system or alias.parameters or alias.template):
            return None
        return Overrides(system=alias.system, parameters=dict(alias.parameters),
                         template=alias.template)

    # ------------------------------------------------------------------ facts

    def files_for(self, path: Path | None, digest: str = "") -> ModelFiles:
        if path is None:
            return facts.NO_FILES
        key = (path, digest or cache.dir_digest(path))
        found = self._files.get(key)
        if found is None:
            found = self._files[key] = facts.read_files(path)
        return found

    def model_files(self, model: ModelConfig) -> ModelFiles:
        """What the files of the model an engine serves say: its directory, or its repo's
        snapshot in the cache (NO_FILES when not on disk: a remote upstream, a repo vLLM
        will download itself). Takes the ModelConfig, not a name: a model nobody configured
        is named by its source, which may be a directory no name lookup accepts."""
        present = self._present(model.source)
        return facts.NO_FILES if present is None else self.files_for(present.path,
                                                                     present.digest)

    def engine_args(self, found: LocalModel) -> tuple[str, ...]:
        """The arguments the model's engine runs with (the configured ones, and the parsers
        its template needs): a model nobody configured gets the config's common ones."""
        return facts.engine_args(found.files, found.model, self.common_args)

    def capabilities(self, found: LocalModel) -> ModelCaps:
        return facts.capabilities(found.files, found.model, self.engine_args(found))

    def context_length(self, found: LocalModel) -> int:
        """The engine's context length; for a remote model, what its config or its upstream
        says (`context_length`)."""
        return facts.context_length(found.files, self.engine_args(found),
                                    found.model.context_length)

    # ------------------------------------------------------------------ presence

    def _present_repo(self, repo_id: str) -> _Present | None:
        if self.cache_dir is None:
            return None
        snap = cache.current_snapshot(self.cache_dir, repo_id)
        if snap is None or not cache.is_complete(snap):
            return None
        pulled_as: tuple[str, ...] = ()
        marker = facts.read_json(snap.complete_marker)
        if isinstance(marker.get("names"), list):
            pulled_as = tuple(str(n) for n in marker["names"])
        return _Present(repo_id, snap.path, cache.snapshot_size(snap.path),
                        cache.snapshot_digest(snap.path), cache.modified_time(snap), pulled_as)

    def _present_dir(self, path: Path) -> _Present | None:
        if not (path / "config.json").is_file():
            return None
        size = sum(f.stat().st_size for f in cache.snapshot_files(path) if f.is_file())
        return _Present(str(path), path, size, cache.dir_digest(path),
                        (path / "config.json").stat().st_mtime, ())

    def _present(self, source: str) -> _Present | None:
        if not source:
            return None
        if source.startswith("/"):
            return self._present_dir(Path(source))
        return self._present_repo(source)

    def _local(self, name: str, kind: str, present: _Present | None,
               model: ModelConfig | None) -> LocalModel:
        served = model is not None
        if model is None:
            # A model nobody configured is known to the engines by its source: every name
            # for the same weights reaches the same engine.
            source = present.source if present else ""
            model = ModelConfig(name=source, source=source)
        if present is None:  # a configured model whose files are not here (or remote)
            urls = "\0".join(r.url for r in model.remotes)
            basis = f"{model.name}\0{model.source}\0{urls}"
            return LocalModel(name, model.source, None, kind, 0,
                              hashlib.sha256(basis.encode()).hexdigest(), self.started,
                              facts.NO_FILES, model, served)
        files = self.files_for(present.path, present.digest)
        return LocalModel(name, present.source, present.path, kind,
                          facts.model_size(files, present.size), present.digest,
                          present.modified, files, model, served)

    def find(self, name: str, *, allow_paths: bool = False) -> LocalModel | None:
        """The model `name` stands for: a configured model (its files if they are here), or a
        local model complete on this machine. Raises InvalidName."""
        resolved = self.resolve(name, allow_paths=allow_paths)
        if resolved is None:
            return None
        present = self._present(resolved.source)
        if present is None and resolved.served is None:
            return None
        return self._local(resolved.name, resolved.kind, present, resolved.served)

    def list_models(self) -> list[LocalModel]:
        """Every model under every name it answers to, newest first: the configured models,
        the complete repos in the cache, and the aliases of either."""
        models: dict[str, LocalModel] = {}
        for model in self.served.models:
            found = self._local(display_name(model.name), "served",
                                self._present(model.source), model)
            models.setdefault(normalize(found.name), found)
        by_source: dict[str, _Present] = {}
        for repo_id in self._cached_repo_ids():
            present = self._present_repo(repo_id)
            if present is None:
                continue
            by_source[repo_id.lower()] = present
            serving = self.served.serving(repo_id)
            for shown in present.pulled_as or (display_name(repo_id),):
                models.setdefault(normalize(shown), self._local(shown, "repo", present,
                                                                serving))
        aliases = [(n, "config") for n in self.config_aliases]
        aliases += [(a.name, "user") for a in self._aliases()]
        for alias, kind in aliases:
            resolved = self.resolve(alias, allow_paths=True)
            if resolved is None:
                continue
            present = by_source.get(resolved.source.lower())
            if present is None and resolved.is_path:
                present = self._present_dir(Path(resolved.source))
            if present is not None or resolved.served is not None:
                shown = display_name(alias)
                models.setdefault(normalize(shown), self._local(shown, kind, present,
                                                                resolved.served))
        return sorted(models.values(), key=lambda m: (-m.modified, m.name))

    # ------------------------------------------------------------------ Ollama shapes

    def tag_entry(self, found: LocalModel) -> ListModel:
        return ListModel(name=found.name, model=found.name, modified_at=rfc3339(found.modified),
                         size=found.size, digest=found.digest,
                         details=facts.details(found.files, self.context_length(found) or None),
                         capabilities=self.capabilities(found).names())

    def show(self, name: str, *, allow_paths: bool = False, system: str = "",
             options: Mapping[str, Any] | None = None) -> ShowResponse:
        """`/api/show`'s body; NotFound with Ollama's text otherwise."""
        found = self.find(name, allow_paths=allow_paths)
        if found is None:
            raise NotFound(f"model '{display_name(name)}' not found")
        return self.show_body(found, self.overrides_for(name), system=system, options=options)

    def show_body(self, found: LocalModel, overrides: Overrides | None, *, system: str = "",
                  options: Mapping[str, Any] | None = None) -> ShowResponse:
        """Ollama's ShowResponse. `model_info` is always present: the Python client requires
        the key."""
        model = found.model
        params: dict[str, Any] = {**found.files.generation, **model.parameters}
        system = system or model.system
        template = model.template or found.files.template
        if overrides is not None:
            params.update(overrides.parameters)
            system = system or overrides.system
            template = overrides.template or template
        params.update(options or {})
        parameters = facts.format_parameters(params)
        remotes = model.remotes
        origin = model.source or (remotes[0].url if remotes else "")
        lines = ['# Modelfile generated by "ollama show"',
                 "# To build a new Modelfile based on this, replace FROM with:",
                 f"# FROM {found.name}", "", f"FROM {origin}"]
        if template:
            lines.append(f'TEMPLATE """{template}"""')
        if system:
            lines.append(f'SYSTEM """{system}"""')
        lines += [f"PARAMETER {line}" for line in parameters.splitlines()]
        context = self.context_length(found) or None
        basename = (model.source or (remotes[0].model if remotes else "")
                    or model.name).rstrip("/")
        return ShowResponse(
            details=facts.details(found.files, context),
            model_info=facts.model_info(found.files, context,
                                        basename=basename.rsplit("/", 1)[-1]),
            modified_at=rfc3339(found.modified), license=found.files.license,
            modelfile="\n".join(lines) + "\n", parameters=parameters,
            # Ollama shows the bare prompt template for a model that has none.
            template=template or "{{ .Prompt }}", system=system,
            capabilities=self.capabilities(found).names())

    # ------------------------------------------------------------------ rm / cp / create

    def _alias_store(self) -> AliasStore:
        if self.user_aliases is None:
            raise BadRequest(NO_STORE)
        return self.user_aliases

    def rm(self, name: str, *, running: Collection[str] = ()) -> int:
        """Remove `name`: only the alias if it is one of vllama's aliases, else the repo's
        whole cache folder. Returns the bytes freed. `running`: the sources (repo ids) that
        engines serve now: their weights are not deleted under them."""
        validate(name)
        if self.user_aliases is not None and self.user_aliases.remove(name):
            return 0
        resolved = self.resolve(name)
        if resolved is None:
            raise NotFound(f"model '{name}' not found")
        if resolved.kind == "served":
            raise BadRequest(f"{resolved.name} is a model in vllama's config file; remove it "
                             "there")
        if resolved.kind == "config":
            raise BadRequest(f"{resolved.name} is an alias in vllama's config file; remove it "
                             "there")
        if resolved.is_path:
            raise BadRequest(f"{resolved.source} is a local directory; vllama does not delete "
                             "it")
        if self.cache_dir is None:
            raise NotFound(f"model '{name}' not found")
        if resolved.source.lower() in {r.lower() for r in running}:
            shown = display_name(name)
            raise BadRequest(f"model '{shown}' is running: stop it first (vllama stop "
                             f"{shown}), then delete it")
        repo_dir = self.cache_dir / cache.repo_folder(resolved.source)
        if repo_dir.is_symlink():
            # rmtree refuses a link (and must never delete what it points to).
            raise BadRequest(f"model '{name}' is a symbolic link in the model cache "
                             f"({repo_dir}); vllama deletes only what it downloaded: remove "
                             "the link yourself")
        if not repo_dir.is_dir():
            raise NotFound(f"model '{name}' not found")
        freed = _tree_size(repo_dir)
        shutil.rmtree(repo_dir)
        return freed

    def cp(self, source: str, destination: str, *, allow_paths: bool = False) -> None:
        """`destination` becomes another name for `source`'s model. allow_paths: `source`
        may be an absolute model directory (the CLI; never the API, whose clients must not
        name directories on the server)."""
        aliases = self._alias_store()
        found = self.find(source, allow_paths=allow_paths)
        if found is None:
            raise NotFound(f'model "{source}" not found')
        if not parse_name(destination).valid:
            raise InvalidName(destination)
        carried = aliases.get(source)
        # A copy of a configured model names the model, so it reaches the same engine with
        # the same settings (and works for a remote upstream, which has no source).
        aliases.put(UserAlias(
            name=display_name(destination),
            source=found.model.name if found.served else found.source,
            system=carried.system if carried else "",
            parameters=dict(carried.parameters) if carried else {},
            template=carried.template if carried else "", created_at=time.time()))

    def create(self, name: str, from_: str, *, system: str = "",
               parameters: Mapping[str, Any] | None = None, template: str = "") -> None:
        """An alias of an existing model with request defaults (`/api/create` with `from`)."""
        aliases = self._alias_store()
        if not parse_name(name).valid:
            raise InvalidName(name)
        found = self.find(from_)
        if found is None:
            raise NotFound(f"model '{from_}' not found")
        base = aliases.get(from_)
        merged = {**(base.parameters if base else {}), **dict(parameters or {})}
        aliases.put(UserAlias(
            name=display_name(name),
            source=found.model.name if found.served else found.source,
            system=system or (base.system if base else ""), parameters=merged,
            template=template or (base.template if base else ""), created_at=time.time()))

    def pull(self, name: str) -> AsyncGenerator[dict[str, Any], None]:
        from vllama.models.pull import pull

        return pull(self, name)

    def aliases_table(self) -> list[tuple[str, str, str]]:
        """(name, source, origin) rows: config, then vllama's own, then built-in."""
        from vllama.models.aliases import builtin_table

        rows = [(display_name(n), s, "config") for n, s in self.config_aliases.items()]
        rows += [(a.name, a.source, "user") for a in self._aliases()]
        rows += [(n, s, "builtin") for n, s in builtin_table()]
        return rows


def _tree_size(path: Path) -> int:
    total = 0
    for f in cache.snapshot_files(path):
        if f.is_file() and not f.is_symlink():
            total += f.stat().st_size
    return total


__all__ = ["LocalModel", "ModelStore", "Overrides", "hub_cache_dir"]
