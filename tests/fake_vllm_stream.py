"""The SSE half of the fake vLLM: chunk shapes exactly as vLLM 0.32 streams them, plus the
scripted faults (token delay, stall, drop, engine error) and the bookkeeping that tells tests
whether a stream completed or the client walked away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Literal

import msgspec
from aiohttp import web

from tests import fake_vllm_gen as gen
from tests.fake_vllm_state import FakeScript, FakeState, Outcome, ReplyContext

# How often a stalled handler looks for a vanished client. aiohttp (handler_cancellation off,
# its default) does not cancel a handler whose client left; only the transport tells.
_POLL_S = 0.05

_encode = msgspec.json.encode
_DONE = b"[DONE]"


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def wait_or_gone(
    request: web.Request,
    state: FakeState,
    timeout: float | None,
    keep_waiting: Callable[[], bool] | None = None,
) -> Literal["gone", "abort", "done"]:
    """Idle for ``timeout`` seconds (None: until released) while watching the client.

    "gone": the client disconnected; "abort": the server is shutting down; "done": the time
    passed or ``keep_waiting`` turned false (a test un-stalled the stream)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        if _client_gone(request):
            return "gone"
        if state.aborting.is_set():
            return "abort"
        if keep_waiting is not None and not keep_waiting():
            return "done"
        step = _POLL_S if deadline is None else min(_POLL_S, deadline - loop.time())
        if step <= 0:
            return "done"
        try:
            await asyncio.wait_for(state.aborting.wait(), step)
        except TimeoutError:
            pass


class _ClientGone(Exception):
    pass


class _Dropped(Exception):
    pass


class _EngineError(Exception):
    pass


class _SseWriter:
    """Writes ``data: ...`` events and applies the script's faults before each one; the fault
    fields are read live, so a test may change them while the stream runs."""

    def __init__(
        self, request: web.Request, resp: web.StreamResponse, script: FakeScript, state: FakeState
    ) -> None:
        self.request, self.resp, self.script, self.state = request, resp, script, state
        self.sent = 0

    def _stalled(self) -> bool:
        stall = self.script.stall_after
        return self.script.wedged or (stall is not None and self.sent >= stall)

    async def send(self, payload: bytes, *, delay: bool = True) -> None:
        script = self.script
        if self.state.aborting.is_set():
            raise _EngineError
        if script.error_after is not None and self.sent >= script.error_after:
            raise _EngineError
        if script.drop_after is not None and self.sent >= script.drop_after:
            if self.request.transport is not None:
                self.request.transport.close()
            raise _Dropped
        endless = script.endless_line_after
        if endless is not None and self.sent >= endless:
            await self._endless_line()
        if self._stalled():
            outcome = await wait_or_gone(self.request, self.state, None, self._stalled)
            if outcome == "gone":
                raise _ClientGone
            if outcome == "abort":
                raise _EngineError
        await self._write(payload)
        if delay and script.token_delay > 0:
            await wait_or_gone(self.request, self.state, script.token_delay)

    async def _endless_line(self) -> None:
        block = b"x" * 65536
        try:
            await self.resp.write(b'data: {"choices": "')
            for _ in range(4096):  # 256 MiB at most, should the client never give up
                await self.resp.write(block)
        except ConnectionError as exc:
            raise _ClientGone from exc
        raise _Dropped

    async def _write(self, payload: bytes) -> None:
        try:
            await self.resp.write(b"data: " + payload + b"\n\n")
        except ConnectionError as exc:
            raise _ClientGone from exc
        self.sent += 1
        self.state.tokens += 1

    async def send_error(self) -> None:
        """What vLLM sends when the engine dies mid-stream: an error event, then [DONE]."""
        err = {"message": gen.ENGINE_DEAD, "type": "InternalServerError", "param": None,
               "code": 500}
        await self._write(_encode({"error": err}))
        await self._write(_DONE)


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    opts = body.get("stream_options")
    if not isinstance(opts, dict):
        return False, False
    include = bool(opts.get("include_usage"))
    return include, include and bool(opts.get("continuous_usage_stats"))


def _chat_delta(step: gen.Step, plan: gen.Plan) -> dict[str, Any] | None:
    if step.kind == "content":
        return {"content": step.text}
    if step.kind == "reasoning":
        return None if plan.hide_reasoning else {"reasoning": step.text}
    call = plan.tool_call
    if step.kind == "tool_start" and call is not None:
        fn = {"name": call.name, "arguments": ""}
        return {"tool_calls": [{"id": call.id, "type": "function", "index": 0, "function": fn}]}
    if step.kind == "tool_args":
        return {"tool_calls": [{"index": 0, "function": {"arguments": step.text}}]}
    return {}  # the parser swallowed the token (e.g. </tool_call>): an empty delta


def chat_events(ctx: ReplyContext) -> Iterator[dict[str, Any]]:
    plan = ctx.plans[0]
    include_usage, continuous = _stream_options(ctx.body)
    want_lp = bool(ctx.body.get("logprobs"))
    top = ctx.body.get("top_logprobs")
    top_n = top if isinstance(top, int) else 0
    base = {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
            "model": ctx.model}
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}
    first: dict[str, Any] = {**base, "choices": [role], "prompt_token_ids": None}
    if continuous:
        first["usage"] = ctx.usage(0)
    yield first
    steps = plan.steps or [gen.Step("tool_end")]  # zero tokens still end with a finish chunk
    for k, step in enumerate(steps):
        last = k == len(steps) - 1
        delta = _chat_delta(step, plan)
        if delta is None and not last:
            continue
        lp = gen.chat_logprobs([step], k, top_n) if want_lp and plan.steps else None
        choice = {"index": 0, "delta": delta or {}, "logprobs": lp,
                  "finish_reason": plan.finish_reason if last else None}
        if last:
            choice["stop_reason"] = plan.stop_reason
        chunk: dict[str, Any] = {**base, "choices": [choice]}
        if continuous:
            chunk["usage"] = ctx.usage(min(k + 1, plan.completion_tokens))
        yield chunk
    if include_usage:
        yield {**base, "choices": [], "usage": ctx.usage()}


def completion_events(ctx: ReplyContext) -> Iterator[dict[str, Any]]:
    include_usage, continuous = _stream_options(ctx.body)
    top = ctx.body.get("logprobs")
    base = {"id": ctx.id, "object": "text_completion", "created": ctx.created,
            "model": ctx.model}
    done = 0
    for index, plan in enumerate(ctx.plans):
        steps = plan.steps or [gen.Step("content", "")]
        offset = 0
        for k, step in enumerate(steps):
            last = k == len(steps) - 1
            lp = (gen.completion_logprobs([step], k, offset, top)
                  if isinstance(top, int) and plan.steps else None)
            offset += len(step.text)
            choice = {"index": index, "text": step.text, "logprobs": lp,
                      "finish_reason": plan.finish_reason if last else None,
                      "stop_reason": plan.stop_reason if last else None}
            chunk: dict[str, Any] = {**base, "choices": [choice]}
            if plan.steps:
                done += 1
            if continuous:
                chunk["usage"] = ctx.usage(done)
            yield chunk
    if include_usage:
        yield {**base, "choices": [], "usage": ctx.usage()}


async def stream_reply(
    request: web.Request, ctx: ReplyContext, script: FakeScript, state: FakeState
) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    await resp.prepare(request)
    state.stream_opened()
    writer = _SseWriter(request, resp, script, state)
    outcome: Outcome = "client_closed"  # also what a cancelled handler task counts as
    try:
        try:
            for event in chat_events(ctx) if ctx.chat else completion_events(ctx):
                await writer.send(_encode(event))
            await writer.send(_DONE, delay=False)
            outcome = "completed"
        except _EngineError:
            outcome = "errored"
            await writer.send_error()
    except _ClientGone:
        outcome = "client_closed"
    except _Dropped:
        outcome = "dropped"
    finally:
        state.stream_closed(outcome)
    return resp
