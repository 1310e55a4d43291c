"""Who may call the gateway, as Ollama decides it: the Origin check against cross-site requests
(gin-contrib/cors: every request from an origin not allowed is refused, not only preflights)
and the Host check against DNS rebinding (Ollama's allowed-hosts middleware: while bound to a
loopback address, only local names reach the gateway)."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import socket

from vllama.config import Config
from vllama.errors import Forbidden

# Ollama's defaults (gin-contrib/cors with wildcards): local hosts on any port and app schemes.
DEFAULT_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)
# Names no outside DNS answers for, so a rebinding page cannot carry them.
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# The answers are cached: every request asks (parsing an address or matching a dozen patterns
# each time was a measurable share of a request's CPU), and clients send few distinct values;
# a client that sends many only evicts its own.
_cached = functools.lru_cache(maxsize=1024)


@_cached
def origin_allowed(origin: str, extra: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(origin, pattern) for pattern in (*DEFAULT_ORIGINS, *extra))


def same_origin(origin: str, host_header: str) -> bool:
    """A page served by this very host (gin-contrib/cors does not treat it as cross-site)."""
    return origin in (f"http://{host_header}", f"https://{host_header}")


@_cached
def bound_to_loopback(bind: str) -> bool:
    if not bind or bind.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name or address in a Host header, without the port, brackets or a final dot."""
    value = host_header.strip()
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".").lower()


@_cached
def host_allowed(host_header: str, extra: tuple[str, ...]) -> bool:
    name = host_name(host_header)
    if not name or name == "localhost" or name.endswith(_LOCAL_SUFFIXES):
        return True
    if any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in extra):
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return name == socket.gethostname().lower()
    return addr.is_loopback or addr.is_private or addr.is_unspecified


def check(config: Config, host_header: str, origin: str) -> bool:
    """Raise Forbidden for a caller the gateway does not serve. Returns whether the response
    carries CORS headers (a cross-site origin that is allowed)."""
    if bound_to_loopback(config.host) and not host_allowed(host_header, config.allowed_hosts):
        raise Forbidden(
            f"host {host_name(host_header)!r} is not allowed: while bound to {config.host} "
            "the gateway answers only local names (DNS-rebinding guard); add it to "
            "allowed_hosts (VLLAMA_ALLOWED_HOSTS)")
    if not origin or same_origin(origin, host_header):
        return False
    if not origin_allowed(origin, config.cors_origins):
        raise Forbidden(f"origin {origin!r} is not allowed; add it to cors_origins "
                        "(VLLAMA_CORS_ORIGINS or OLLAMA_ORIGINS)")
    return True
