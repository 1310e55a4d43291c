"""What `vllama bench` sends and how it reads the answers, for both APIs.

Pure code (no I/O) so the tests can feed it exact bytes. A stream is fed raw socket reads with
their arrival time; the parser splits lines itself, so every frame that arrived in one read gets
that read's timestamp (the moment the client could first have seen it).

Definitions, the same for both APIs so the two can be compared:
- frame: one NDJSON line, or one SSE ``data:`` event other than ``[DONE]``;
- text frame: a frame carrying non-empty generated text (content, thinking or reasoning);
- TTFT: request start to the arrival of the first text frame;
- ITL: the gaps between successive text frames of one request;
- output tokens: ``eval_count`` (Ollama) or ``usage.completion_tokens`` (OpenAI) when the
  server reports it, else the number of text frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

Api = Literal["ollama", "openai"]
Endpoint = Literal["chat", "generate", "completions"]

# Default path per (api, endpoint); `generate` is Ollama's, `completions` OpenAI's.
PATHS: dict[tuple[str, str], str] = {
    ("ollama", "chat"): "/api/chat",
    ("ollama", "generate"): "/api/generate",
    ("openai", "chat"): "/v1/chat/completions",
    ("openai", "completions"): "/v1/completions",
}

# Short common English words: about one token each in the usual BPE vocabularies, so a
# prompt of P words is "roughly P tokens" without needing the target's tokenizer.
_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "then",
          "it", "runs", "back", "to", "its", "home", "in", "the", "old", "green", "wood",
          "where", "many", "small", "birds", "sing", "all", "day", "long")


def make_prompt(tokens: int) -> str:
    """A fixed prompt of `tokens` words (at least one), identical on every run."""
    count = max(1, tokens)
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(count))


def resolve_url(url: str, api: str, endpoint: str) -> str:
    """The full request URL: a URL with an API path is used as is; a base URL (optionally
    ending in /v1 for OpenAI) gets the endpoint's default path appended."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/")
    known = {p for p in PATHS.values()}
    if not any(path.endswith(p) for p in known):
        default = PATHS[(api, endpoint)]
        if api == "openai" and path.endswith("/v1"):
            path = path + default[len("/v1"):]
        else:
            path = path + default
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def request_body(api: str, endpoint: str, *, model: str, prompt: str, max_tokens: int,
                 stream: bool) -> bytes:
    """The request JSON: greedy, fixed output length (num_predict / max_tokens)."""
    body: dict[str, object]
    if api == "ollama":
        body = {"model": model, "stream": stream,
                "options": {"num_predict": max_tokens, "temperature": 0}}
        if endpoint == "generate":
            body["prompt"] = prompt
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body = {"model": model, "stream": stream, "max_tokens": max_tokens, "temperature": 0}
        if endpoint == "completions":
            body["prompt"] = prompt
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
        if stream:
            body["stream_options"] = {"include_usage": True}
    return msgspec.json.encode(body)


# --- wire shapes: only the fields the bench reads; msgspec skips the rest cheaply -----------

class _OllamaMessage(msgspec.Struct):
    content: str | None = None
    thinking: str | None = None


class _OllamaFrame(msgspec.Struct):
    message: _OllamaMessage | None = None
    response: str | None = None
    thinking: str | None = None
    done: bool = False
    eval_count: int | None = None
    error: str | None = None


class _OpenAIDelta(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class _OpenAIChoice(msgspec.Struct):
    delta: _OpenAIDelta | None = None
    message: _OpenAIDelta | None = None
    text: str | None = None


class _OpenAIUsage(msgspec.Struct):
    completion_tokens: int | None = None


class _OpenAIFrame(msgspec.Struct):
    choices: list[_OpenAIChoice] = []
    usage: _OpenAIUsage | None = None
    error: Any = None  # {"message": ...} from OpenAI/vLLM; anything from others


_decode_ollama = msgspec.json.Decoder(_OllamaFrame).decode
_decode_openai = msgspec.json.Decoder(_OpenAIFrame).decode


def _ollama_text(frame: _OllamaFrame) -> bool:
    msg = frame.message
    if msg is not None and (msg.content or msg.thinking):
        return True
    return bool(frame.response or frame.thinking)


def _openai_text(frame: _OpenAIFrame) -> bool:
    for choice in frame.choices:
        if choice.text:
            return True
        for part in (choice.delta, choice.message):
            if part is not None and (part.content or part.reasoning or part.reasoning_content):
                return True
    return False


def _openai_error(value: Any) -> str:
    """The message of an OpenAI-shaped error, whatever its shape."""
    if isinstance(value, dict):
        return str(value.get("message") or value)
    return str(value)


@dataclass(slots=True)
class StreamParser:
    """Reads one streamed reply. Feed it reads; `error` is set at the first problem, after
    which the caller should stop reading."""

    api: str
    start: float  # when the request was sent (perf_counter seconds)
    frames: int = 0
    text_frames: int = 0
    first_text: float | None = None
    last_text: float | None = None
    itls: list[float] = field(default_factory=list)
    reported_tokens: int | None = None
    done: bool = False
    error: str | None = None
    _buf: bytes = b""

    def feed(self, data: bytes, now: float) -> None:
        buf = self._buf + data if self._buf else data
        lines = buf.split(b"\n")
        self._buf = lines.pop()  # the (possibly empty) unterminated tail
        handle = self._ollama_line if self.api == "ollama" else self._sse_line
        for line in lines:
            handle(line, now)
            if self.error is not None:
                return

    def finish(self) -> None:
        """The body ended: flush an unterminated last line, check the stream completed."""
        if self._buf and self.error is None:
            tail, self._buf = self._buf, b""
            if self.api == "ollama":
                self._ollama_line(tail, self.last_text or self.start)
            else:
                self._sse_line(tail, self.last_text or self.start)
        if self.error is None and not self.done:
            self.error = ("stream ended before done:true" if self.api == "ollama"
                          else "stream ended before data: [DONE]")

    def _text(self, now: float) -> None:
        self.text_frames += 1
        if self.first_text is None:
            self.first_text = now
        elif self.last_text is not None:
            self.itls.append(now - self.last_text)
        self.last_text = now

    def _ollama_line(self, line: bytes, now: float) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            # Ollama never sends blank lines and its clients fail on them.
            self.error = "blank line in NDJSON stream"
            return
        if self.done:
            return  # frames after done:true are ignored (one peer sends a second done line)
        try:
            frame = _decode_ollama(line)
        except msgspec.DecodeError as exc:
            self.error = f"bad NDJSON line: {exc}"
            return
        self.frames += 1
        if frame.error is not None:
            self.error = f"stream error: {frame.error}"
            return
        if _ollama_text(frame):
            self._text(now)
        if frame.done:
            self.done = True
            self.reported_tokens = frame.eval_count

    def _sse_line(self, line: bytes, now: float) -> None:
        if line[:5] != b"data:":
            return  # blank separators, comments, event:/id: lines
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        if not payload or self.done:
            return
        try:
            frame = _decode_openai(payload)
        except msgspec.DecodeError as exc:
            self.error = f"bad SSE data: {exc}"
            return
        self.frames += 1
        if frame.error is not None:
            self.error = f"stream error: {_openai_error(frame.error)}"
            return
        if _openai_text(frame):
            self._text(now)
        if frame.usage is not None and frame.usage.completion_tokens is not None:
            self.reported_tokens = frame.usage.completion_tokens


@dataclass(slots=True)
class Whole:
    """What a non-streamed reply says."""

    has_text: bool
    reported_tokens: int | None
    error: str | None


def parse_whole(api: str, body: bytes) -> Whole:
    """Parse a non-streamed reply (one JSON object)."""
    try:
        if api == "ollama":
            frame = _decode_ollama(body)
            if frame.error is not None:
                return Whole(False, None, f"error: {frame.error}")
            if not frame.done:
                return Whole(False, None, "reply without done:true")
            return Whole(_ollama_text(frame), frame.eval_count, None)
        oai = _decode_openai(body)
    except msgspec.DecodeError as exc:
        return Whole(False, None, f"bad JSON reply: {exc}")
    if oai.error is not None:
        return Whole(False, None, f"error: {_openai_error(oai.error)}")
    tokens = oai.usage.completion_tokens if oai.usage is not None else None
    return Whole(_openai_text(oai), tokens, None)
