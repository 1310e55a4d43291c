"""Ollama's generate, chat, embed and embeddings, translated onto the upstream's OpenAI API.

Every request streams from the upstream (with usage), so timings can be measured and
``stream:false`` is an aggregate of the same events. Response headers are held until the
first line is ready, so an early failure still carries its real status; after that a failure
becomes a final ``{"error": ...}`` line. A client that goes away cancels the handler (the
runner is started with handler cancellation), which closes the upstream connection, so vLLM
aborts the sequence and frees its KV cache at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from aiohttp import web

from vllama.errors import EngineDied, VllamaError
from vllama.gateway.keys import METRICS, MODEL, SERVICES, TOKENS
from vllama.gateway.targets import Target, leased, route, upstream_call
from vllama.models.store import Overrides
from vllama.translate import replies
from vllama.translate import request as to_openai
from vllama.translate.decode import decode_chat, decode_embed, decode_embeddings, decode_generate
from vllama.translate.models import RUNNER_STOPPED, Endpoint, map_upstream_error
from vllama.translate.stream import SSEDecoder, StreamAccumulator, error_line, special_reply
from vllama.translate.values import rfc3339_utc
from vllama.wire.ollama import Message

logger = logging.getLogger("vllama.gateway")

_encode = msgspec.json.Encoder().encode
NDJSON = "application/x-ndjson"


def _defaults(target: Target, overrides: Overrides | None) -> tuple[str, dict[str, Any]]:
    """System prompt and parameters: an alias's overrides on top of the configured ones."""
    system = target.model.system
    params = dict(target.model.parameters)
    if overrides is not None:
        system = overrides.system or system
        params.update(overrides.parameters)
    return system, params


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json",
                        charset="utf-8")


def _apply_defaults_options(options: dict[str, Any] | None,
                            defaults: dict[str, Any]) -> dict[str, Any] | None:
    """Configured parameters (Modelfile-style) apply unless the request set them."""
    if not defaults:
        return options
    merged = dict(defaults)
    merged.update(options or {})
    return merged


async def generate(request: web.Request) -> web.StreamResponse:
    t0 = time.time_ns()
    req = decode_generate(await request.read())
    target, overrides = await route(request, "generate", req.model or "")
    system, params = _defaults(target, overrides)
    if system and not req.system and not req.raw:
        req.system = system
    req.options = _apply_defaults_options(req.options, params)
    action = to_openai.generate_action(req)
    if action == "unload":  # Ollama answers an unload before any other check
        return await _unload(request, target, req.model or "", chat=False)
    think = to_openai.check_generate(req, target.caps)
    if action == "load":
        return await _load(request, target, req.model or "", req.keep_alive, chat=False)
    path, body = to_openai.generate_to_openai(req, target.upstream_model, target.caps)
    acc = StreamAccumulator(model=req.model or "", chat=False, t0_ns=t0, now_ns=time.time_ns,
                            created_at=target.created_at,
                            think=think, stream=req.stream is not False,
                            logprobs=bool(req.logprobs))
    return await _run_stream(request, target, path, body, acc, keep_alive=req.keep_alive)


async def chat(request: web.Request) -> web.StreamResponse:
    t0 = time.time_ns()
    req = decode_chat(await request.read())
    target, overrides = await route(request, "chat", req.model or "")
    system, params = _defaults(target, overrides)
    if system and req.messages and req.messages[0].role != "system":
        req.messages.insert(0, Message(role="system", content=system))
    req.options = _apply_defaults_options(req.options, params)
    action = to_openai.chat_action(req)
    if action == "unload":
        return await _unload(request, target, req.model or "", chat=True)
    think = to_openai.check_chat(req, target.caps)
    if action == "load":
        return await _load(request, target, req.model or "", req.keep_alive, chat=True)
    body = to_openai.chat_to_openai(req, target.upstream_model, target.caps)
    acc = StreamAccumulator(model=req.model or "", chat=True, t0_ns=t0, now_ns=time.time_ns,
                            created_at=target.created_at,
                            think=think, stream=req.stream is not False,
                            has_tools=bool(req.tools), logprobs=bool(req.logprobs))
    return await _run_stream(request, target, to_openai.CHAT_PATH, body, acc,
                             keep_alive=req.keep_alive)


async def _load(request: web.Request, target: Target, model: str, keep_alive: float | None,
                *, chat: bool) -> web.Response:
    """An empty prompt loads the model (and answers once it serves)."""
    async with leased(request, target, keep_alive):
        pass
    return _json(special_reply(model, rfc3339_utc(time.time_ns()), "load", chat=chat))


async def _unload(request: web.Request, target: Target, model: str, *, chat: bool
                  ) -> web.Response:
    """keep_alive 0 with an empty prompt unloads the model (after its in-flight requests)."""
    scheduler = request.app[SERVICES].scheduler
    if scheduler is not None and target.model.is_local:
        await scheduler.unload(target.name)
    return _json(special_reply(model, rfc3339_utc(time.time_ns()), "unload", chat=chat))


class _NdjsonResponse(web.StreamResponse):
    """A stream whose headers leave with its first line: one send() instead of two. The
    relay prepares only once a line is ready, so holding the headers delays nothing.
    (aiohttp's own ``Response`` buffers its headers through the same class attribute.)"""

    _send_headers_immediately = False


def _ndjson() -> web.StreamResponse:
    return _NdjsonResponse(headers={"Content-Type": NDJSON})


async def _run_stream(request: web.Request, target: Target, path: str, body: dict[str, Any],
                      acc: StreamAccumulator, *, keep_alive: float | None
                      ) -> web.StreamResponse:
    endpoint: Endpoint = "chat" if acc.chat else "generate"
    out: web.StreamResponse | None = None
    pending: list[bytes] = []
    try:
        async with upstream_call(request, target, path, body, keep_alive) as upstream:
            acc.upstream_sent()
            decoder = SSEDecoder()
            # One read may carry several SSE events: translate them all, then write the lines
            # with one write (a send() per line was the relay's largest cost). The read that
            # ends the stream is written together with the final line and the end of the body.
            while data := await upstream.chunk():
                for event in decoder.feed(data):
                    line = acc.feed(event)
                    if line is not None:
                        pending.append(line)
                if decoder.done:
                    break
                if pending:
                    if out is None:
                        out = await _start(request, target, acc)
                    await out.write(pending[0] if len(pending) == 1 else b"".join(pending))
                    pending.clear()
            else:  # the body ended without [DONE]: the engine went away
                raise EngineDied(RUNNER_STOPPED)
            upstream.finished = True  # [DONE] is the end of a vLLM stream
        final = acc.finish()
    except VllamaError as exc:
        if out is None and not pending:  # nothing sent yet: the real status, Ollama's words
            raise map_upstream_error(exc, request.get(MODEL, ""), endpoint) from None
        if out is None:  # lines translated before an error event still go out
            out = _ndjson()
            await out.prepare(request)
        if pending:
            await out.write(b"".join(pending))
        await _write_error(out, exc.message)
        return out
    finally:
        request[TOKENS] = (acc.prompt_tokens or 0, acc.completion_tokens or 0)
    if not acc.stream:
        return _json(final)
    if out is None and pending:
        out = await _start(request, target, acc)
    elif out is None:  # no text at all: only the final line
        out = _ndjson()
        await out.prepare(request)
    pending.append(final)
    await out.write_eof(b"".join(pending))
    return out


async def _start(request: web.Request, target: Target, acc: StreamAccumulator
                 ) -> web.StreamResponse:
    """Prepare the NDJSON response for its first line and record the time to first token."""
    out = _ndjson()
    await out.prepare(request)
    request.app[METRICS].first_token(request.path, target.name, (time.time_ns() - acc.t0) / 1e9)
    return out


async def _write_error(out: web.StreamResponse, message: str) -> None:
    try:
        await out.write(error_line(message))
        await out.write_eof()
    except ConnectionResetError:  # the client left while we told it why
        pass


async def _post_json(request: web.Request, target: Target, body: dict[str, Any],
                     endpoint: Endpoint, keep_alive: float | None) -> tuple[bytes, int]:
    """The upstream's reply and when the model was ready (ns), for load_duration."""
    try:
        async with upstream_call(request, target, to_openai.EMBEDDINGS_PATH, body,
                                 keep_alive) as upstream:
            t_up = time.time_ns()
            return await upstream.read(), t_up
    except EngineDied:
        raise EngineDied("model runner has unexpectedly stopped while embedding") from None
    except VllamaError as exc:
        raise map_upstream_error(exc, request.get(MODEL, ""), endpoint) from None


async def embed(request: web.Request) -> web.Response:
    t0 = time.time_ns()
    req = decode_embed(await request.read())
    target, _ = await route(request, "embed", req.model or "")
    inputs = to_openai.embed_inputs(req.input)
    if not inputs:
        async with leased(request, target, req.keep_alive):  # loads the model, like Ollama
            return _json(replies.embed_empty_reply(req.model or ""))
    body = to_openai.embed_to_openai(req, target.upstream_model, inputs)
    raw, t_up = await _post_json(request, target, body, "embed", req.keep_alive)
    vectors, prompt_tokens = replies.vectors_from_openai(raw)
    request[TOKENS] = (prompt_tokens, 0)
    return _json(replies.embed_reply(req.model or "", vectors, dimensions=req.dimensions,
                             prompt_eval_count=prompt_tokens,
                             total_duration=time.time_ns() - t0, load_duration=t_up - t0))


async def embeddings(request: web.Request) -> web.Response:
    req = decode_embeddings(await request.read())
    target, _ = await route(request, "embeddings", req.model or "")
    if not req.prompt:
        async with leased(request, target, req.keep_alive):
            return _json(replies.embeddings_empty_reply())
    body = to_openai.embeddings_to_openai(req, target.upstream_model)
    raw, _ = await _post_json(request, target, body, "embeddings", req.keep_alive)
    vectors, prompt_tokens = replies.vectors_from_openai(raw)
    request[TOKENS] = (prompt_tokens, 0)
    if not vectors:
        raise EngineDied("upstream returned no embedding")
    return _json(replies.embeddings_reply(vectors[0]))


ROUTES = (("POST", "/api/generate", generate), ("POST", "/api/chat", chat),
          ("POST", "/api/embed", embed), ("POST", "/api/embeddings", embeddings))

