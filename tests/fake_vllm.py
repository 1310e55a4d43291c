"""A fake vLLM OpenAI-compatible server for every test tier.

In-process: ``make_app(FakeScript(...))`` gives an aiohttp app; tests tweak the (mutable) script
at any time and read what happened from ``app[FAKE_STATE]``. ``fake_server(script)`` runs it on
a real loopback port. As a child process it takes the argv the supervisor gives ``vllm serve``:
``python -m tests.fake_vllm serve MODEL --host H --port P --served-model-name NAME ...`` (see
``tests.fake_vllm_cli``).

Wire shapes, error texts and status codes copy vLLM 0.32.0 (checked against its source), so the
gateway is tested against what it will really meet. The "model" lives in ``tests.fake_vllm_gen``,
the SSE writer in ``tests.fake_vllm_stream``, the other endpoints in ``tests.fake_vllm_misc``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from tests import fake_vllm_gen as gen
from tests import fake_vllm_misc as misc
from tests.fake_vllm_misc import metrics_text
from tests.fake_vllm_state import (
    ENGINE_DEAD,
    FAKE_SCRIPT,
    FAKE_STATE,
    VERSION,
    FakeScript,
    FakeState,
    Outcome,
    RecordedRequest,
    ReplyContext,
    check_model,
    detail_response,
    error_response,
    json_body,
    json_response,
    too_long,
)
from tests.fake_vllm_stream import stream_reply, wait_or_gone

__all__ = [
    "ENGINE_DEAD",
    "FAKE_SCRIPT",
    "FAKE_STATE",
    "VERSION",
    "FakeScript",
    "FakeState",
    "Outcome",
    "RecordedRequest",
    "ReplyContext",
    "error_response",
    "fake_server",
    "full_reply",
    "make_app",
    "metrics_text",
]

# vLLM's API-key middleware guards only these prefixes (/health, /metrics... stay open).
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # CompletionRequest.max_tokens default in vLLM


def _validation_error(message: str, param: str, body: dict[str, Any]) -> web.Response:
    # A pydantic model validator failing inside FastAPI's body parsing: vLLM's
    # validation_exception_handler wraps the text like this, with type "Bad Request".
    text = (
        "1 validation error:\n  {'type': 'value_error', 'loc': 'body', "
        f"'msg': 'Value error, {message}', 'input': '<dict of {len(body)} items>', "
        f"'ctx': {{'error': VLLMValidationError({message!r})}}}}"
    )
    return error_response(text, err_type="Bad Request", param=param)


@web.middleware
async def _record_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    raw = await request.read()
    body: Any = None
    if raw:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
    request.app[FAKE_STATE].record(
        RecordedRequest(
            request.method, request.path, dict(request.query), CIMultiDict(request.headers), body,
            raw,
        )
    )
    key = request.app[FAKE_SCRIPT].api_key
    if key and request.method != "OPTIONS" and request.path.startswith(GUARDED_PREFIXES):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != key:
            return json_response({"error": "Unauthorized"}, 401)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return detail_response(404, "Not Found")
    except web.HTTPMethodNotAllowed:
        return detail_response(405, "Method Not Allowed")


def _max_tokens(body: dict[str, Any], chat: bool) -> tuple[int | None, str]:
    if chat and isinstance(body.get("max_completion_tokens"), int):
        return body["max_completion_tokens"], "max_completion_tokens"
    value = body.get("max_tokens")
    if isinstance(value, int):
        return value, "max_tokens"
    return (None if chat else COMPLETIONS_DEFAULT_MAX_TOKENS), "max_tokens"


def _validate(script: FakeScript, body: dict[str, Any], chat: bool) -> web.Response | None:
    """vLLM's checks in its order: request-model validators, the model name, then rendering."""
    if body.get("stream_options") and not body.get("stream"):
        return _validation_error(
            "Stream options can only be defined when `stream=True`.", "stream_options", body
        )
    if chat and body.get("tools") == []:
        return _validation_error(
            "`tools` must not be an empty array. "
            "Either provide at least one tool or omit the field entirely.",
            "tools",
            body,
        )
    choice = body.get("tool_choice")
    if chat and choice not in (None, "none") and body.get("tools") is None:
        return _validation_error(
            "When using `tool_choice`, `tools` must be set.", "tool_choice", body
        )
    if (err := check_model(script, body)) is not None:
        return err
    if chat and body.get("tools") and choice in (None, "auto") and script.auto_tools is False:
        # vLLM's renderer: "auto" is the default tool_choice of a request with tools.
        return error_response('"auto" tool choice requires --enable-auto-tool-choice and '
                              "--tool-call-parser to be set")
    max_tokens, param = _max_tokens(body, chat)
    if max_tokens is not None and max_tokens > script.max_model_len:
        return error_response(
            f"{param}={max_tokens} cannot be greater than max_model_len="
            f"{script.max_model_len}. Please request fewer output tokens.",
            param=param,
        )
    if not chat and body.get("suffix") is not None:
        return error_response(
            "suffix is only supported for models with FIM completion rendering", param="suffix"
        )
    return None


def _prompts(body: dict[str, Any], chat: bool) -> list[list[int]]:
    if chat:
        messages = body.get("messages")
        return [gen.chat_prompt_ids(messages if isinstance(messages, list) else [])]
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return [gen.text_prompt_ids(p) for p in prompt]  # a batch: one choice per prompt
    return [gen.text_prompt_ids(prompt)]


def _plan(script: FakeScript, body: dict[str, Any], chat: bool) -> ReplyContext | web.Response:
    prompts = _prompts(body, chat)
    for ids in prompts:
        if len(ids) > script.max_model_len:
            return too_long(script, len(ids))
    max_tokens, _ = _max_tokens(body, chat)
    plans = []
    for ids in prompts:
        room = script.max_model_len - len(ids)  # vLLM clamps max_tokens to the context left
        budget = room if max_tokens is None else min(max_tokens, room)
        plans.append(
            gen.plan_reply(
                body,
                chat=chat,
                natural_tokens=script.tokens,
                budget=budget,
                reasoning=script.reasoning,
                tool_call=script.tool_call,
            )
        )
    return ReplyContext(
        chat=chat,
        body=body,
        model=script.served_names[0],  # vLLM answers an alias with the first served name
        id=gen.new_id("chatcmpl" if chat else "cmpl"),
        created=int(time.time()),
        prompt_tokens=sum(len(ids) for ids in prompts),
        plans=plans,
    )


def _chat_message(plan: gen.Plan) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "role": "assistant",
        "content": None if plan.tool_call is not None and not plan.content else plan.content,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
    }
    if plan.tool_call is not None:
        call = plan.tool_call
        fn = {"name": call.name, "arguments": call.arguments}
        msg["tool_calls"] = [{"id": call.id, "type": "function", "function": fn}]
    msg["reasoning"] = plan.reasoning if plan.reasoning and not plan.hide_reasoning else None
    return msg


def full_reply(ctx: ReplyContext) -> dict[str, Any]:
    """The non-streaming JSON body (``ChatCompletionResponse`` / ``CompletionResponse``)."""
    top = ctx.body.get("top_logprobs") if ctx.chat else ctx.body.get("logprobs")
    want_lp = bool(ctx.body.get("logprobs")) if ctx.chat else isinstance(top, int)
    choices = []
    for i, plan in enumerate(ctx.plans):
        choice: dict[str, Any] = {"index": i}
        if ctx.chat:
            choice["message"] = _chat_message(plan)
            lp = gen.chat_logprobs(plan.steps, 0, top if isinstance(top, int) else 0)
        else:
            choice["text"] = plan.content
            lp = gen.completion_logprobs(plan.steps, 0, 0, top if isinstance(top, int) else 0)
        choice["logprobs"] = lp if want_lp else None
        choice["finish_reason"] = plan.finish_reason
        choice["stop_reason"] = plan.stop_reason
        choice["token_ids"] = None
        choices.append(choice)
    return {
        "id": ctx.id,
        "object": "chat.completion" if ctx.chat else "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {**ctx.usage(), "prompt_tokens_details": None},
        "kv_transfer_params": None,
    }


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    script, state = request.app[FAKE_SCRIPT], request.app[FAKE_STATE]
    if script.runner != "generate":
        return detail_response(404, "Not Found")
    if script.sleeping:  # the real one has no weights on the GPU then: it cannot generate
        return error_response("the engine is sleeping", status=503,
                              err_type="ServiceUnavailableError")
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    if (err := _validate(script, body, chat)) is not None:
        return err
    if script.fail_status is not None:
        kind = "ServiceUnavailableError" if script.fail_status == 503 else "InternalServerError"
        return error_response(ENGINE_DEAD, status=script.fail_status, err_type=kind)
    ctx = _plan(script, body, chat)
    if isinstance(ctx, web.Response):
        return ctx
    state.generation_started()
    try:
        # Wedged: the core never schedules it (until a test frees it or the client leaves).
        if script.wedged and await wait_or_gone(
                request, state, None, lambda: script.wedged) != "done":
            return web.Response()
        if body.get("stream"):
            return await stream_reply(request, ctx, script, state)
        return await _non_stream(request, ctx, script, state)
    finally:
        state.generation_ended()


async def _non_stream(
    request: web.Request, ctx: ReplyContext, script: FakeScript, state: FakeState
) -> web.StreamResponse:
    if script.drop_after is not None:
        if request.transport is not None:
            request.transport.close()
        return web.Response()  # never sent: aiohttp sees the closed transport
    waited: str = "done"
    try:
        if script.stall_after is not None:
            waited = await wait_or_gone(
                request, state, None, lambda: script.stall_after is not None
            )
        elif script.token_delay > 0:
            waited = await wait_or_gone(request, state, script.token_delay * ctx.completion_tokens)
    except asyncio.CancelledError:  # aiohttp's handler_cancellation=True (test servers use it)
        state.reply_abandoned()
        raise
    if waited == "gone":
        state.reply_abandoned()
        return web.Response()  # nobody is listening; aiohttp drops it
    if waited == "abort" or script.error_after is not None:
        return error_response(ENGINE_DEAD, status=500, err_type="InternalServerError")
    state.tokens += ctx.completion_tokens
    return json_response(full_reply(ctx))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


def make_app(script: FakeScript | None = None) -> web.Application:
    app = web.Application(middlewares=[_record_auth], client_max_size=64 * 1024 * 1024)
    app[FAKE_SCRIPT] = script if script is not None else FakeScript()
    app[FAKE_STATE] = FakeState()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", misc.embeddings)
    app.router.add_post("/tokenize", misc.tokenize)
    app.router.add_get("/v1/models", misc.models)
    app.router.add_get("/health", misc.health)
    app.router.add_get("/ping", misc.ping)
    app.router.add_post("/ping", misc.ping)
    app.router.add_get("/version", misc.version)
    app.router.add_get("/load", misc.load)
    app.router.add_get("/metrics", misc.metrics)
    app.router.add_get("/fake/info", misc.fake_info)
    app.router.add_post("/fake/wedge", misc.fake_wedge)
    if app[FAKE_SCRIPT].dev_mode:
        app.router.add_post("/sleep", misc.sleep)
        app.router.add_post("/wake_up", misc.wake_up)
        app.router.add_get("/is_sleeping", misc.is_sleeping)
    return app


@asynccontextmanager
async def fake_server(
    script: FakeScript | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[str, web.Application]]:
    """Serve a fake on a real loopback port; yields (base URL without /v1, app)."""
    app = make_app(script)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}", app
    finally:
        app[FAKE_STATE].abort_all()
        await runner.cleanup()


if __name__ == "__main__":
    from tests.fake_vllm_cli import main

    sys.exit(main())
