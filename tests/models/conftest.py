"""Fixtures for model management tests: a fake Hugging Face hub on loopback serving the tiny
model (single file, sharded, gated) and a big synthetic checkpoint, a ModelStore over a fresh
cache and state dir pointed at it through `endpoint` (never through the environment), and the
real gateway over that store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests import fake_hf_hub as fh
from tests.tinymodel import generate
from vllama.config import Config
from vllama.gateway.app import make_app
from vllama.gateway.keys import Services
from vllama.models.store import ModelStore

BIG_TENSOR_BYTES = 24 * 1024 * 1024  # over huggingface_hub's 10 MiB read chunk


@dataclass
class Hub:
    url: str
    app: web.Application

    @property
    def state(self) -> fh.HubState:
        return self.app[fh.HUB_STATE]

    @property
    def script(self) -> fh.HubScript:
        return self.app[fh.HUB_SCRIPT]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("tiny") / "model")


def big_files(tiny: Path) -> dict[str, bytes]:
    """The tiny model's tokenizer and config with one large safetensors file."""
    files = fh.model_files(tiny)
    raw = bytes(range(256)) * (BIG_TENSOR_BYTES // 256)
    files["model.safetensors"] = fh.write_safetensors(
        {"big.weight": ({"dtype": "F32", "shape": [BIG_TENSOR_BYTES // 4]}, raw)})
    return files


@pytest.fixture
async def hub(tiny_dir: Path) -> AsyncIterator[Hub]:
    repos = [
        fh.HubRepo("tiny/llama", fh.model_files(tiny_dir)),
        fh.HubRepo("tiny/llama-sharded", fh.model_files(tiny_dir, sharded=True)),
        fh.HubRepo("gated/llama", fh.model_files(tiny_dir), gated=True),
        fh.HubRepo("tiny/big", big_files(tiny_dir)),
    ]
    app = fh.make_app(repos)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Hub(str(server.make_url("")).rstrip("/"), app)
    finally:
        app[fh.HUB_SCRIPT].hang = False  # held requests end: the server closes at once
        await server.close()


@pytest.fixture
def store(tmp_path: Path, hub: Hub) -> ModelStore:
    return ModelStore(tmp_path / "hub", tmp_path / "state", endpoint=hub.url,
                      config_aliases={"tiny": "tiny/llama", "house-model:v2": "tiny/llama-sharded"})


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(store: ModelStore) -> AsyncIterator[Client]:
    """The real gateway (no configured models) over the store."""
    app = make_app(Services(config=Config(), store=store))
    test_client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


async def pull_all(store: ModelStore, name: str) -> list[dict[str, object]]:
    return [p async for p in store.pull(name)]
