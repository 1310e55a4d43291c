"""Edges of every request: request id, who may call (Host, Origin, API key), CORS, error
mapping, access log.

Errors become responses here and nowhere else: a VllamaError carries its status and Ollama text;
routes under /v1/ get OpenAI's error envelope instead of Ollama's.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from random import getrandbits as _bits

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from vllama import log
from vllama.config import Config
from vllama.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    VllamaError,
)
from vllama.gateway import guard
from vllama.gateway.keys import (
    CORS_OK,
    FINAL_STATUS,
    METRICS,
    MODEL,
    REQUEST_ID,
    SERVICES,
    TOKENS,
    UPSTREAM,
)

logger = logging.getLogger("vllama.gateway")
access = logging.getLogger("vllama.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON_CT = "application/json; charset=utf-8"
_RID_OK = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

ALLOWED_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, "
    "X-Request-Id, x-stainless-arch, x-stainless-async, x-stainless-custom-poll-interval, "
    "x-stainless-helper-method, x-stainless-lang, x-stainless-os, x-stainless-package-version, "
    "x-stainless-poll-helper, x-stainless-retry-count, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-timeout"
)
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
# Open without the key: liveness, and readiness for load balancers that cannot send a header
# (health.py keeps the details of /health for callers with the key).
OPEN_PATHS = frozenset({"/health/live", "/health"})
# Probes and scrapes: counted in the metrics, not written to the access log.
QUIET_ROUTES = frozenset({"/health/live", "/health", "/metrics"})

_encode = msgspec.json.Encoder().encode


def error_body(request: web.BaseRequest, status: int, message: str) -> bytes:
    if request.path.startswith("/v1/"):
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return _encode({"error": {"message": message, "type": kind, "param": None,
                                  "code": None}})
    return _encode({"error": message})


def error_response(request: web.BaseRequest, status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(request, status, message),
                        content_type="application/json", charset="utf-8", headers=headers)


def as_error(exc: web.HTTPException) -> VllamaError:
    """aiohttp's own refusals (no route, wrong method, body too large, a bad Expect) as the
    errors they are, with Go's texts for the routing ones (Ollama's words, in JSON)."""
    if exc.status == 404:
        return NotFound("404 page not found")
    if exc.status == 405:
        return MethodNotAllowed("405 method not allowed")
    if exc.status == 413:
        return PayloadTooLarge(f"request body too large: {exc.text}")
    return VllamaError(exc.text or exc.reason, status=exc.status)


def payload_problem(exc: BaseException) -> str:
    """What aiohttp's parser said about a body, without its status prefix."""
    cause = exc.__cause__
    if isinstance(cause, HttpProcessingError):
        return cause.message.strip()
    return str(exc).strip()


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response carries, streamed ones included (set before the first byte)."""
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["X-Request-Id"] = rid
    upstream = request.get(UPSTREAM)  # which member of a model's group answered
    if upstream:
        response.headers["X-Vllama-Upstream"] = upstream
    origin = request.headers.get("Origin")
    if origin and request.get(CORS_OK):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id"


@web.middleware
async def edges(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    # 32 random hex digits, like uuid4().hex without building a UUID or asking the kernel
    # (an id to find a request by, not a secret)
    rid = incoming if incoming and _RID_OK.match(incoming) else f"{_bits(128):032x}"
    request[REQUEST_ID] = rid
    token = log.request_id.set(rid)
    services = request.app[SERVICES]
    metrics = request.app[METRICS]
    metrics.in_flight += 1
    status = 500
    try:
        response = await _mapped(request, handler, services.config)
        status = response.status
        return response
    finally:
        metrics.in_flight -= 1
        elapsed = time.perf_counter() - started
        status = request.get(FINAL_STATUS, status)
        route = _route_name(request)
        model = request.get(MODEL, "")
        metrics.request_done(route, request.method, status, model, elapsed)
        prompt, completion = request.get(TOKENS, (0, 0))
        if prompt or completion:
            metrics.count_tokens(model, prompt, completion)
        # The level is checked first so a filtered access log costs nothing per request
        # (not even building its fields). The path is logged as sent (still percent-encoded),
        # so what a client put there cannot become a line break in the log.
        if route not in QUIET_ROUTES and access.isEnabledFor(logging.INFO):
            access.info(
                "%s %s %d %.1fms", request.method, request.rel_url.raw_path, status,
                elapsed * 1000,
                extra={"component": "gateway", "status": status, "model": model,
                       "latency_ms": round(elapsed * 1000, 1), "prompt_tokens": prompt,
                       "completion_tokens": completion},
            )
        log.request_id.reset(token)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def _preflight() -> web.Response:
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "43200",
    })


def authorized(request: web.BaseRequest, key: str) -> bool:
    """Whether the request carries the API key (always, when none is set)."""
    if not key:
        return True
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    # A header that is not UTF-8 arrives with surrogates (aiohttp's surrogateescape):
    # surrogatepass turns any str into bytes, so such a header is just a wrong key.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), key.encode())


async def _mapped(request: web.Request, handler: Handler, config: Config) -> web.StreamResponse:
    try:
        origin = request.headers.get("Origin", "")
        request[CORS_OK] = guard.check(config, request.headers.get("Host", ""), origin)
        if request.method == "OPTIONS" and request[CORS_OK]:
            return _preflight()
        if request.path not in OPEN_PATHS and not authorized(request, config.api_key):
            raise Unauthorized("unauthorized: send the API key as 'Authorization: Bearer <key>'")
        return await handler(request)
    except VllamaError as exc:
        return error_response(request, exc.status, exc.message, exc.headers)
    except web.RequestPayloadError as exc:  # a body aiohttp cannot decode (gzip, chunks)
        bad = BadRequest(f"invalid request body: {payload_problem(exc)}")
        return error_response(request, bad.status, bad.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = as_error(exc)
        return error_response(request, error.status, error.message)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception as exc:
        logger.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        return error_response(request, 500, f"internal error: {exc}")
