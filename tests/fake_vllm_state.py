"""The fake vLLM's script (what to do), state (what happened) and the response helpers every
endpoint shares. Split from ``tests.fake_vllm`` so the stream and utility modules can use them
without import cycles; import them from ``tests.fake_vllm``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from tests import fake_vllm_gen as gen

VERSION = "0.32.0"
ENGINE_DEAD = gen.ENGINE_DEAD

Outcome = Literal["completed", "client_closed", "dropped", "errored"]


@dataclass
class FakeScript:
    """How the fake behaves; mutable so a test can change it between (or during) requests."""

    served_names: list[str] = field(default_factory=lambda: ["fake"])
    model_path: str = "/models/fake"  # /v1/models "root"
    max_model_len: int = 2048
    tokens: int = 8  # reply length when max_tokens does not cut it (the model's own EOS)
    token_delay: float = 0.0  # seconds between streamed events
    stall_after: int | None = None  # SSE events sent before stalling until the client leaves
    drop_after: int | None = None  # SSE events sent before closing the TCP connection
    error_after: int | None = None  # SSE events sent before an EngineCore error chunk
    fail_status: int | None = None  # answer generate requests with this HTTP error
    reasoning: bool = False  # emit delta.reasoning before content (a reasoning parser)
    tool_call: bool = False  # answer requests carrying tools with a streamed tool call
    # Whether the engine runs with `--enable-auto-tool-choice --tool-call-parser X`: without
    # them vLLM answers a chat carrying tools with a 400. None: not checked (in-process fakes).
    auto_tools: bool | None = None
    embedding_dim: int = 8
    runner: Literal["generate", "pooling"] = "generate"
    api_key: str | None = None  # like VLLM_API_KEY: required as a Bearer token on /v1/*
    healthy: bool = True  # False: /health answers 503 like a dead engine
    version: str = VERSION
    # vLLM's sleep mode: the dev routes exist with VLLM_SERVER_DEV_MODE=1; sleeping works only
    # with --enable-sleep-mode (the CPU build refuses it).
    dev_mode: bool = False
    sleep_mode: bool = False
    sleeping: bool = False
    # vllm#36960: the engine core is stuck while the API server answers (/health 200, /metrics
    # with frozen counters); every generation stops where it is and new ones never start.
    wedged: bool = False
    # SSE events sent before one that never ends: `data: xxxx...` without a newline, until
    # the client leaves (an upstream bug the gateway must bound).
    endless_line_after: int | None = None
    # How the child was started (argv tail and the environment a placement sets), for tests.
    launch: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]  # case-insensitive, like HTTP
    body: Any  # decoded JSON, or None when the body was empty or not JSON
    raw: bytes


class FakeState:
    """What the fake saw. Handlers change it only through the methods below, which also wake
    ``wait_for`` callers."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.running = 0  # generate requests in flight (the /metrics gauge)
        self.tokens = 0  # tokens generated (the /metrics counter)
        self.streams_open = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_closed_early = 0  # the client went away before [DONE]
        self.streams_dropped = 0  # the fake cut the connection (drop_after)
        self.streams_errored = 0  # an error chunk ended the stream (error_after, abort)
        self.replies_closed_early = 0  # non-streaming requests the client abandoned
        self.aborting = asyncio.Event()  # set on shutdown: stalled streams end with an error
        self._changed = asyncio.Event()

    def _bump(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def record(self, req: RecordedRequest) -> None:
        self.requests.append(req)
        self._bump()

    def generation_started(self) -> None:
        self.running += 1
        self._bump()

    def generation_ended(self) -> None:
        self.running -= 1
        self._bump()

    def stream_opened(self) -> None:
        self.streams_open += 1
        self.streams_started += 1
        self._bump()

    def stream_closed(self, outcome: Outcome) -> None:
        self.streams_open -= 1
        if outcome == "completed":
            self.streams_completed += 1
        elif outcome == "client_closed":
            self.streams_closed_early += 1
        elif outcome == "dropped":
            self.streams_dropped += 1
        else:
            self.streams_errored += 1
        self._bump()

    def reply_abandoned(self) -> None:
        self.replies_closed_early += 1
        self._bump()

    def abort_all(self) -> None:
        """End every stalled or slow stream with vLLM's engine-dead error chunk (shutdown)."""
        self.aborting.set()
        self._bump()

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    async def wait_for(self, pred: Callable[[FakeState], bool], timeout: float = 5.0) -> None:
        """Wait until ``pred(state)`` holds; TimeoutError (with the counters) after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not pred(self):
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"fake vLLM state never matched: {self.summary()}") from None

    def summary(self) -> str:
        return (
            f"requests={len(self.requests)} running={self.running} open={self.streams_open} "
            f"completed={self.streams_completed} closed_early={self.streams_closed_early} "
            f"dropped={self.streams_dropped} errored={self.streams_errored} "
            f"replies_closed_early={self.replies_closed_early}"
        )


FAKE_STATE = web.AppKey("fake_vllm_state", FakeState)
FAKE_SCRIPT = web.AppKey("fake_vllm_script", FakeScript)

_encode = msgspec.json.encode


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(obj), status=status, content_type="application/json")


def error_response(
    message: str, *, status: int = 400, err_type: str = "BadRequestError", param: str | None = None
) -> web.Response:
    """vLLM's ErrorResponse: ``{"error": {"message", "type", "param", "code"}}``."""
    err = {"message": message, "type": err_type, "param": param, "code": status}
    return json_response({"error": err}, status)


def detail_response(status: int, text: str) -> web.Response:
    # FastAPI's own 404/405 body; vLLM serves it for routes the model's runner lacks.
    return json_response({"detail": text}, status)


async def json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, or vLLM's 400 for a body that is not one."""
    try:
        body = msgspec.json.decode(await request.read())  # read() is cached: cheap again
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        return body
    msg = (
        "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body', "
        "'msg': 'JSON decode error'}"
    )
    return error_response(msg, err_type="Bad Request", param="body")


def check_model(script: FakeScript, body: dict[str, Any]) -> web.Response | None:
    model = body.get("model")
    if model is None or model in script.served_names:
        return None
    return error_response(
        f"The model `{model}` does not exist. Valid aliases: {', '.join(script.served_names)}.",
        status=404,
        err_type="NotFoundError",
        param="model",
    )


def too_long(script: FakeScript, count: int) -> web.Response:
    return error_response(
        f"This model's maximum context length is {script.max_model_len} tokens. However, your "
        f"prompt contains {count} input tokens, which exceeds this limit even without any "
        "output tokens. Please reduce the length of the input prompt.",
        param="input_tokens",
    )


@dataclass
class ReplyContext:
    """One generate request, decided: what to send and how."""

    chat: bool
    body: dict[str, Any]
    model: str
    id: str
    created: int
    prompt_tokens: int
    plans: list[gen.Plan]

    @property
    def completion_tokens(self) -> int:
        return sum(p.completion_tokens for p in self.plans)

    def usage(self, completion_tokens: int | None = None) -> dict[str, int]:
        done = self.completion_tokens if completion_tokens is None else completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + done,
            "completion_tokens": done,
        }


