"""Ollama's per-endpoint texts for model errors (reference §1.4, §3.4-3.6, §7), and vLLM's
errors in Ollama's words. Pure. Names themselves live in `vllama.models.names`."""

from __future__ import annotations

from typing import Literal

from vllama.errors import BadRequest, NotFound, VllamaError
from vllama.models.names import display_name, is_valid_name
from vllama.translate.gojson import go_quote

# ---------------------------------------------------------------------------------------------
# per-endpoint error texts (§7)

Endpoint = Literal[
    "generate", "chat", "embed", "embeddings", "show", "delete", "copy", "pull", "push", "create"
]


def model_required(endpoint: Endpoint) -> VllamaError:
    """Error for an empty model (note generate/embed's 404 vs chat's 400)."""
    if endpoint in ("generate", "embed"):
        return NotFound("model '' not found")
    if endpoint == "copy":
        return BadRequest('source "" is invalid')
    return BadRequest("model is required")


def invalid_name(endpoint: Endpoint, name: str, *, field: str = "source") -> VllamaError:
    """Error for a syntactically invalid name; for copy pass field="source"/"destination"."""
    if endpoint == "delete":
        return BadRequest(f"name {go_quote(name)} is invalid")
    if endpoint == "copy":
        return BadRequest(f"{field} {go_quote(name)} is invalid")
    return BadRequest("invalid model name")


PULL_NOT_FOUND = "pull model manifest: file does not exist"


def not_found(endpoint: Endpoint, name: str) -> VllamaError:
    """Unknown model, with each endpoint's quotes (name = the string the client sent)."""
    if endpoint in ("embed", "embeddings"):
        return NotFound(f"model {go_quote(name)} not found, try pulling it first")
    if endpoint == "show":
        return NotFound(f"model '{display_name(name)}' not found")
    if endpoint == "copy":
        return NotFound(f"model {go_quote(name)} not found")
    if endpoint in ("pull", "push", "create"):
        # the CLI matches this exact text; HTTP 500 when not streaming, like Ollama
        return VllamaError(PULL_NOT_FOUND, status=500)
    return NotFound(f"model '{name}' not found")


def name_error(endpoint: Endpoint, name: str) -> VllamaError:
    """The error for a name that resolved to nothing, in Ollama's order: empty, invalid,
    unknown."""
    if not name:
        return model_required(endpoint)
    if not is_valid_name(name):
        return invalid_name(endpoint, name)
    return not_found(endpoint, name)


# ---------------------------------------------------------------------------------------------
# other §7 texts

SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"  # 503
REQUEST_CANCELED = "request canceled"  # 499
PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten "
    "the prompt, adjust the context length in settings, or use a model with a longer context "
    "length"
)
INPUT_TOO_LONG = "the input length exceeds the context length"
# Ollama's text, except that it sends readers to vllama's logs, where the engine's last lines
# and its exit class are.
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check vllama logs for details"
)

_CONTEXT_MARKERS = (
    "maximum context length",
    "maximum model length",
    "max_model_len",
    "longer than the maximum",
    "context length",
    "too long",
)


def is_context_overflow(message: str) -> bool:
    """Does a vLLM 400 message say the prompt does not fit the context window?"""
    low = message.lower()
    return any(m in low for m in _CONTEXT_MARKERS)


def context_overflow(endpoint: Endpoint) -> VllamaError:
    """Ollama's 400 for a prompt/input that exceeds the context (vLLM's 400 mapped onto it)."""
    if endpoint in ("embed", "embeddings"):
        return BadRequest(INPUT_TOO_LONG)
    return BadRequest(PROMPT_TOO_LONG)


def map_upstream_error(exc: VllamaError, model: str, endpoint: Endpoint) -> VllamaError:
    """vLLM's error statuses and texts in Ollama's words where Ollama has words for them."""
    text = exc.message.lower()
    if exc.status == 404 and "does not exist" in text:
        return NotFound(f"model '{model}' not found")
    if exc.status == 404 and endpoint in ("embed", "embeddings") and "not found" in text:
        # vLLM has no embedding route on a generate engine.
        return BadRequest(f'"{model}" does not support embeddings')
    if exc.status == 400 and is_context_overflow(text):
        return context_overflow(endpoint)
    if exc.status == 400 and "tool" in text and ("auto" in text or "parser" in text):
        return BadRequest(f"{model} does not support tools")
    return exc
