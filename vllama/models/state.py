"""Aliases made with `vllama cp` and `/api/create`, persisted as JSON in vllama's state dir.

The file is the single owner of this state: every change reads it, edits, and rewrites it
atomically, so the CLI and the daemon can both edit it without readers seeing half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from vllama.errors import VllamaError
from vllama.models.cache import write_atomic
from vllama.models.names import normalize

ALIASES_FILE = "aliases.json"


class UserAlias(msgspec.Struct, kw_only=True):
    name: str  # display name, explicit tag
    source: str  # repo id or absolute directory
    system: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    template: str = ""
    created_at: float = 0.0


class _File(msgspec.Struct):
    aliases: list[UserAlias] = msgspec.field(default_factory=list)


class AliasStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ALIASES_FILE
        # The gateway asks for overrides on every request: re-read only when the file changed
        # (another process may have written it; writes are renames, so the inode changes).
        self._cached: tuple[tuple[int, int, int], list[UserAlias]] | None = None

    def load(self) -> list[UserAlias]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cached is None or self._cached[0] != stamp:
            try:
                aliases = msgspec.json.decode(self.path.read_bytes(), type=_File).aliases
            except msgspec.DecodeError as exc:
                raise VllamaError(f"cannot read vllama's aliases from {self.path}: {exc}; fix "
                                  "or remove the file") from exc
            self._cached = (stamp, aliases)
        return list(self._cached[1])

    def get(self, name: str) -> UserAlias | None:
        key = normalize(name)
        for alias in self.load():
            if normalize(alias.name) == key:
                return alias
        return None

    def put(self, alias: UserAlias) -> None:
        key = normalize(alias.name)
        rest = [a for a in self.load() if normalize(a.name) != key]
        self._save([*rest, alias])

    def remove(self, name: str) -> bool:
        key = normalize(name)
        current = self.load()
        rest = [a for a in current if normalize(a.name) != key]
        if len(rest) == len(current):
            return False
        self._save(rest)
        return True

    def _save(self, aliases: list[UserAlias]) -> None:
        data = msgspec.json.format(msgspec.json.encode(_File(aliases)), indent=2)
        write_atomic(self.path, data + b"\n")
