"""Pull a model from the Hugging Face Hub into the HF cache, reported as Ollama progress objects.

Only the files vLLM needs are fetched (config, tokenizer, chat template, safetensors weights
with their index; PyTorch/ONNX/GGUF copies are skipped when safetensors exist). Each file goes
through `huggingface_hub.hf_hub_download` in a worker thread, so the cache layout, HF_TOKEN and
HF_ENDPOINT behave exactly as for every other HF tool. Progress comes from a tqdm stand-in that
huggingface_hub calls from its download loop; the event loop samples it a few times a second.

Resuming: files already in the cache are not fetched again, and huggingface_hub resumes a file
whose connection drops with a `Range` request inside the same pull. (huggingface_hub >= 1.0
discards a partial file when the download finally fails, so across pulls the unit of resumption
is the file.)

Nothing half-pulled lists: a `.pulling` marker is written before the first byte and replaced by
a `.complete` marker only after every file is in place and verified (cache.py).

Every hub call has a timeout (huggingface_hub's HF_HUB_ETAG_TIMEOUT for the metadata, its
HF_HUB_DOWNLOAD_TIMEOUT between bytes of a file); every blocking call runs on the pulls' own
threads (pulls.py), which also make concurrent pulls of one repo one download.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import hashlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from vllama.errors import BadRequest, NotFound, UpstreamError, VllamaError
from vllama.models import cache
from vllama.models.cache import Snapshot
from vllama.translate.models import PULL_NOT_FOUND as NOT_FOUND

if TYPE_CHECKING:
    from vllama.models.store import ModelStore

PROGRESS_INTERVAL = 0.2
HASH_CHUNK = 4 * 1024 * 1024

# Files vLLM reads besides weights. Top-level only, plus sentence-transformers' pooling folder.
_WANTED = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "*.tiktoken",
    "tekken.json", "chat_template*", "preprocessor_config.json", "processor_config.json",
    "video_preprocessor_config.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "*_Pooling/config.json", "*_Dense/config.json",
    "LICENSE", "LICENSE.*", "LICENCE", "README.md", "*.py",
)


class PullCancelled(Exception):
    """Raised inside huggingface_hub's download loop to stop a thread whose pull was
    abandoned (client gone, another file failed)."""


@dataclass
class _File:
    path: str
    total: int
    digest: str  # "sha256:<64 hex>"; Ollama clients group progress by it
    lfs_sha256: str | None
    blob_id: str | None
    completed: int = 0
    reported: int = -1
    downloaded: bool = False

    def progress(self) -> dict[str, Any]:
        self.reported = self.completed
        return {"status": f"pulling {self.digest[7:19]}", "digest": self.digest,
                "total": self.total, "completed": min(self.completed, self.total)}


class _Sink:
    """What huggingface_hub treats as a tqdm bar for one file: counts bytes from the
    download thread, and aborts the download when the pull is cancelled."""

    def __init__(self, file: _File, cancel: threading.Event, **kwargs: Any) -> None:
        self.file = file
        self.cancel = cancel
        file.downloaded = True
        if kwargs.get("total"):
            file.total = int(kwargs["total"])
        file.completed = int(kwargs.get("initial") or 0)

    def update(self, n: float | None = 1) -> None:
        if self.cancel.is_set():
            raise PullCancelled
        self.file.completed += int(n or 0)

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None


def select_files(siblings: Iterable[tuple[str, int | None]]) -> list[str]:
    """The files of a repo to download: configs and tokenizer, plus safetensors weights (only
    the shards the index names, so a repo that also ships `consolidated.safetensors` is not
    fetched twice); PyTorch `.bin` weights only when there are no safetensors."""
    names = [name for name, _ in siblings]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in _WANTED)
              and n.count("/") <= 1 and (n.count("/") == 0 or "Pooling" in n or "Dense" in n)]
    top = [n for n in names if "/" not in n]
    for index, suffix in (("model.safetensors.index.json", ".safetensors"),
                          ("pytorch_model.bin.index.json", ".bin")):
        weights = [n for n in top if n.endswith(suffix)]
        if not weights:
            continue
        if index in top:
            return [*chosen, index, *weights]  # filtered by the index after it is read
        return [*chosen, *weights]
    return chosen


def _digest_of(path: str, lfs_sha256: str | None, blob_id: str | None, repo: str) -> str:
    if lfs_sha256:
        return "sha256:" + lfs_sha256
    ident = f"{repo}:{path}:{blob_id or ''}".encode()
    return "sha256:" + hashlib.sha256(ident).hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _map_error(error: BaseException, repo: str, endpoint: str | None) -> VllamaError:
    """huggingface_hub's exceptions -> vllama errors with texts a user can act on."""
    from huggingface_hub import errors as hf

    if isinstance(error, VllamaError):
        return error
    site = endpoint or "https://huggingface.co"
    if isinstance(error, hf.GatedRepoError):
        status = error.response.status_code if error.response is not None else 401
        if status == 401:
            return VllamaError(
                f"{repo} is a gated model on Hugging Face: accept its license at {site}/{repo} "
                "and set HF_TOKEN to an access token of that account "
                "(https://huggingface.co/settings/tokens)", status=401)
        return VllamaError(
            f"the HF_TOKEN in use has no access to the gated model {repo}: accept its license "
            f"at {site}/{repo} with the account the token belongs to", status=403)
    if isinstance(error, (hf.RepositoryNotFoundError, hf.RevisionNotFoundError,
                          hf.RemoteEntryNotFoundError)):
        return NotFound(NOT_FOUND, status=500)
    if isinstance(error, hf.HfHubHTTPError):
        return UpstreamError(f"pulling {repo} from {site}: {_first_line(error)}")
    return UpstreamError(f"pulling {repo} from {site} failed: {_first_line(error)}")


def _hash_matches(path: Path, file: _File) -> tuple[bool, str]:
    if file.lfs_sha256:
        digest = hashlib.sha256()
        want = file.lfs_sha256
    elif file.blob_id:
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(b"blob %d\0" % path.stat().st_size)
        want = file.blob_id
    else:
        return True, ""
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == want, digest.hexdigest()


def _verify(snap: Path, files: list[_File]) -> None:
    for file in files:
        if not file.downloaded:
            continue
        pointer = snap / file.path
        ok, got = _hash_matches(pointer, file)
        if not ok:
            blob = pointer.resolve()
            pointer.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            want = file.lfs_sha256 or file.blob_id
            raise VllamaError(f"digest mismatch, file must be downloaded again: want {want}, "
                              f"got {got}")


def _finish(snap: Snapshot, files: list[_File], pulled_as: list[str]) -> None:
    """Point refs/main at the commit and replace the `.pulling` marker by `.complete`."""
    cache.write_atomic(snap.repo_dir / "refs" / "main", snap.commit.encode())
    old = _read_marker(snap.complete_marker)
    lowered = {n.lower() for n in pulled_as}
    names = [n for n in old.get("names", []) if isinstance(n, str) and n.lower() not in lowered]
    marker = {"repo": snap.repo_id, "commit": snap.commit, "names": [*names, *pulled_as],
              "files": [f.path for f in files], "completed_at": time.time()}
    cache.write_atomic(snap.complete_marker, msgspec.json.encode(marker))
    snap.pulling_marker.unlink(missing_ok=True)


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _start(snap: Snapshot) -> None:
    snap.pulling_marker.parent.mkdir(parents=True, exist_ok=True)
    snap.pulling_marker.write_bytes(msgspec.json.encode({"started_at": time.time()}))


def _index_weights(snap: Path, files: list[_File]) -> list[_File]:
    """Once the index is local, keep only the shards it names."""
    index = snap / "model.safetensors.index.json"
    if not index.is_file():
        return files
    try:
        weight_map = msgspec.json.decode(index.read_bytes()).get("weight_map", {})
    except (OSError, msgspec.DecodeError, AttributeError):
        return files
    shards = set(weight_map.values())
    return [f for f in files if not f.path.endswith(".safetensors") or f.path in shards]


async def pull(store: ModelStore, name: str) -> AsyncGenerator[dict[str, Any], None]:
    """Ollama progress objects for pulling `name`. Raises before the first object for an
    invalid name; later failures raise after some objects (the route turns them into a final
    `{"error": ...}` line)."""
    resolved = store.resolve(name)  # raises InvalidName before anything is sent
    yield {"status": "pulling manifest"}
    if resolved is not None and resolved.kind == "served":
        # A configured model's name needs no download (`ollama run` and Open WebUI pull
        # before they chat).
        yield {"status": "success"}
        return
    if resolved is None:
        raise NotFound(NOT_FOUND, status=500)
    if resolved.is_path:
        if store.find(name, allow_paths=True) is None:
            raise NotFound(NOT_FOUND, status=500)
        yield {"status": "success"}
        return
    repo = resolved.source
    key = str(store.cache / cache.repo_folder(repo.lower()))  # no cache: BadRequest, here

    def job(names: Callable[[], list[str]]) -> AsyncGenerator[dict[str, Any], None]:
        return _pull_repo(store, repo, names)

    # One download per repo: a client pulling it while it downloads follows that pull.
    async with contextlib.aclosing(store.pulls.follow(key, resolved.name, job)) as followed:
        async for progress in followed:
            yield progress


async def _pull_repo(store: ModelStore, repo: str, names: Callable[[], list[str]]
                     ) -> AsyncGenerator[dict[str, Any], None]:
    """Download `repo` into the cache; `names`: what its clients asked for (listed names)."""
    from huggingface_hub import HfApi, constants

    run = store.pulls.pool.run
    timeout = store.hub_timeout or float(constants.HF_HUB_ETAG_TIMEOUT)
    api = HfApi(endpoint=store.endpoint, token=store.token)
    try:
        info = await run(functools.partial(api.model_info, repo, revision="main",
                                           files_metadata=True, timeout=timeout))
    except Exception as exc:
        raise _map_error(exc, repo, store.endpoint) from exc
    if not info.sha:
        raise UpstreamError(f"pulling {repo}: the hub sent no commit id")
    repo = info.id or repo
    siblings = {s.rfilename: s for s in info.siblings or []}
    wanted = select_files((n, s.size) for n, s in siblings.items())
    if not any(n.endswith((".safetensors", ".bin")) for n in wanted):
        raise BadRequest(f"{repo} has no safetensors or PyTorch weights vLLM can load")
    files: list[_File] = []
    for n in wanted:
        sibling = siblings[n]
        lfs_sha = sibling.lfs.sha256 if sibling.lfs is not None else None
        files.append(_File(path=n, total=sibling.size or 0, lfs_sha256=lfs_sha,
                           blob_id=sibling.blob_id,
                           digest=_digest_of(n, lfs_sha, sibling.blob_id, repo)))
    repo_dir = store.cache / cache.repo_folder(repo)
    snap = Snapshot(repo, info.sha, repo_dir / "snapshots" / info.sha, repo_dir)
    await run(functools.partial(_start, snap))
    # aclosing: if our consumer goes away, the downloads stop now, not whenever the garbage
    # collector finalizes the inner generator.
    async with contextlib.aclosing(_download_all(store, repo, snap, files, timeout)) as downloads:
        async for progress in downloads:
            yield progress
    yield {"status": "verifying sha256 digest"}
    await run(functools.partial(_verify, snap.path, files))
    yield {"status": "writing manifest"}
    await run(functools.partial(_finish, snap, files, names()))
    yield {"status": "success"}


async def _download_all(store: ModelStore, repo: str, snap: Snapshot, files: list[_File],
                        timeout: float) -> AsyncGenerator[dict[str, Any], None]:
    from huggingface_hub import hf_hub_download

    cancel = threading.Event()
    limit = asyncio.Semaphore(store.max_workers)

    async def fetch(file: _File) -> None:
        async with limit:
            if cancel.is_set():
                raise PullCancelled
            sink: Any = functools.partial(_Sink, file, cancel)

            def download() -> None:
                # hf_hub_download calls tqdm_class(**kwargs) for classes that are not its own
                # tqdm, so a factory of _Sink works as the progress hook.
                hf_hub_download(repo, file.path, revision=snap.commit,
                                cache_dir=str(store.cache), token=store.token,
                                endpoint=store.endpoint, tqdm_class=sink,
                                etag_timeout=timeout)

            await store.pulls.pool.run(download)
            file.completed = file.total = max(file.total, (snap.path / file.path).stat().st_size)

    # The index first: it says which shards to fetch.
    index = [f for f in files if f.path == "model.safetensors.index.json"]
    tasks: list[asyncio.Task[None]] = []
    try:
        if index:
            yield index[0].progress()
            try:
                await fetch(index[0])
            except Exception as exc:
                raise _map_error(exc, repo, store.endpoint) from exc
            files[:] = _index_weights(snap.path, files)
            yield index[0].progress()
        rest = [f for f in files if f not in index]
        for file in rest:
            if (snap.path / file.path).exists():
                file.completed = file.total
        tasks = [asyncio.create_task(fetch(f)) for f in rest]
        for file in rest:
            yield file.progress()
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=PROGRESS_INTERVAL,
                                               return_when=asyncio.FIRST_EXCEPTION)
            for file in rest:
                if file.completed != file.reported:
                    yield file.progress()
            for task in done:
                failure = task.exception()
                if failure is not None:
                    raise _map_error(failure, repo, store.endpoint) from failure
    finally:
        cancel.set()
        live = [t for t in tasks if not t.done()]
        if live:
            # The threads stop at their next chunk (PullCancelled); wait for them so their
            # temporary files are gone before the caller looks at the cache.
            _, stuck = await asyncio.wait(live, timeout=30)
            for task in stuck:
                task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a second failure is not logged as unhandled
