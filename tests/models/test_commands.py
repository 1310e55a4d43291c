"""The CLI command functions (text, JSON, quiet, exit codes), against the fake hub and, for
`ps`, a loopback server standing in for the daemon."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import free_port
from tests.models.conftest import Hub, pull_all
from vllama.config import load
from vllama.errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from vllama.models import commands
from vllama.models.commands import CliContext
from vllama.models.store import ModelStore


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def ctx_for(store: ModelStore, base_url: str = "http://127.0.0.1:1",
            out: io.StringIO | None = None) -> CliContext:
    return CliContext(store_factory=lambda: store, base_url=base_url, out=out or io.StringIO(),
                      err=io.StringIO())


def out_of(ctx: CliContext) -> str:
    assert isinstance(ctx.out, io.StringIO)
    return ctx.out.getvalue()


def err_of(ctx: CliContext) -> str:
    assert isinstance(ctx.err, io.StringIO)
    return ctx.err.getvalue()


async def test_pull_plain_lines(store: ModelStore, hub: Hub) -> None:
    ctx = ctx_for(store)
    code = await asyncio.to_thread(commands.cmd_pull, ctx, "tiny/llama-sharded")
    assert code == EXIT_OK
    text = out_of(ctx).splitlines()
    assert text[0] == "pulling manifest"
    assert text[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    pulling = [line for line in text if re.fullmatch(r"pulling [0-9a-f]{12} \S+ \w?B", line)]
    assert len(pulling) == len(set(pulling)) >= 3  # one line per file, no flood
    assert "\r" not in out_of(ctx)


async def test_pull_progress_bar_on_a_terminal(store: ModelStore, hub: Hub) -> None:
    hub.script.chunk_size = 1024 * 1024
    hub.script.chunk_delay = 0.05
    ctx = ctx_for(store, out=Tty())
    code = await asyncio.to_thread(commands.cmd_pull, ctx, "tiny/big")
    assert code == EXIT_OK
    text = out_of(ctx)
    frames = [f.removesuffix("\x1b[K") for f in text.split("\r")
              if f.startswith("pulling tiny/big:")]
    assert frames, text
    # size done/total, speed and ETA while it runs; 100% and the sizes at the end
    assert any(re.fullmatch(r"pulling tiny/big: +\d+% ▕[█ ]+▏ \S+ \w?B/25 MB  \S+ \w?B/s  \S+",
                            f) for f in frames), frames
    assert re.fullmatch(r"pulling tiny/big: 100% ▕█+▏ 25 MB/25 MB\n?", frames[-1].split("\x1b")[0])
    assert text.rstrip().endswith("success")


async def test_pull_json_lines_and_errors(store: ModelStore, hub: Hub) -> None:
    ctx = ctx_for(store)
    code = await asyncio.to_thread(commands.cmd_pull, ctx, "tiny/llama", json_mode=True)
    assert code == EXIT_OK
    objects = [json.loads(line) for line in out_of(ctx).splitlines()]
    assert objects[0] == {"status": "pulling manifest"} and objects[-1] == {"status": "success"}

    ctx = ctx_for(store)
    code = await asyncio.to_thread(commands.cmd_pull, ctx, "nobody/nothing", json_mode=True)
    assert code == EXIT_NOT_FOUND
    assert json.loads(out_of(ctx).splitlines()[-1]) == {
        "error": "pull model manifest: file does not exist"}
    assert err_of(ctx) == "Error: pull model manifest: file does not exist\n"

    ctx = ctx_for(store)
    code = await asyncio.to_thread(commands.cmd_pull, ctx, "gated/llama", quiet=True)
    assert code != EXIT_OK and out_of(ctx) == ""
    assert "HF_TOKEN" in err_of(ctx)

    ctx = ctx_for(store)
    assert await asyncio.to_thread(commands.cmd_pull, ctx, "a/../b") == EXIT_USAGE
    assert err_of(ctx) == "Error: invalid model name\n"


async def test_list_show_cp_rm(store: ModelStore, hub: Hub) -> None:
    ctx = ctx_for(store)
    assert commands.cmd_list(ctx) == EXIT_OK
    assert out_of(ctx) == "NAME   ID   SIZE   MODIFIED\n"

    await pull_all(store, "tiny/llama-sharded")
    ctx = ctx_for(store)
    assert commands.cmd_list(ctx) == EXIT_OK
    rows = out_of(ctx).splitlines()
    assert re.fullmatch(r"NAME\s+ID\s+SIZE\s+MODIFIED", rows[0])
    by_name = {row.split()[0]: row for row in rows[1:]}
    assert set(by_name) == {"tiny/llama-sharded:latest", "house-model:v2"}
    digest = store.find("tiny/llama-sharded")
    assert digest is not None
    assert re.search(rf"{digest.digest[:12]}\s+2\.\d MB\s+(Less than a second|\d+ seconds) ago",
                     by_name["tiny/llama-sharded:latest"])

    ctx = ctx_for(store)
    assert commands.cmd_list(ctx, "house", json_mode=True) == EXIT_OK
    listed = json.loads(out_of(ctx))["models"]
    assert [m["name"] for m in listed] == ["house-model:v2"]
    assert listed[0]["details"]["family"] == "llama"

    ctx = ctx_for(store)
    assert commands.cmd_show(ctx, "tiny/llama-sharded") == EXIT_OK
    text = out_of(ctx)
    assert re.search(r"^  Model\n    architecture\s+llama$", text, re.M)
    assert re.search(r"^    context length\s+2048$", text, re.M)
    assert re.search(r"^    embedding length\s+128$", text, re.M)
    assert re.search(r"^    quantization\s+F32$", text, re.M)
    assert re.search(r"^  Capabilities\n    completion", text, re.M)
    assert re.search(r"^  License\n    Apache License", text, re.M)

    ctx = ctx_for(store)
    assert commands.cmd_show(ctx, "tiny/llama-sharded", json_mode=True) == EXIT_OK
    assert json.loads(out_of(ctx))["model_info"]["llama.block_count"] == 2
    ctx = ctx_for(store)
    assert commands.cmd_show(ctx, "tiny/llama-sharded", field_name="template") == EXIT_OK
    assert "<|im_start|>" in out_of(ctx)
    ctx = ctx_for(store)
    assert commands.cmd_show(ctx, "nothing") == EXIT_NOT_FOUND
    assert err_of(ctx) == "Error: model 'nothing:latest' not found\n"

    ctx = ctx_for(store)
    assert commands.cmd_cp(ctx, "tiny/llama-sharded", "mine") == EXIT_OK
    assert out_of(ctx) == "copied 'tiny/llama-sharded' to 'mine'\n"
    assert store.find("mine") is not None

    ctx = ctx_for(store)
    assert commands.cmd_rm(ctx, ["mine"], json_mode=True) == EXIT_OK
    assert json.loads(out_of(ctx)) == {"deleted": "mine", "freed": 0}
    ctx = ctx_for(store)
    assert commands.cmd_rm(ctx, ["tiny/llama-sharded"]) == EXIT_OK
    assert re.fullmatch(r"deleted 'tiny/llama-sharded' \(freed 2\.\d MB\)\n", out_of(ctx))
    ctx = ctx_for(store)
    assert commands.cmd_rm(ctx, ["tiny/llama-sharded"], quiet=True) == EXIT_NOT_FOUND
    assert out_of(ctx) == "" and "not found" in err_of(ctx)
    ctx = ctx_for(store)
    assert commands.cmd_list(ctx, quiet=True) == EXIT_OK and out_of(ctx) == ""


def test_aliases_table(store: ModelStore) -> None:
    ctx = ctx_for(store)
    assert commands.cmd_aliases(ctx) == EXIT_OK
    rows = out_of(ctx).splitlines()
    assert re.fullmatch(r"NAME\s+SOURCE\s+ORIGIN", rows[0])
    assert re.fullmatch(r"tiny:latest\s+tiny/llama\s+config", rows[1])
    assert any(re.fullmatch(r"qwen2\.5:7b\s+Qwen/Qwen2\.5-7B-Instruct\s+builtin", r)
               for r in rows)
    ctx = ctx_for(store)
    assert commands.cmd_aliases(ctx, json_mode=True) == EXIT_OK
    table = json.loads(out_of(ctx))["aliases"]
    assert {"name": "llama3.2:latest", "source": "meta-llama/Llama-3.2-3B-Instruct",
            "origin": "builtin"} in table


STOPPED: list[dict[str, object]] = []


@pytest.fixture
async def daemon() -> AsyncIterator[str]:
    async def ps(request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == "Bearer sekrit"
        return web.json_response({"models": [{
            "name": "qwen2.5:7b", "model": "qwen2.5:7b", "digest": "ab" * 32,
            "size": 16_000_000_000, "size_vram": 16_000_000_000, "context_length": 32768,
            "expires_at": "2318-01-01T00:00:00Z", "details": {}, "state": "loaded"}, {
            "name": "llama3.2:1b", "model": "llama3.2:1b", "digest": "cd" * 32,
            "size": 3_000_000_000, "size_vram": 0, "context_length": 8192,
            "expires_at": "2318-01-01T00:00:00Z", "details": {}, "state": "sleeping"}]})

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        if body["model"] == "nothing":
            return web.json_response({"error": "model 'nothing' not found"}, status=404)
        STOPPED.append(body)
        return web.json_response({"model": body["model"], "done": True,
                                  "done_reason": "unload"})

    app = web.Application()
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/generate", generate)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_ps_asks_the_daemon(store: ModelStore, daemon: str) -> None:
    ctx = ctx_for(store, base_url=daemon)
    ctx.api_key = "sekrit"
    assert await asyncio.to_thread(commands.cmd_ps, ctx) == EXIT_OK
    rows = out_of(ctx).splitlines()
    assert re.fullmatch(r"NAME\s+ID\s+SIZE\s+PROCESSOR\s+CONTEXT\s+STATE\s+UNTIL", rows[0])
    assert re.fullmatch(r"qwen2\.5:7b\s+abababababab\s+16 GB\s+100% GPU\s+32768\s+loaded"
                        r"\s+Forever", rows[1])
    # a sleeping model holds no GPU memory and has no deadline
    assert re.fullmatch(r"llama3\.2:1b\s+cdcdcdcdcdcd\s+3 GB\s+100% CPU\s+8192\s+sleeping",
                        rows[2])
    ctx = ctx_for(store, base_url=daemon)
    ctx.api_key = "sekrit"
    assert await asyncio.to_thread(commands.cmd_ps, ctx, json_mode=True) == EXIT_OK
    assert json.loads(out_of(ctx))["models"][0]["context_length"] == 32768


async def test_stop_unloads_through_the_daemon(store: ModelStore, daemon: str) -> None:
    ctx = ctx_for(store, base_url=daemon)
    assert await asyncio.to_thread(commands.cmd_stop, ctx, "qwen2.5:7b") == EXIT_OK
    assert STOPPED[-1] == {"model": "qwen2.5:7b", "keep_alive": 0}  # as `ollama stop` asks
    assert "stopped 'qwen2.5:7b'" in out_of(ctx)
    ctx = ctx_for(store, base_url=daemon)
    assert await asyncio.to_thread(commands.cmd_stop, ctx, "nothing") == EXIT_NOT_FOUND
    assert 'couldn\'t find model "nothing" to stop' in err_of(ctx)


async def test_ps_without_a_daemon(store: ModelStore) -> None:
    ctx = ctx_for(store, base_url=f"http://127.0.0.1:{free_port()}")
    assert await asyncio.to_thread(commands.cmd_ps, ctx) == EXIT_UNAVAILABLE
    assert "is the daemon running" in err_of(ctx)


def test_add_subparsers(store: ModelStore) -> None:
    parser = argparse.ArgumentParser(prog="vllama")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.add_subparsers(sub)
    for argv in (["pull", "qwen2.5:7b", "--json"], ["list", "--quiet"], ["ls"],
                 ["show", "x", "--modelfile"], ["rm", "a", "b"], ["cp", "a", "b"], ["ps"],
                 ["aliases", "--json"]):
        args = parser.parse_args(argv)
        assert callable(args.func)
    args = parser.parse_args(["aliases", "--quiet"])
    ctx = ctx_for(store)
    assert args.func(args, ctx) == EXIT_OK
    assert "qwen2.5:latest\n" in out_of(ctx)
    args = parser.parse_args(["show", "nothing", "--json"])
    assert args.func(args, ctx_for(store)) == EXIT_NOT_FOUND


def test_context_from_config(tmp_path: Path) -> None:
    loaded = load(environ={"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_x",
                           "HF_ENDPOINT": "http://hub.local:9", "STATE_DIRECTORY":
                           str(tmp_path / "state"), "OLLAMA_HOST": "0.0.0.0:11500"},
                  use_files=False)
    ctx = commands.context_from_config(loaded, out=io.StringIO(), err=io.StringIO())
    assert ctx.base_url == "http://127.0.0.1:11500"
    store = ctx.store
    assert store.cache == tmp_path / "hf" / "hub"
    assert store.state_dir == tmp_path / "state"
    assert (store.token, store.endpoint) == ("hf_x", "http://hub.local:9")


async def test_cp_names_a_model_directory_from_the_cli_only(store: ModelStore, tiny_dir: Path,
                                                            client: Any) -> None:
    ctx = ctx_for(store)
    assert commands.cmd_cp(ctx, str(tiny_dir), "mydir") == EXIT_OK
    found = store.find("mydir")
    assert found is not None and found.path == tiny_dir
    assert "mydir:latest" in {m.name for m in store.list_models()}
    # an API client must not name directories on the server
    resp = await client.post("/api/copy", json={"source": str(tiny_dir), "destination": "x"})
    assert resp.status == 400
