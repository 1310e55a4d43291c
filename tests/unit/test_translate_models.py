"""Per-endpoint error texts (reference §1.4, §3.4-3.6, §7) and vLLM errors in Ollama's words."""

from __future__ import annotations

from typing import Any

import pytest

from vllama.errors import NotFound, UpstreamError
from vllama.translate import (
    INPUT_TOO_LONG,
    PROMPT_TOO_LONG,
    PULL_NOT_FOUND,
    context_overflow,
    invalid_name,
    is_context_overflow,
    map_upstream_error,
    model_required,
    name_error,
    not_found,
)


@pytest.mark.parametrize(
    ("endpoint", "name", "cls", "message"),
    [
        ("generate", "nope", NotFound, "model 'nope' not found"),
        ("chat", "nope", NotFound, "model 'nope' not found"),
        ("delete", "nope", NotFound, "model 'nope' not found"),
        ("embed", "nope", NotFound, 'model "nope" not found, try pulling it first'),
        ("embeddings", "nope", NotFound, 'model "nope" not found, try pulling it first'),
        ("show", "foo", NotFound, "model 'foo:latest' not found"),
        ("copy", "src", NotFound, 'model "src" not found'),
    ],
)
def test_not_found(endpoint: Any, name: str, cls: type, message: str) -> None:
    err = not_found(endpoint, name)
    assert isinstance(err, cls) and err.message == message and err.status == 404


def test_pull_not_found() -> None:
    err = not_found("pull", "x")
    assert err.message == PULL_NOT_FOUND == "pull model manifest: file does not exist"
    assert err.status == 500


@pytest.mark.parametrize(
    ("endpoint", "status", "message"),
    [
        ("generate", 404, "model '' not found"), ("embed", 404, "model '' not found"),
        ("chat", 400, "model is required"), ("embeddings", 400, "model is required"),
        ("show", 400, "model is required"), ("delete", 400, "model is required"),
        ("pull", 400, "model is required"), ("push", 400, "model is required"),
        ("copy", 400, 'source "" is invalid'),
    ],
)
def test_model_required(endpoint: Any, status: int, message: str) -> None:
    err = model_required(endpoint)
    assert (err.status, err.message) == (status, message)


def test_name_error_in_ollamas_order() -> None:
    assert name_error("chat", "").message == "model is required"
    assert (name_error("generate", "").status, name_error("generate", "").message) == (
        404, "model '' not found")
    assert name_error("generate", "bad name").message == "invalid model name"
    assert name_error("delete", "a b").message == 'name "a b" is invalid'
    err = name_error("generate", "other")
    assert isinstance(err, NotFound) and err.message == "model 'other' not found"
    assert name_error("embed", "other").message == 'model "other" not found, try pulling it first'


@pytest.mark.parametrize(
    ("status", "message", "endpoint", "want_status", "want"),
    [
        (404, "The model `tiny` does not exist.", "chat", 404, "model 'm' not found"),
        (404, "Not Found", "embed", 400, '"m" does not support embeddings'),
        (404, "Not Found", "chat", 404, "Not Found"),
        (400, "This model's maximum context length is 2048 tokens. However, you requested "
         "3000 tokens.", "chat", 400, PROMPT_TOO_LONG),
        (400, "The decoder prompt (length 5000) is longer than the maximum model length of "
         "2048.", "embed", 400, INPUT_TOO_LONG),
        (400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
         "to be set", "chat", 400, "m does not support tools"),
        (400, "'max_tokens' must be at least 1", "generate", 400,
         "'max_tokens' must be at least 1"),
        (500, "engine dead", "generate", 500, "engine dead"),
    ],
)
def test_map_upstream_error(status: int, message: str, endpoint: Any, want_status: int,
                            want: str) -> None:
    err = map_upstream_error(UpstreamError(message, status=status), "m", endpoint)
    assert (err.status, err.message) == (want_status, want)


def test_invalid_name_texts() -> None:
    assert invalid_name("chat", "a b").message == "invalid model name"
    assert invalid_name("delete", "a b").message == 'name "a b" is invalid'
    assert invalid_name("copy", "a b", field="destination").message == (
        'destination "a b" is invalid')


@pytest.mark.parametrize(
    ("message", "overflow"),
    [
        ("This model's maximum context length is 2048 tokens. However, you requested 3000 "
         "tokens (2990 in the messages, 10 in the completion).", True),
        ("The decoder prompt (length 5000) is longer than the maximum model length of 2048.",
         True),
        ("'max_tokens' must be at least 1", False),
    ],
)
def test_context_overflow(message: str, overflow: bool) -> None:
    assert is_context_overflow(message) is overflow


def test_context_overflow_texts() -> None:
    assert context_overflow("chat").message == PROMPT_TOO_LONG
    assert context_overflow("generate").status == 400
    assert context_overflow("embed").message == INPUT_TOO_LONG
