"""The Hugging Face hub cache on disk: which repos and snapshots it holds, whether a snapshot is
complete, its size and a stable digest. Layout (huggingface_hub's):

    <cache>/models--<org>--<name>/{refs/main, snapshots/<commit>/<file> -> ../../blobs/<etag>,
                                   blobs/<etag>}

vllama adds `.vllama/<commit>.pulling` while a pull runs and `.vllama/<commit>.complete` when it
has finished and verified, inside the repo folder, so markers live and die with the repo and are
shared by every process using the same cache. A snapshot with a `.pulling` marker and no
`.complete` one never lists; a snapshot with neither (downloaded by another tool) lists when it
looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MARKER_DIR = ".vllama"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def repo_id_from_folder(folder: str) -> str | None:
    if not folder.startswith("models--"):
        return None
    parts = folder.removeprefix("models--").split("--")
    return "/".join(parts) if len(parts) == 2 and all(parts) else None


@dataclass(frozen=True)
class Snapshot:
    repo_id: str
    commit: str
    path: Path  # snapshots/<commit>
    repo_dir: Path

    @property
    def complete_marker(self) -> Path:
        return self.repo_dir / MARKER_DIR / f"{self.commit}.complete"

    @property
    def pulling_marker(self) -> Path:
        return self.repo_dir / MARKER_DIR / f"{self.commit}.pulling"


def cached_repo_ids(cache_dir: Path) -> list[str]:
    try:
        entries = sorted(os.listdir(cache_dir))
    except OSError:
        return []
    return [rid for rid in map(repo_id_from_folder, entries) if rid is not None]


def current_snapshot(cache_dir: Path, repo_id: str) -> Snapshot | None:
    """The snapshot `refs/main` points at; else the newest snapshot folder."""
    repo_dir = cache_dir / repo_folder(repo_id)
    snaps = repo_dir / "snapshots"
    commit = ""
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        pass
    if not commit or not (snaps / commit).is_dir():
        try:
            candidates = sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return None
        dirs = [p for p in candidates if p.is_dir()]
        if not dirs:
            return None
        commit = dirs[0].name
    return Snapshot(repo_id, commit, snaps / commit, repo_dir)


def snapshot_files(snap: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(snap):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def looks_complete(snap: Path) -> bool:
    """For snapshots vllama did not pull: config.json, every file resolving, and weights (all
    shards the index names)."""
    if not (snap / "config.json").is_file():
        return False
    files = list(snapshot_files(snap))
    if any(not f.exists() for f in files):  # a dangling link: its blob is missing
        return False
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = snap / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text()).get("weight_map", {})
            except (OSError, ValueError):
                return False
            return all((snap / shard).is_file() for shard in set(weight_map.values()))
    return any(f.name.endswith(WEIGHT_SUFFIXES) for f in files)


def is_complete(snapshot: Snapshot) -> bool:
    if snapshot.complete_marker.exists():
        return True
    if snapshot.pulling_marker.exists():
        return False
    return looks_complete(snapshot.path)


def _blob_key(path: Path) -> tuple[str, int]:
    """(blob name, size): the blob a snapshot link points at is named by its etag."""
    target = path.resolve()
    return target.name, target.stat().st_size


def snapshot_size(snap: Path) -> int:
    seen: dict[str, int] = {}
    for f in snapshot_files(snap):
        try:
            key, size = _blob_key(f)
        except OSError:
            continue
        seen[str(f.resolve()) if not f.is_symlink() else key] = size
    return sum(seen.values())


def snapshot_digest(snap: Path) -> str:
    """sha256 hex over sorted (relative path, blob etag, size): stable while the files are."""
    digest = hashlib.sha256()
    for f in snapshot_files(snap):
        try:
            key, size = _blob_key(f)
        except OSError:
            continue
        rel = f.relative_to(snap).as_posix()
        digest.update(f"{rel}\0{key}\0{size}\n".encode())
    return digest.hexdigest()


def dir_digest(path: Path) -> str:
    """Digest of a plain directory (local model dir): relative paths, sizes and mtimes."""
    digest = hashlib.sha256()
    for f in snapshot_files(path):
        try:
            st = f.stat()
        except OSError:
            continue
        digest.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                      .encode())
    return digest.hexdigest()


def modified_time(snapshot: Snapshot) -> float:
    for candidate in (snapshot.complete_marker, snapshot.path):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return 0.0


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
