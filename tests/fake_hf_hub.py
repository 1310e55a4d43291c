"""A local fake of the part of the Hugging Face Hub API that huggingface_hub uses to pull a
model snapshot, so pull tests never touch the network.

Speaks:
- `GET /api/models/{org}/{name}[/revision/{rev}]` -> model info with `sha` and `siblings`
  (`?blobs=true` adds size, blobId and lfs {size, sha256, pointerSize});
- `HEAD|GET /{org}/{name}/resolve/{rev}/{path}` -> the file with `ETag`, `X-Repo-Commit`,
  `Content-Length` (and `X-Linked-Etag`/`X-Linked-Size` for LFS files), honouring
  `Range: bytes=N-` and `bytes=N-M` with 206 + `Content-Range`;
- the hub's error headers: 404 `X-Error-Code: RepoNotFound` / `EntryNotFound` /
  `RevisionNotFound`, and for a gated repo 401 (no token) or 403 (a token without access) with
  `X-Error-Code: GatedRepo`.

Scriptable through `HubScript` (a mutable dataclass tests tweak): drop the connection part-way
through a file, answer a status instead of a file, slow the body down, never answer at all.
`HubState` counts what was served (bytes per file, Range requests) so tests can tell a resume
from a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

GOOD_TOKEN = "hf_fake_good_token"


def git_blob_id(data: bytes) -> str:
    """The git object id of a file, which the hub reports as `blobId` and ETag of non-LFS
    files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False

    @property
    def sha(self) -> str:
        """The commit id: derived from the contents so it changes when a file does."""
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + git_blob_id(self.files[path]).encode())
        return digest.hexdigest()

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith((".safetensors", ".bin", ".onnx", ".gguf", ".pt"))

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(path) else git_blob_id(data)


@dataclass
class HubScript:
    """What the hub does to the next requests; tests change it between steps."""

    # path -> number of bytes after which the connection drops; each entry fires once per
    # count in `drop_times` (default once).
    drop_after: dict[str, int] = field(default_factory=dict)
    drop_times: dict[str, int] = field(default_factory=dict)
    # path -> statuses the next GETs of that file answer with, one per request.
    fail_get: dict[str, list[int]] = field(default_factory=dict)
    chunk_size: int = 64 * 1024
    chunk_delay: float = 0.0  # seconds between body chunks: makes progress observable
    # A hub that never answers: every request is held (no status, no byte) until its client
    # gives up or a test sets this back to False.
    hang: bool = False


@dataclass
class HubState:
    requests: list[tuple[str, str]] = field(default_factory=list)
    bytes_served: dict[str, int] = field(default_factory=dict)
    range_requests: list[tuple[str, str]] = field(default_factory=list)
    tokens_seen: list[str | None] = field(default_factory=list)
    hung: int = 0  # requests held by `HubScript.hang`

    def total_bytes(self) -> int:
        return sum(self.bytes_served.values())


HUB_REPOS = web.AppKey("hub_repos", dict)
HUB_SCRIPT = web.AppKey("hub_script", HubScript)
HUB_STATE = web.AppKey("hub_state", HubState)


def _error(status: int, code: str, message: str, *, commit: str | None = None) -> web.Response:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if commit is not None:
        headers["X-Repo-Commit"] = commit
    return web.json_response({"error": message}, status=status, headers=headers)


def _find(request: web.Request) -> HubRepo | None:
    repos: dict[str, HubRepo] = request.app[HUB_REPOS]
    wanted = f"{request.match_info['org']}/{request.match_info['name']}".lower()
    for repo_id, repo in repos.items():
        if repo_id.lower() == wanted:
            return repo
    return None


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None


async def _hang(request: web.Request) -> None:
    script = request.app[HUB_SCRIPT]
    request.app[HUB_STATE].hung += 1
    # Polled: aiohttp tells a handler nothing when its client leaves, only the transport does.
    while (  # noqa: ASYNC110
            script.hang and request.transport is not None and not request.transport.is_closing()):
        await asyncio.sleep(0.05)


async def model_info(request: web.Request) -> web.Response:
    state = request.app[HUB_STATE]
    state.requests.append((request.method, request.path))
    if request.app[HUB_SCRIPT].hang:
        await _hang(request)
    repo = _find(request)
    if repo is None:
        return _error(404, "RepoNotFound", "Repository not found")
    rev = request.match_info.get("rev", "main")
    if rev not in ("main", repo.sha):
        return _error(404, "RevisionNotFound", "Invalid rev id: " + rev)
    blobs = request.query.get("blobs", "").lower() in ("1", "true")
    siblings: list[dict[str, object]] = []
    for path in sorted(repo.files):
        sibling: dict[str, object] = {"rfilename": path}
        if blobs:
            data = repo.files[path]
            sibling["size"] = len(data)
            sibling["blobId"] = git_blob_id(data)
            if repo.is_lfs(path):
                sibling["lfs"] = {"size": len(data), "sha256": repo.etag(path),
                                  "pointerSize": 134}
        siblings.append(sibling)
    return web.json_response({
        "_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id,
        "sha": repo.sha, "private": False, "gated": "manual" if repo.gated else False,
        "disabled": False, "lastModified": "2025-01-01T00:00:00.000Z", "tags": [],
        "siblings": siblings,
    })


async def resolve(request: web.Request) -> web.StreamResponse:
    state = request.app[HUB_STATE]
    script = request.app[HUB_SCRIPT]
    state.requests.append((request.method, request.path))
    if script.hang:
        await _hang(request)
    repo = _find(request)
    if repo is None:
        return _error(404, "RepoNotFound", "Repository not found")
    token = _token(request)
    state.tokens_seen.append(token)
    if repo.gated and token != GOOD_TOKEN:
        status = 401 if token is None else 403
        return _error(status, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You "
                      "must have access to it and be authenticated to access it. Please log in.")
    rev, path = request.match_info["rev"], request.match_info["path"]
    if rev not in ("main", repo.sha):
        return _error(404, "RevisionNotFound", "Invalid rev id: " + rev)
    if path not in repo.files:
        return _error(404, "EntryNotFound", "Entry not found", commit=repo.sha)
    data = repo.files[path]
    etag = repo.etag(path)
    headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
    if repo.is_lfs(path):
        headers["X-Linked-Etag"] = f'"{etag}"'
        headers["X-Linked-Size"] = str(len(data))
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(data))
        return web.Response(status=200, headers=headers)
    failures = script.fail_get.get(path)
    if failures:
        return _error(failures.pop(0), "", "scripted failure")
    start, end = 0, len(data)
    rng = request.headers.get("Range")
    if rng is not None:
        state.range_requests.append((path, rng))
        first, _, last = rng.removeprefix("bytes=").partition("-")
        start = int(first)
        # `bytes=N-M` is inclusive (huggingface_hub reads safetensors headers that way).
        end = min(int(last) + 1, len(data)) if last else len(data)
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
    body = data[start:end]
    headers["Content-Length"] = str(len(body))
    response = web.StreamResponse(status=206 if rng is not None else 200, headers=headers)
    await response.prepare(request)
    drop_at = None
    if script.drop_times.get(path, 1) > 0 and path in script.drop_after:
        drop_at = max(script.drop_after[path] - start, 0)
    sent = 0
    while sent < len(body):
        chunk = body[sent : sent + script.chunk_size]
        if drop_at is not None and sent + len(chunk) >= drop_at:
            chunk = chunk[: drop_at - sent]
            await response.write(chunk)
            state.bytes_served[path] = state.bytes_served.get(path, 0) + len(chunk)
            script.drop_times[path] = script.drop_times.get(path, 1) - 1
            # Cut the TCP connection mid-body: the client sees a short read, as on a real
            # network failure.
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(chunk)
        sent += len(chunk)
        state.bytes_served[path] = state.bytes_served.get(path, 0) + len(chunk)
        if script.chunk_delay:
            await asyncio.sleep(script.chunk_delay)
    await response.write_eof()
    return response


def make_app(repos: list[HubRepo], script: HubScript | None = None) -> web.Application:
    app = web.Application()
    app[HUB_REPOS] = {repo.repo_id: repo for repo in repos}
    app[HUB_SCRIPT] = script or HubScript()
    app[HUB_STATE] = HubState()
    app.router.add_get("/api/models/{org}/{name}", model_info)
    app.router.add_get("/api/models/{org}/{name}/revision/{rev}", model_info)
    # add_get also registers HEAD.
    app.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", resolve)
    return app


# ----------------------------------------------------------------------------- repo contents


def read_safetensors(data: bytes) -> tuple[dict[str, dict[str, object]], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    header: dict[str, dict[str, object]] = json.loads(data[8 : 8 + length])
    return header, data[8 + length :]


def write_safetensors(tensors: dict[str, tuple[dict[str, object], bytes]]) -> bytes:
    """tensors: name -> (header entry without offsets, raw bytes)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, (entry, raw) in tensors.items():
        header[name] = {**entry, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)


def shard(model: bytes, parts: int = 2) -> dict[str, bytes]:
    """Split one safetensors file into `parts` shards plus model.safetensors.index.json, the
    layout big checkpoints use."""
    header, payload = read_safetensors(model)
    names = [n for n in header if n != "__metadata__"]
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    per = -(-len(names) // parts)
    for i in range(parts):
        fname = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk: dict[str, tuple[dict[str, object], bytes]] = {}
        for name in names[i * per : (i + 1) * per]:
            entry = dict(header[name])
            offsets = entry.pop("data_offsets")
            assert isinstance(offsets, list)
            start, end = int(offsets[0]), int(offsets[1])
            chunk[name] = (entry, payload[start:end])
            weight_map[name] = fname
        files[fname] = write_safetensors(chunk)
    index = {"metadata": {"total_size": len(payload)}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    return files


README = b"""---
license: apache-2.0
library_name: transformers
---
# Tiny test model
"""


def model_files(source_dir: Path, *, sharded: bool = False) -> dict[str, bytes]:
    """The files of a repo built from a directory with a HF checkpoint (e.g. the tiny model),
    plus files a pull must skip (PyTorch/ONNX duplicates of the weights)."""
    files = {p.name: p.read_bytes() for p in sorted(source_dir.iterdir()) if p.is_file()}
    if sharded:
        files.update(shard(files.pop("model.safetensors")))
    files["README.md"] = README
    files["LICENSE"] = b"Apache License\nVersion 2.0, January 2004\n"
    files["pytorch_model.bin"] = b"\0" * 4096
    files["onnx/model.onnx"] = b"\0" * 4096
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    return files
