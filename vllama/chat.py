"""`vllama run MODEL [PROMPT]`: a streaming chat in the terminal, as a client of the gateway
(like `ollama run`). With a prompt (or piped stdin) it answers once through /api/generate;
otherwise it keeps a conversation through /api/chat until /bye or Ctrl-D."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import aiohttp
import msgspec

from vllama import config
from vllama.errors import EXIT_OK, EXIT_UNAVAILABLE, UpstreamError, VllamaError

HELP = """Available commands:
  /clear      forget the conversation so far
  /bye        exit (also Ctrl-D)
  /?          this help
Ctrl-C stops the current answer."""


def base_url(host_arg: str | None, loaded: config.Loaded) -> str:
    host, port = loaded.config.host, loaded.config.port
    if host_arg:
        host, parsed_port = config.parse_host(host_arg)
        port = parsed_port or port
    return config.client_url(host, port)


async def _stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                  out: TextIO, field: str) -> tuple[str, dict[str, Any]]:
    """POST and print each NDJSON chunk's text as it arrives; return the text and the final
    chunk."""
    text: list[str] = []
    final: dict[str, Any] = {}
    try:
        async with session.post(url, data=msgspec.json.encode(body),
                                headers={"Content-Type": "application/json"}) as resp:
            if resp.status >= 400:
                data = await resp.read()
                try:
                    message = msgspec.json.decode(data)["error"]
                except (msgspec.DecodeError, KeyError, TypeError):
                    message = data.decode("utf-8", "replace")
                raise VllamaError(str(message), status=resp.status)
            async for line in resp.content:
                if not line.strip():
                    continue
                chunk = msgspec.json.decode(line)
                if "error" in chunk:
                    raise VllamaError(str(chunk["error"]))
                piece = chunk["message"].get("content", "") if field == "message" else \
                    chunk.get("response", "")
                if piece:
                    out.write(piece)
                    out.flush()
                    text.append(piece)
                if chunk.get("done"):
                    final = chunk
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(
            f"cannot reach vllama at {url.rsplit('/api', 1)[0]} ({exc.os_error}); is "
            "`vllama serve` running? (systemctl status vllama)") from None
    return "".join(text), final


SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


async def load_with_progress(session: aiohttp.ClientSession, url: str, model: str,
                             err: TextIO) -> None:
    """Load the model (an empty chat), showing how long it takes on a terminal: a model that
    is not loaded yet can take minutes (the daemon starts its engine)."""
    load = asyncio.ensure_future(_stream(session, f"{url}/api/chat",
                                         {"model": model, "messages": []}, err, "message"))
    tty = err.isatty()
    started = asyncio.get_running_loop().time()
    shown = False
    try:
        for tick in itertools.count():
            done, _ = await asyncio.wait({load}, timeout=0.25)
            if done:
                break
            elapsed = asyncio.get_running_loop().time() - started
            if tty:
                err.write(f"\r{SPINNER[tick % len(SPINNER)]} loading {model} ({elapsed:.0f} s)")
                err.flush()
                shown = True
            elif not shown and elapsed >= 1.0:
                err.write(f"loading {model}...\n")
                err.flush()
                shown = True
        await load
    finally:
        load.cancel()
        if tty and shown:
            err.write("\r\033[K")
            err.flush()


async def one_shot(url: str, model: str, prompt: str, out: TextIO, err: TextIO) -> int:
    async with aiohttp.ClientSession() as session:
        await load_with_progress(session, url, model, err)
        await _stream(session, f"{url}/api/generate",
                      {"model": model, "prompt": prompt, "stream": True}, out, "response")
    out.write("\n")
    return EXIT_OK


async def interactive(url: str, model: str, out: TextIO, inp: TextIO, err: TextIO) -> int:
    history: list[dict[str, str]] = []
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        # Load (and check) the model first, so a wrong name fails before the first prompt.
        await load_with_progress(session, url, model, err)
        while True:
            out.write(">>> ")
            out.flush()
            line = await loop.run_in_executor(None, inp.readline)
            if not line:  # Ctrl-D
                out.write("\n")
                return EXIT_OK
            text = line.strip()
            if not text:
                continue
            if text in ("/bye", "/exit"):
                return EXIT_OK
            if text in ("/?", "/help"):
                out.write(HELP + "\n")
                continue
            if text == "/clear":
                history.clear()
                out.write("Cleared session context\n")
                continue
            history.append({"role": "user", "content": text})
            task = asyncio.ensure_future(_stream(
                session, f"{url}/api/chat",
                {"model": model, "messages": history, "stream": True}, out, "message"))
            loop.add_signal_handler(signal.SIGINT, task.cancel)  # Ctrl-C stops this answer
            try:
                answer, _ = await task
            except asyncio.CancelledError:
                history.pop()
                out.write("\n")
                continue
            finally:
                loop.remove_signal_handler(signal.SIGINT)
            history.append({"role": "assistant", "content": answer})
            out.write("\n\n")


def cmd_run(args: argparse.Namespace, extra: Sequence[str], out: TextIO) -> int:
    loaded = config.load(config.CliOverrides(config=args.config))
    url = base_url(args.host, loaded)
    prompt = " ".join(args.prompt)
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    try:
        if prompt:
            return asyncio.run(one_shot(url, args.model, prompt, out, sys.stderr))
        return asyncio.run(interactive(url, args.model, out, sys.stdin, sys.stderr))
    except KeyboardInterrupt:
        out.write("\n")
        return EXIT_OK
    except UpstreamError as exc:
        print(f"vllama: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def add_subparsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="chat with a model in the terminal (like `ollama run`)")
    p.add_argument("model", help="model name, e.g. qwen2.5:7b")
    p.add_argument("prompt", nargs="*", help="answer this once and exit (stdin works too)")
    p.add_argument("--host", help="the daemon (default: the configured host and port)")
    p.add_argument("--config", help="config file to read the daemon's address from")
    p.set_defaults(func=cmd_run)
