"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tiers_required() -> bool:
    """In CI a tier that cannot run must fail, not skip (CI=true or VLLAMA_REQUIRE_TIERS=1)."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "VLLAMA_REQUIRE_TIERS") == "1"


def skip_or_fail(reason: str) -> None:
    if tiers_required():
        pytest.fail(f"required tier cannot run: {reason}", pytrace=False)
    pytest.skip(reason)
