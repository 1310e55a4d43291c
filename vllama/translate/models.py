"""Model names, listing helpers and the per-endpoint error texts (reference §1.4, §3.4-3.6,
§7). Pure: the gateway passes in what it knows about each model."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from vllama.errors import BadRequest, NotFound, VllamaError
from vllama.translate.gojson import go_quote, go_value
from vllama.wire.ollama import ModelDetails

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# ---------------------------------------------------------------------------------------------
# names

_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_NS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")


def split_tag(name: str) -> tuple[str, str]:
    """("repo/part", "tag"); the tag starts at the last ':' after the last '/'."""
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return name, ""


def parse_name(name: str) -> tuple[str, str, str, str]:
    """Ollama's ParseName: (host, namespace, model, tag) with defaults filled in. Empty parts
    that the user wrote (e.g. "a//b") become "!" so validation rejects them, like Go."""
    rest, tag = split_tag(name)
    if ":" in name and name.rfind(":") > name.rfind("/") and tag == "":
        tag = "!"
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    slash = rest.rfind("/")
    if slash < 0:
        model = rest
    else:
        model = rest[slash + 1 :] or "!"
        rest = rest[:slash] or "!"
        slash = rest.rfind("/")
        if slash < 0:
            namespace = rest
        else:
            namespace = rest[slash + 1 :] or "!"
            host = rest[:slash] or "!"
            if "://" in host:
                host = host.split("://", 1)[1]
    return host, namespace, model, tag or DEFAULT_TAG


def is_valid_name(name: str) -> bool:
    """Ollama's model-name validation (§1.4 table)."""
    if not name:
        return False
    host, ns, model, tag = parse_name(name)
    return bool(_MODEL_RE.fullmatch(model) and _MODEL_RE.fullmatch(tag)
                and _NS_RE.fullmatch(ns) and _HOST_RE.fullmatch(host))


def full_name(name: str) -> str:
    """`registry.ollama.ai/library/x:latest`, as in `... does not support insert`."""
    host, ns, model, tag = parse_name(name)
    return f"{host}/{ns}/{model}:{tag}"


def display_name(name: str) -> str:
    """Ollama's DisplayShortest: defaults for host and namespace dropped, tag always kept."""
    host, ns, model, tag = parse_name(name)
    if host != DEFAULT_HOST:
        return f"{host}/{ns}/{model}:{tag}"
    if ns != DEFAULT_NAMESPACE:
        return f"{ns}/{model}:{tag}"
    return f"{model}:{tag}"


def tag_name(model_id: str) -> str:
    """A served id as listed: `<id>:latest` unless it already has a tag."""
    return model_id if split_tag(model_id)[1] else f"{model_id}:{DEFAULT_TAG}"


def resolve_name(requested: str, known_names: Iterable[str]) -> str | None:
    """The known name a request means: exact, then without `:latest`, then case-insensitive
    (both sides compared in their tagged form)."""
    if not requested:
        return None
    known = list(known_names)
    if requested in known:
        return requested
    base, tag = split_tag(requested)
    if tag == DEFAULT_TAG and base in known:
        return base
    want = tag_name(requested).casefold()
    for k in known:
        if tag_name(k).casefold() == want:
            return k
    return None


def digest(key: str) -> str:
    """A stable 64-hex digest (the CLI slices [:12]); hash of e.g. the served id."""
    return hashlib.sha256(key.encode()).hexdigest()


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


def check_model_name(endpoint: Endpoint, name: str, known_names: Iterable[str]) -> str:
    """Empty / invalid / unknown checks in Ollama's order; returns the resolved known name.

    Validation is skipped for names that resolve (vLLM ids such as `org.x/Model` would fail
    Ollama's strict grammar, and must still work)."""
    if not name:
        raise model_required(endpoint)
    resolved = resolve_name(name, known_names)
    if resolved is not None:
        return resolved
    if not is_valid_name(name):
        raise invalid_name(endpoint, name)
    raise not_found(endpoint, name)


# ---------------------------------------------------------------------------------------------
# /api/show helpers


def format_parameters(params: Mapping[str, Any]) -> str:
    """/api/show `parameters`: `%-30s %#v` per value, one line per element of a list."""
    lines = []
    for key, val in params.items():
        for v in val if isinstance(val, (list, tuple)) else (val,):
            lines.append(f"{key:<30} {go_value(v)}")
    return "\n".join(lines)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    tc = config.get("text_config")
    return tc if isinstance(tc, Mapping) else config


def _int(cfg: Mapping[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def estimate_parameter_count(config: Mapping[str, Any]) -> int | None:
    """Parameters of a llama-style decoder from config.json, or None when it cannot tell.
    (An estimate: the exact count comes from the safetensors index when the caller has it.)"""
    cfg = _text_config(config)
    h = _int(cfg, "hidden_size", "n_embd", "d_model")
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(cfg, "vocab_size")
    inter = _int(cfg, "intermediate_size", "n_inner", "ffn_dim")
    heads = _int(cfg, "num_attention_heads", "n_head")
    if None in (h, layers, vocab, inter, heads):
        return None
    assert h and layers and vocab and inter and heads
    kv = _int(cfg, "num_key_value_heads") or heads
    head_dim = _int(cfg, "head_dim") or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    experts = _int(cfg, "num_local_experts", "num_experts", "n_routed_experts") or 0
    if experts:
        moe_inter = _int(cfg, "moe_intermediate_size") or inter
        mlp = experts * 3 * h * moe_inter + h * experts
        shared = _int(cfg, "n_shared_experts", "num_shared_experts") or 0
        mlp += shared * 3 * h * moe_inter
    else:
        mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", config.get("tie_word_embeddings"))
                         else 2)
    return layers * per_layer + embed + h


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber, as in details.parameter_size ("7.6B", "135M")."""
    if n >= 1_000_000_000:
        x = n / 1_000_000_000
        return f"{x:.0f}B" if x == int(x) else f"{x:.1f}B"
    if n >= 1_000_000:
        x = n / 1_000_000
        return f"{x:.0f}M" if x == int(x) else f"{x:.2f}M"
    if n >= 1_000:
        return f"{n / 1000:.0f}K"
    return str(n)


def architecture(config: Mapping[str, Any]) -> str:
    mt = config.get("model_type")
    return mt if isinstance(mt, str) and mt else "vllm"


def model_info_from_config(config: Mapping[str, Any], max_model_len: int | None, *,
                           basename: str | None = None,
                           parameter_count: int | None = None) -> dict[str, Any]:
    """/api/show `model_info` from an HF config.json (GGUF-style keys)."""
    arch = architecture(config)
    cfg = _text_config(config)
    info: dict[str, Any] = {"general.architecture": arch}
    if basename:
        info["general.basename"] = basename
    count = parameter_count if parameter_count is not None else estimate_parameter_count(config)
    if count:
        info["general.parameter_count"] = count
    if max_model_len:
        info[f"{arch}.context_length"] = max_model_len
    for key, names in (
        ("embedding_length", ("hidden_size", "n_embd", "d_model")),
        ("block_count", ("num_hidden_layers", "n_layer", "num_layers")),
        ("attention.head_count", ("num_attention_heads", "n_head")),
        ("attention.head_count_kv", ("num_key_value_heads",)),
        ("feed_forward_length", ("intermediate_size", "n_inner")),
        ("vocab_size", ("vocab_size",)),
    ):
        v = _int(cfg, *names)
        if v is not None:
            info[f"{arch}.{key}"] = v
    return info


_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "half": "F16",
           "float": "F32", "float8_e4m3fn": "FP8"}


def quantization_level(config: Mapping[str, Any]) -> str:
    q = config.get("quantization_config")
    if isinstance(q, Mapping):
        method = q.get("quant_method")
        if isinstance(method, str) and method:
            bits = q.get("bits")
            return f"{method.upper()}{'-' + str(bits) + 'BIT' if bits else ''}"
    dtype = config.get("torch_dtype") or config.get("dtype") or _text_config(config).get(
        "torch_dtype")
    if isinstance(dtype, str):
        return _DTYPES.get(dtype, dtype.upper())
    return ""


def details_from_config(config: Mapping[str, Any], *, max_model_len: int | None = None,
                        parameter_count: int | None = None) -> ModelDetails:
    """`details` for tags/ps/show from an HF config.json (empty config -> family "vllm")."""
    arch = architecture(config)
    count = parameter_count if parameter_count is not None else estimate_parameter_count(config)
    details = ModelDetails(
        format="safetensors",
        family=arch,
        families=[arch],
        parameter_size=human_number(count) if count else "",
        quantization_level=quantization_level(config),
    )
    if max_model_len:
        details.context_length = max_model_len
    h = _int(_text_config(config), "hidden_size", "n_embd", "d_model")
    if h:
        details.embedding_length = h
    return details


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
