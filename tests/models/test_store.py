"""ModelStore over hand-built caches: snapshots other tools downloaded, broken snapshots,
local directories, configured models, aliases and overrides."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from vllama.errors import BadRequest, NotFound, VllamaError
from vllama.models.names import InvalidName
from vllama.models.store import ModelStore, hub_cache_dir

COMMIT = "a" * 40


def fake_snapshot(cache: Path, repo: str, files: dict[str, bytes], *,
                  ref: bool = True) -> Path:
    """A snapshot laid out the way huggingface_hub writes one (blobs + relative symlinks)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / f"etag-{abs(hash((name, data)))}"
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(COMMIT)
    return snap


def model_files(tiny_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tiny_dir.iterdir() if p.is_file()}


@pytest.fixture
def empty_store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "hub", tmp_path / "state",
                      config_aliases={"lib": "/nonexistent/dir"})


def test_snapshots_from_other_tools_list_when_complete(empty_store: ModelStore,
                                                       tiny_dir: Path) -> None:
    fake_snapshot(empty_store.cache, "Other/Tool", model_files(tiny_dir))
    files = model_files(tiny_dir)
    del files["model.safetensors"]
    fake_snapshot(empty_store.cache, "No/Weights", files)
    broken = fake_snapshot(empty_store.cache, "Broken/Blob", model_files(tiny_dir))
    (broken / "model.safetensors").resolve().unlink()  # dangling link: blob missing
    assert [m.name for m in empty_store.list_models()] == ["Other/Tool:latest"]
    # a name match is case-insensitive and keeps the cache's spelling
    found = empty_store.find("other/tool:latest")
    assert found is not None and found.source == "Other/Tool"


def test_a_pulling_marker_hides_a_snapshot(empty_store: ModelStore, tiny_dir: Path) -> None:
    snap = fake_snapshot(empty_store.cache, "Half/Pulled", model_files(tiny_dir))
    marker = snap.parent.parent / ".vllama" / f"{COMMIT}.pulling"
    marker.parent.mkdir()
    marker.write_text("{}")
    assert empty_store.list_models() == []
    marker.rename(marker.with_suffix(".complete"))
    assert [m.name for m in empty_store.list_models()] == ["Half/Pulled:latest"]


def test_digest_is_stable_and_follows_content(empty_store: ModelStore, tiny_dir: Path) -> None:
    fake_snapshot(empty_store.cache, "A/Model", model_files(tiny_dir))
    first = empty_store.list_models()[0].digest
    assert empty_store.list_models()[0].digest == first and len(first) == 64
    shutil.rmtree(empty_store.cache)
    files = model_files(tiny_dir)
    files["config.json"] = files["config.json"].replace(b"2048", b"4096")
    fake_snapshot(empty_store.cache, "A/Model", files)
    assert empty_store.list_models()[0].digest != first


def test_local_directory_aliases(tmp_path: Path, tiny_dir: Path) -> None:
    store = ModelStore(tmp_path / "hub", tmp_path / "state",
                       config_aliases={"house": str(tiny_dir), "gone": "/nonexistent/x"})
    assert [(m.name, m.kind) for m in store.list_models()] == [("house:latest", "config")]
    body = store.show("house")
    assert body.model_info["general.architecture"] == "llama"
    found = store.find("house")
    assert found is not None and found.path == tiny_dir
    assert store.find(str(tiny_dir), allow_paths=True) is not None
    with pytest.raises(InvalidName):
        store.find(str(tiny_dir))  # paths only where the caller allows them (not the API)
    with pytest.raises(BadRequest):
        store.rm("house")  # a config alias is edited in the config file
    assert tiny_dir.is_dir()


def test_copy_and_create_persist_with_overrides(tmp_path: Path, tiny_dir: Path) -> None:
    store = ModelStore(tmp_path / "hub", tmp_path / "state")
    fake_snapshot(store.cache, "Org/Chat", model_files(tiny_dir))
    store.create("helper", "Org/Chat", system="Be brief.", parameters={"temperature": 0.1})
    store.cp("helper", "helper2:v1")
    again = ModelStore(tmp_path / "hub", tmp_path / "state")  # a new process reads the file
    overrides = again.overrides_for("HELPER2:v1")
    assert overrides is not None and overrides.system == "Be brief."
    assert overrides.parameters == {"temperature": 0.1}
    assert again.overrides_for("Org/Chat") is None
    assert {m.name for m in again.list_models()} == {"Org/Chat:latest", "helper:latest",
                                                     "helper2:v1"}
    saved = json.loads((tmp_path / "state" / "aliases.json").read_text())
    assert {a["name"] for a in saved["aliases"]} == {"helper:latest", "helper2:v1"}
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.endswith(".tmp")]
    assert again.rm("helper") == 0
    assert again.find("helper") is None and again.find("Org/Chat") is not None
    with pytest.raises(NotFound):
        again.cp("nothing/here", "x")
    with pytest.raises(InvalidName):
        again.cp("Org/Chat", "bad name")


def test_rm_frees_the_repo(empty_store: ModelStore, tiny_dir: Path) -> None:
    fake_snapshot(empty_store.cache, "Org/Gone", model_files(tiny_dir))
    expected = sum(p.stat().st_size for p in tiny_dir.iterdir())
    assert empty_store.rm("org/gone") == expected + len(COMMIT)  # blobs and refs/main
    assert not (empty_store.cache / "models--Org--Gone").exists()
    with pytest.raises(NotFound):
        empty_store.rm("Org/Gone")


def test_hub_cache_dir() -> None:
    assert hub_cache_dir("/var/lib/hf") == Path("/var/lib/hf/hub")


def test_a_corrupt_aliases_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "aliases.json").write_text("{not json")
    store = ModelStore(tmp_path / "hub", tmp_path / "state")
    with pytest.raises(VllamaError) as info_:
        store.list_models()
    assert str(tmp_path / "state" / "aliases.json") in info_.value.message
