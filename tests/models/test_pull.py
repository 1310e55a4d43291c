"""Pulling from the fake hub: progress objects, cache contents, resumption, failures that must
never leave a model listed, gated repos and unknown repos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import fake_hf_hub as fh
from tests.conftest import free_port
from tests.models.conftest import Hub, pull_all
from vllama.errors import NotFound, VllamaError
from vllama.models.cache import repo_folder
from vllama.models.names import InvalidName
from vllama.models.store import ModelStore
from vllama.translate.models import PULL_NOT_FOUND as NOT_FOUND

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def snapshot_of(store: ModelStore, repo: str) -> Path:
    repo_dir = store.cache / repo_folder(repo)
    commit = (repo_dir / "refs" / "main").read_text()
    return repo_dir / "snapshots" / commit


async def test_pull_sharded_model(store: ModelStore, hub: Hub) -> None:
    progress = await pull_all(store, "tiny/llama-sharded")

    statuses = [p["status"] for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [p for p in progress if "digest" in p]
    assert layers and all(str(p["status"]).startswith("pulling ") for p in layers)
    by_digest: dict[str, list[dict[str, object]]] = {}
    for p in layers:
        digest = str(p["digest"])
        assert digest.startswith("sha256:") and len(digest) == 71
        assert p["status"] == f"pulling {digest[7:19]}"
        by_digest.setdefault(digest, []).append(p)
    repo = hub.app[fh.HUB_REPOS]["tiny/llama-sharded"]
    for shard in SHARDS:  # the digest of an LFS file is its sha256, as in Ollama
        updates = by_digest["sha256:" + repo.etag(shard)]
        completed = [int(str(u["completed"])) for u in updates]
        assert completed == sorted(completed)
        assert completed[0] == 0 and completed[-1] == len(repo.files[shard])
        assert all(u["total"] == len(repo.files[shard]) for u in updates)

    snap = snapshot_of(store, "tiny/llama-sharded")
    names = {p.name for p in snap.iterdir()}
    assert {*SHARDS, "model.safetensors.index.json", "config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
            "special_tokens_map.json", "LICENSE", "README.md"} <= names
    # duplicates of the weights in other formats are skipped
    assert "pytorch_model.bin" not in names and not (snap / "onnx").exists()
    assert "pytorch_model.bin" not in hub.state.bytes_served
    for shard in SHARDS:
        assert (snap / shard).read_bytes() == repo.files[shard]

    listed = {m.name: m for m in store.list_models()}
    # the repo itself, and the config alias that points at it
    assert set(listed) == {"tiny/llama-sharded:latest", "house-model:v2"}
    entry = store.tag_entry(listed["tiny/llama-sharded:latest"])
    assert listed["house-model:v2"].digest == entry.digest
    # size: the weights' bytes as their safetensors headers state them (issue 13)
    weights = sum(len(data) - 8 - int.from_bytes(data[:8], "little")
                  for data in (repo.files[shard] for shard in SHARDS))
    assert len(entry.digest) == 64 and entry.size == weights
    assert entry.details.family == "llama" and entry.details.quantization_level == "F32"
    assert entry.details.parameter_size.endswith("K")


async def test_large_file_progress_updates_during_download(store: ModelStore,
                                                            hub: Hub) -> None:
    hub.script.chunk_size = 1024 * 1024
    hub.script.chunk_delay = 0.05
    progress = await pull_all(store, "tiny/big")
    big = hub.app[fh.HUB_REPOS]["tiny/big"]
    digest = "sha256:" + big.etag("model.safetensors")
    total = len(big.files["model.safetensors"])
    completed = [p["completed"] for p in progress if p.get("digest") == digest]
    assert any(0 < int(str(c)) < total for c in completed), completed
    assert completed[-1] == total
    assert progress[-1] == {"status": "success"}


async def test_dropped_connection_resumes_with_a_range_request(store: ModelStore,
                                                                hub: Hub) -> None:
    big = hub.app[fh.HUB_REPOS]["tiny/big"]
    size = len(big.files["model.safetensors"])
    hub.script.drop_after["model.safetensors"] = size * 2 // 3
    progress = await pull_all(store, "tiny/big")
    assert progress[-1] == {"status": "success"}
    ranges = [r for p, r in hub.state.range_requests if p == "model.safetensors"]
    assert ranges and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"
    # resumed, not restarted: well under twice the file went over the wire
    assert size < hub.state.bytes_served["model.safetensors"] < 2 * size
    snap = snapshot_of(store, "tiny/big")
    assert (snap / "model.safetensors").read_bytes() == big.files["model.safetensors"]
    assert [m.name for m in store.list_models()] == ["tiny/big:latest"]


async def test_failed_pull_never_lists_and_the_next_pull_resumes(store: ModelStore,
                                                                  hub: Hub) -> None:
    hub.script.fail_get[SHARDS[1]] = [500]
    store.max_workers = 1  # deterministic order: the first shard lands before the failure
    with pytest.raises(VllamaError) as info:
        await pull_all(store, "tiny/llama-sharded")
    assert "tiny/llama-sharded" in info.value.message
    assert store.list_models() == []
    assert store.find("tiny/llama-sharded") is None
    with pytest.raises(NotFound):
        store.show("tiny/llama-sharded")
    first_bytes = hub.state.total_bytes()

    hub.state.bytes_served.clear()
    progress = await pull_all(store, "tiny/llama-sharded")
    assert progress[-1] == {"status": "success"}
    # only what was missing travelled again
    assert SHARDS[0] not in hub.state.bytes_served
    assert hub.state.bytes_served[SHARDS[1]] == len(
        hub.app[fh.HUB_REPOS]["tiny/llama-sharded"].files[SHARDS[1]])
    assert hub.state.total_bytes() < first_bytes
    assert "tiny/llama-sharded:latest" in {m.name for m in store.list_models()}


async def test_abandoned_pull_is_not_listed(store: ModelStore, hub: Hub) -> None:
    hub.script.chunk_size = 256 * 1024
    hub.script.chunk_delay = 0.02
    pull = store.pull("tiny/big")
    async for progress in pull:
        if progress.get("digest") and progress.get("completed") == 0:
            break  # the client went away mid-pull
    await pull.aclose()
    assert store.list_models() == []
    repo_dir = store.cache / repo_folder("tiny/big")
    assert list((repo_dir / ".vllama").glob("*.pulling"))
    assert not list((repo_dir / "blobs").glob("*.incomplete"))


async def test_gated_repo_needs_a_token(store: ModelStore, hub: Hub) -> None:
    with pytest.raises(VllamaError) as info:
        await pull_all(store, "gated/llama")
    assert "HF_TOKEN" in info.value.message and "gated" in info.value.message
    assert f"{hub.url}/gated/llama" in info.value.message
    assert store.list_models() == []

    wrong = ModelStore(store.cache, store.state_dir, endpoint=hub.url, token="hf_wrong")
    with pytest.raises(VllamaError) as info:
        await pull_all(wrong, "gated/llama")
    assert "HF_TOKEN" in info.value.message and info.value.status == 403

    good = ModelStore(store.cache, store.state_dir, endpoint=hub.url, token=fh.GOOD_TOKEN)
    progress = await pull_all(good, "gated/llama")
    assert progress[-1] == {"status": "success"}
    assert [m.name for m in good.list_models()] == ["gated/llama:latest"]


@pytest.mark.parametrize("name", ["nobody/nothing", "not-a-known-alias", "qwen2.5:999b"])
async def test_unknown_model_gives_ollamas_not_found_text(store: ModelStore, name: str) -> None:
    progress: list[dict[str, object]] = []
    with pytest.raises(NotFound) as info:
        async for p in store.pull(name):
            progress.append(p)
    assert progress == [{"status": "pulling manifest"}]
    assert info.value.message == NOT_FOUND == "pull model manifest: file does not exist"


async def test_invalid_name_fails_before_any_progress(store: ModelStore) -> None:
    with pytest.raises(InvalidName):
        await pull_all(store, "../../etc")


async def test_pull_through_an_alias_lists_the_alias(store: ModelStore, hub: Hub) -> None:
    progress = await pull_all(store, "tiny")  # config alias -> tiny/llama
    assert progress[-1] == {"status": "success"}
    names = [m.name for m in store.list_models()]
    assert "tiny:latest" in names
    marker = json.loads(next((store.cache / repo_folder("tiny/llama") / ".vllama")
                             .glob("*.complete")).read_text())
    assert marker["names"] == ["tiny:latest"]
    # pulling again is cheap: everything is cached
    hub.state.bytes_served.clear()
    again = await pull_all(store, "tiny/llama")
    assert again[-1] == {"status": "success"}
    assert hub.state.total_bytes() == 0


async def test_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = ModelStore(tmp_path / "hub", tmp_path / "state", endpoint=url)
    with pytest.raises(VllamaError) as info:
        await pull_all(store, "tiny/llama")
    assert info.value.status == 502
    assert info.value.message.startswith(f"pulling tiny/llama from {url} failed: ")
    assert store.list_models() == []
