"""vLLM SSE -> Ollama NDJSON (reference §6.6, §6.7, §8.3, §8.4).

`SSEDecoder` turns network chunks into `StreamChunk` events; `StreamAccumulator` turns events
into Ollama lines (stream:true) or one aggregated object (stream:false). Both are per-request
objects with no I/O; the clock is injected so tests can pin every duration.

Per-event cost matters (tens of thousands of chunks a second on one core): events are decoded
into Structs by one prebuilt decoder, responses encoded by one prebuilt encoder, and the
`created_at` prefix is cached per second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from vllama.errors import UpstreamError
from vllama.translate.request import ModelCaps, resolve_think
from vllama.translate.values import CreatedAt
from vllama.wire.ollama import (
    ChatMessageOut,
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Logprob,
    TokenLogprob,
    ToolCallFunctionOut,
    ToolCallOut,
)
from vllama.wire.openai import ErrorBody, ErrorInfo, Logprobs, StreamChunk, ToolCallDelta

_chunk_decoder = msgspec.json.Decoder(StreamChunk)
_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_args_decoder = msgspec.json.Decoder()
_error_body_decoder = msgspec.json.Decoder(ErrorBody)

NEWLINE = b"\n"
# The longest SSE line we hold while waiting for its end. vLLM's events are small (one token or
# delta each); an upstream that never ends a line would otherwise grow our memory without bound.
MAX_EVENT_LINE = 4 * 1024 * 1024


def error_line(message: str) -> bytes:
    """The final NDJSON line for an error after the first chunk: `{"error": msg}\\n`."""
    return _encode(ErrorResponse(message)) + NEWLINE


# ---------------------------------------------------------------------------------------------
# SSE


def decode_event(payload: bytes) -> StreamChunk:
    """One SSE `data:` payload -> StreamChunk (UpstreamError 502 if it is not JSON)."""
    try:
        return _chunk_decoder.decode(payload)
    except msgspec.DecodeError as err:
        raise UpstreamError(f"invalid upstream stream event: {err}") from None


def _status(code: Any, default: int = 500) -> int:
    try:
        c = int(code)
    except (TypeError, ValueError):
        return default
    return c if 400 <= c <= 599 else default


def stream_error(ev: StreamChunk) -> UpstreamError | None:
    """vLLM's in-stream error event as an UpstreamError (status from its code, else 500), or
    None for a normal event. Handles {"error": {...}}, {"error": "..."} and the older
    {"object": "error", "message": ...}."""
    err = ev.error
    if err is None:
        if ev.object != "error":
            return None
        return UpstreamError(ev.message or "upstream error", status=_status(ev.code))
    if isinstance(err, str):
        return UpstreamError(err or "upstream error", status=_status(ev.code))
    return UpstreamError(err.message or "upstream error", status=_status(err.code))


def error_from_upstream(status: int, body: bytes) -> UpstreamError:
    """A non-2xx vLLM reply as an UpstreamError with vLLM's message and status passed through
    (shapes: {"error": {...}}, {"object": "error", "message": ...}, FastAPI {"detail": ...})."""
    message = ""
    try:
        eb = _error_body_decoder.decode(body)
    except msgspec.DecodeError:
        eb = None
    if eb is not None:
        if isinstance(eb.error, ErrorInfo):
            message = eb.error.message
        elif isinstance(eb.error, str):
            message = eb.error
        elif eb.message:
            message = eb.message
        elif isinstance(eb.detail, str):
            message = eb.detail
        elif eb.detail is not None:
            message = _encode(eb.detail).decode()
    if not message:
        message = body.decode("utf-8", "replace").strip() or f"upstream returned {status}"
    return UpstreamError(message, status=status if 400 <= status <= 599 else 502)


def _bounded(partial_line: bytes) -> bytes:
    if len(partial_line) > MAX_EVENT_LINE:
        raise UpstreamError(f"the upstream sent an event line longer than {MAX_EVENT_LINE} "
                            "bytes; the stream was stopped")
    return partial_line


class SSEDecoder:
    """Incremental SSE parser: `feed(network_bytes)` returns the complete events so far.

    Lines may be split anywhere across feeds; `\\r\\n` is accepted; comments (`:`), `event:`,
    `id:` and `retry:` lines are ignored; `data: [DONE]` sets `done`. Error events are
    returned like any other event (see `stream_error`; StreamAccumulator.feed raises them).
    """

    __slots__ = ("_buf", "done")

    def __init__(self) -> None:
        self._buf = b""
        self.done = False

    def feed(self, data: bytes) -> list[StreamChunk]:
        buf = self._buf + data if self._buf else data
        if b"\n" not in buf:
            self._buf = _bounded(buf)
            return []
        lines = buf.split(b"\n")
        self._buf = _bounded(lines.pop())
        out = []
        decode = _chunk_decoder.decode
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload:
                continue
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                out.append(decode(payload))
            except msgspec.DecodeError as err:
                raise UpstreamError(f"invalid upstream stream event: {err}") from None
        return out

    def close(self) -> list[StreamChunk]:
        """Flush a last line that arrived without its newline."""
        rest, self._buf = self._buf, b""
        return self.feed(rest + b"\n") if rest.strip() else []


# ---------------------------------------------------------------------------------------------
# accumulator


def _logprobs(lp: Logprobs) -> list[Logprob]:
    """vLLM chat (`content`) or completions (parallel lists) logprobs -> Ollama's items."""
    if lp.content is not None:
        return [
            Logprob(
                token=t.token,
                logprob=t.logprob,
                bytes=t.bytes or None,
                top_logprobs=[TokenLogprob(x.token, x.logprob, x.bytes or None)
                              for x in t.top_logprobs] or None if t.top_logprobs else None,
            )
            for t in lp.content
        ]
    out = []
    tokens = lp.tokens or []
    lps = lp.token_logprobs or []
    tops = lp.top_logprobs or []
    for i, tok in enumerate(tokens):
        value = lps[i] if i < len(lps) else None
        top = tops[i] if i < len(tops) else None
        out.append(Logprob(
            token=tok,
            logprob=value if value is not None else 0.0,
            top_logprobs=[TokenLogprob(k, v) for k, v in top.items()] if top else None,
        ))
    return out


def synth_tool_call_id(seed: int, index: int) -> str:
    """`call_` + 8 lower-case alphanumerics, like Ollama, derived from the request start time
    so replays are deterministic."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars = []
    for _ in range(8):
        h, r = divmod(h, 36)
        chars.append(alphabet[r])
    return "call_" + "".join(chars)


class _PendingCall:
    __slots__ = ("args", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.args: list[str] = []


class StreamAccumulator:
    """Feeds on vLLM stream events for one request and produces Ollama output.

    chat=True produces ChatResponse lines (message on every chunk), else GenerateResponse.
    stream=True: `feed` returns one NDJSON line (bytes ending in b"\\n") or None for events
    with nothing to show; `finish` returns the final done:true line.
    stream=False: `feed` always returns None; `finish` returns the single JSON object
    (no trailing newline) with concatenated text, all logprobs, and tool calls only if
    has_tools.
    think=False drops reasoning text. Timings (§8.4): t0_ns = request arrival;
    call `upstream_sent()` when the upstream request goes out.
    Raises UpstreamError from `feed` for an in-stream error event (write `error_line` then).
    """

    def __init__(
        self,
        *,
        model: str,
        chat: bool,
        t0_ns: int,
        now_ns: Callable[[], int],
        created_at: Callable[[int], str] | None = None,
        think: bool | str | None = None,
        stream: bool = True,
        has_tools: bool = False,
        logprobs: bool = False,
    ) -> None:
        self.model = model
        self.chat = chat
        self.stream = stream
        self.has_tools = has_tools
        self._now = now_ns
        self._fmt = created_at if created_at is not None else CreatedAt()
        self._think = think is not False
        self._want_logprobs = logprobs
        self.t0 = t0_ns
        self.t_up: int | None = None
        self.t_first: int | None = None
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.events_with_output = 0
        self._calls: dict[int, _PendingCall] = {}
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._lps: list[Logprob] = []

    def upstream_sent(self, t_ns: int | None = None) -> None:
        self.t_up = self._now() if t_ns is None else t_ns

    def _collect(self, deltas: list[ToolCallDelta]) -> None:
        for d in deltas:
            call = self._calls.get(d.index)
            if call is None:
                call = self._calls[d.index] = _PendingCall()
            if d.id:
                call.id = d.id
            fn = d.function
            if fn is not None:
                if fn.name:
                    call.name = fn.name
                if fn.arguments:
                    call.args.append(fn.arguments)

    def feed(self, ev: StreamChunk) -> bytes | None:
        if ev.error is not None or ev.object == "error":
            err = stream_error(ev)
            assert err is not None
            raise err
        if ev.usage is not None:
            self.prompt_tokens = ev.usage.prompt_tokens
            self.completion_tokens = ev.usage.completion_tokens
        choices = ev.choices
        if not choices:
            return None
        ch = choices[0]
        if ch.finish_reason:
            self.finish_reason = ch.finish_reason
        content = ""
        thinking = ""
        produced = False
        d = ch.delta
        if d is not None:
            content = d.content or ""
            r = d.reasoning or d.reasoning_content
            if r:
                produced = True
                if self._think:
                    thinking = r
            if d.tool_calls:
                produced = True
                self._collect(d.tool_calls)
        elif ch.text:
            content = ch.text
        lps = _logprobs(ch.logprobs) if self._want_logprobs and ch.logprobs else None
        if not (content or thinking or lps):
            if produced:
                self._first_output()
            return None
        now = self._now()
        self.events_with_output += 1
        if self.t_first is None:
            self.t_first = now
        if not self.stream:
            if content:
                self._content.append(content)
            if thinking:
                self._thinking.append(thinking)
            if lps:
                self._lps.extend(lps)
            return None
        if self.chat:
            out: Any = ChatResponse(self.model, self._fmt(now),
                                    ChatMessageOut("assistant", content, thinking), False,
                                    logprobs=lps)
        else:
            out = GenerateResponse(self.model, self._fmt(now), content, False, thinking=thinking,
                                   logprobs=lps)
        return _encode(out) + NEWLINE

    def _first_output(self) -> None:
        self.events_with_output += 1
        if self.t_first is None:
            self.t_first = self._now()

    def tool_calls(self) -> list[ToolCallOut]:
        """The collected tool calls, complete, with arguments parsed ('' -> {})."""
        out = []
        for pos, index in enumerate(sorted(self._calls)):
            call = self._calls[index]
            text = "".join(call.args).strip()
            args: Any = {}
            if text:
                try:
                    args = _args_decoder.decode(text)
                except msgspec.DecodeError as err:
                    raise UpstreamError(
                        f"model returned invalid tool call arguments for {call.name!r}: {err}",
                        status=500) from None
                if not isinstance(args, dict):
                    raise UpstreamError(
                        f"model returned invalid tool call arguments for {call.name!r}: "
                        "not a JSON object", status=500)
            out.append(ToolCallOut(ToolCallFunctionOut(pos, call.name, args),
                                   call.id or synth_tool_call_id(self.t0, pos)))
        return out

    def finish(self) -> bytes:
        """The final done:true line (stream) or the whole reply object (stream:false)."""
        t_end = self._now()
        t_up = self.t_up if self.t_up is not None else self.t0
        t_first = self.t_first if self.t_first is not None else t_end
        done_reason = "length" if self.finish_reason == "length" else "stop"
        calls = self.tool_calls() if self._calls else None
        if calls is not None and not self.stream and not self.has_tools:
            calls = None
        eval_count = self.completion_tokens
        if eval_count is None:
            eval_count = self.events_with_output  # an estimate when vLLM sent no usage
        metrics: dict[str, Any] = {
            "done_reason": done_reason,
            "total_duration": max(t_end - self.t0, 1),
            "load_duration": max(t_up - self.t0, 1),
            "prompt_eval_count": self.prompt_tokens or 0,
            "prompt_eval_duration": max(t_first - t_up, 0),
            "eval_count": eval_count,
            "eval_duration": max(t_end - t_first, 0),
        }
        ts = self._fmt(t_end)
        content = "".join(self._content)
        thinking = "".join(self._thinking)
        lps = self._lps or None
        out: Any
        if self.chat:
            msg = ChatMessageOut("assistant", content, thinking, tool_calls=calls)
            out = ChatResponse(self.model, ts, msg, True, logprobs=lps, **metrics)
        else:
            out = GenerateResponse(self.model, ts, content, True, thinking=thinking,
                                   tool_calls=calls, logprobs=lps, **metrics)
        data = _encode(out)
        return data + NEWLINE if self.stream else data


def special_reply(model: str, created_at: str, reason: str, *, chat: bool) -> bytes:
    """The one-object `load` / `unload` replies (application/json, never NDJSON)."""
    out: Any
    if chat:
        out = ChatResponse(model, created_at, ChatMessageOut("assistant", ""), True,
                           done_reason=reason)
    else:
        out = GenerateResponse(model, created_at, "", True, done_reason=reason)
    return _encode(out)


def chat_accumulator(req: ChatRequest, caps: ModelCaps, *, t0_ns: int,
                     now_ns: Callable[[], int],
                     created_at: Callable[[int], str] | None = None) -> StreamAccumulator:
    """The accumulator for a decoded /api/chat request (stream defaults to true)."""
    return StreamAccumulator(
        model=req.model or "", chat=True, t0_ns=t0_ns, now_ns=now_ns, created_at=created_at,
        think=resolve_think(req.think, caps, req.model or ""), stream=req.stream is not False,
        has_tools=bool(req.tools), logprobs=bool(req.logprobs))


def generate_accumulator(req: GenerateRequest, caps: ModelCaps, *, t0_ns: int,
                         now_ns: Callable[[], int],
                         created_at: Callable[[int], str] | None = None) -> StreamAccumulator:
    """The accumulator for a decoded /api/generate request (stream defaults to true)."""
    return StreamAccumulator(
        model=req.model or "", chat=False, t0_ns=t0_ns, now_ns=now_ns, created_at=created_at,
        think=resolve_think(req.think, caps, req.model or ""), stream=req.stream is not False,
        has_tools=False, logprobs=bool(req.logprobs))
