"""The error tree: every failure vllama reports knows its HTTP status, its Ollama text and,
for the CLI, its exit code. Responses are built from these in exactly one place
(``vllama.gateway.middleware``); nothing else formats an error body."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Exit codes of the `vllama` command. 78 is EX_CONFIG from sysexits.h, which the systemd unit
# lists in RestartPreventExitStatus= so a bad config is not restart-looped.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the daemon or an upstream cannot be reached
EXIT_CONFIG = 78  # EX_CONFIG


class VllamaError(Exception):
    """Base of every error vllama raises on purpose.

    ``status`` is the HTTP status for the gateway, ``message`` the exact text clients see
    (Ollama's text where Ollama defines one), ``exit_code`` what the CLI exits with.
    """

    status: int = 500
    exit_code: int = EXIT_FAILURE
    # Response headers the error carries (Retry-After for a 503 a client should retry).
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class ConfigError(VllamaError):
    """Bad configuration: names the key, the value and what was expected, or the file."""

    status = 500
    exit_code = EXIT_CONFIG


class BadRequest(VllamaError):
    status = 400
    exit_code = EXIT_USAGE


class Unauthorized(VllamaError):
    status = 401


class Forbidden(VllamaError):
    """A caller the gateway does not serve: a cross-site Origin, a Host that is not this one."""

    status = 403


class NotFound(VllamaError):
    status = 404
    exit_code = EXIT_NOT_FOUND


class MethodNotAllowed(VllamaError):
    status = 405


class RequestTimeout(VllamaError, TimeoutError):
    """A client too slow to send its request. A TimeoutError too, so aiohttp's lingering
    read of an unread body treats it as the timeout it is and just closes the connection."""

    status = 408


class PayloadTooLarge(VllamaError):
    status = 413


class Unavailable(VllamaError):
    """The engine serving a model is not ready (loading, restarting, failed): 503 with why."""

    status = 503
    exit_code = EXIT_UNAVAILABLE


class ServerBusy(Unavailable):
    """Too many requests wait for models to load (Ollama's `server busy` 503)."""

    headers = MappingProxyType({"Retry-After": "10"})


class UpstreamError(VllamaError):
    """The upstream (vLLM or an external OpenAI server) failed; status passed through where
    it carries one, 502 when it could not be reached at all."""

    status = 502
    exit_code = EXIT_UNAVAILABLE


class EngineDied(UpstreamError):
    """The engine exited while a request was in flight."""

    status = 500
