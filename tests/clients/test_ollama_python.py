"""The official `ollama` Python client (sync and async) against a running vllama."""

from __future__ import annotations

import math
from collections.abc import Iterator

import ollama
import pytest

from .conftest import Daemon


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.url) as c:
        yield c


def test_sync_generate_and_chat(client: ollama.Client) -> None:
    reply = client.generate(model="fake", prompt="why is the sky blue?",
                            options={"num_predict": 5})
    assert reply.done and reply.done_reason == "length"
    assert reply.response and reply.eval_count == 5
    assert isinstance(reply.total_duration, int)
    parts = list(client.generate(model="fake", prompt="hi", stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    chat = client.chat(model="fake", messages=[{"role": "user", "content": "hello"}])
    assert chat.message.role == "assistant" and chat.message.content
    assert chat.prompt_eval_count and chat.eval_count
    streamed = list(client.chat(model="fake:latest",
                                messages=[{"role": "user", "content": "hello"}], stream=True))
    assert "".join(p.message.content or "" for p in streamed) == chat.message.content


def test_sync_tools(client: ollama.Client) -> None:

    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: first
            b: second
        """
        return a + b

    reply = client.chat(model="fake", messages=[{"role": "user", "content": "1+2"}],
                        tools=[add])
    assert reply.message.role == "assistant"


def test_sync_embed_list_show_ps(client: ollama.Client) -> None:
    emb = client.embed(model="fake-embed", input=["a", "b c"])
    assert len(emb.embeddings) == 2
    assert math.isclose(sum(x * x for x in emb.embeddings[0]), 1.0, rel_tol=1e-5)
    legacy = client.embeddings(model="fake-embed", prompt="a")
    assert legacy.embedding
    listed = client.list()
    assert {m.model for m in listed.models} == {"fake:latest", "fake-embed:latest"}
    assert all(m.digest and len(m.digest) == 64 and m.modified_at for m in listed.models)
    shown = client.show("fake")
    assert shown.modelinfo is not None
    assert shown.capabilities == ["completion", "tools"]
    running = client.ps()
    assert {m.model for m in running.models} == {"fake:latest", "fake-embed:latest"}
    assert all(m.expires_at is not None for m in running.models)


def test_sync_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="missing", prompt="x")
    assert info.value.status_code == 404
    assert info.value.error == "model 'missing' not found"
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="fake", messages=[{"role": "user", "content": "x"}], think=True)
    assert info.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model="missing", input="x")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.show("missing")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        list(client.generate(model="missing", prompt="x", stream=True))
    assert info.value.status_code == 404


async def test_async_client(daemon: Daemon) -> None:
    async with ollama.AsyncClient(host=daemon.url) as client:
        await _async_checks(client)


async def _async_checks(client: ollama.AsyncClient) -> None:
    reply = await client.chat(model="fake", messages=[{"role": "user", "content": "hey"}])
    assert reply.message.content
    parts = [p async for p in await client.generate(model="fake", prompt="x", stream=True)]
    assert parts[-1].done
    emb = await client.embed(model="fake-embed", input="x")
    assert len(emb.embeddings) == 1
    assert (await client.list()).models
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
