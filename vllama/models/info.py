"""What a model directory says about itself: Ollama `details`, `/api/show`'s model_info,
template, parameters, license and capabilities, read from config.json, tokenizer_config.json,
generation_config.json, safetensors headers, LICENSE and README front matter."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from vllama.wire.ollama import ModelDetails

MAX_HEADER = 100 * 1024 * 1024  # safetensors headers are small; refuse absurd lengths


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs keep the language model's sizes under text_config."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber: 7.6B, 494.03M, 22M, 1K."""
    for div, unit, decimals in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= div:
            value = n / div
            if value == math.floor(value):
                return f"{value:.0f}{unit}"
            return f"{value:.{decimals}f}{unit}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def safetensors_parameters(model_dir: Path) -> int:
    """Sum of tensor element counts from the safetensors headers (only the headers are read)."""
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        try:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > MAX_HEADER:
                    continue
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            continue
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict):
                total += math.prod(entry.get("shape") or [1])
    return total


def estimate_parameters(config: dict[str, Any]) -> int:
    """A decoder's parameter count from its sizes, when there are no safetensors headers."""
    cfg = text_config(config)
    try:
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        vocab = int(cfg.get("vocab_size", 0))
        inter = int(cfg.get("intermediate_size", 4 * hidden))
    except (KeyError, TypeError, ValueError):
        return 0
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings


_DTYPES = {"bfloat16": "BF16", "float16": "F16", "half": "F16", "float32": "F32",
           "float": "F32", "float8_e4m3fn": "FP8"}


def quantization_level(config: dict[str, Any]) -> str:
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        method = str(quant.get("quant_method", "")).upper()
        bits = quant.get("bits") or quant.get("w_bit")
        if method and bits:
            return f"{method}-INT{bits}"
        if method:
            return method
    dtype = config.get("torch_dtype") or config.get("dtype") or text_config(config).get(
        "torch_dtype")
    return _DTYPES.get(str(dtype).lower(), str(dtype).upper() if dtype else "")


def parameter_count(model_dir: Path, config: dict[str, Any]) -> int:
    return safetensors_parameters(model_dir) or estimate_parameters(config)


def details(model_dir: Path) -> ModelDetails:
    config = read_json(model_dir / "config.json")
    family = str(config.get("model_type", ""))
    count = parameter_count(model_dir, config)
    return ModelDetails(
        family=family,
        families=[family] if family else None,
        parameter_size=human_number(count) if count else "",
        quantization_level=quantization_level(config),
    )


def is_embedding(model_dir: Path, config: dict[str, Any]) -> bool:
    archs = [str(a) for a in config.get("architectures") or []]
    generative = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
    if any(a.endswith(generative) for a in archs):
        return False
    if any((model_dir / n).is_file() for n in ("modules.json", "sentence_bert_config.json")):
        return True
    return any(a.endswith(("Model", "ForMaskedLM")) for a in archs)


def chat_template(model_dir: Path) -> str:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    for source in (model_dir / "chat_template.json", model_dir / "tokenizer_config.json"):
        template = read_json(source).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            for item in template:
                if isinstance(item, dict) and item.get("name") == "default":
                    return str(item.get("template", ""))
    return ""


def capabilities(model_dir: Path, config: dict[str, Any], template: str) -> list[str]:
    if is_embedding(model_dir, config):
        return ["embedding"]
    caps = ["completion"]
    if "tools" in template:
        caps.append("tools")
    if "<think>" in template or "enable_thinking" in template:
        caps.append("thinking")
    if "vision_config" in config:
        caps.append("vision")
    return caps


# generation_config.json key -> Ollama Modelfile parameter
_GENERATION_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                      "min_p": "min_p", "repetition_penalty": "repeat_penalty",
                      "presence_penalty": "presence_penalty",
                      "frequency_penalty": "frequency_penalty", "max_new_tokens": "num_predict",
                      "seed": "seed"}


def generation_defaults(model_dir: Path) -> dict[str, Any]:
    gen = read_json(model_dir / "generation_config.json")
    if gen.get("do_sample") is False:
        gen = {k: v for k, v in gen.items() if k not in ("temperature", "top_p", "top_k")}
    return {ours: gen[theirs] for theirs, ours in _GENERATION_PARAMS.items()
            if isinstance(gen.get(theirs), (int, float)) and not isinstance(gen[theirs], bool)}


def _go_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parameters_text(params: dict[str, Any]) -> str:
    """Ollama's `parameters`: key padded to 30 columns, a space, the Go-syntax value; a list
    (e.g. several `stop` strings) gives one line per value."""
    lines: list[str] = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {_go_value(item)}")
    return "\n".join(lines)


def license_text(model_dir: Path) -> str:
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE"):
        path = model_dir / name
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    readme = model_dir / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
            for line in front.splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "license" and value.strip():
                    return value.strip()
    return ""


def model_info(model_dir: Path, basename: str) -> dict[str, Any]:
    config = read_json(model_dir / "config.json")
    cfg = text_config(config)
    arch = str(config.get("model_type") or "vllm")
    info: dict[str, Any] = {"general.architecture": arch, "general.basename": basename}
    count = parameter_count(model_dir, config)
    if count:
        info["general.parameter_count"] = count
    keys = {
        "context_length": ("max_position_embeddings", "n_positions", "max_seq_len",
                           "seq_length"),
        "embedding_length": ("hidden_size", "d_model", "n_embd"),
        "block_count": ("num_hidden_layers", "n_layer", "num_layers"),
        "feed_forward_length": ("intermediate_size",),
        "attention.head_count": ("num_attention_heads", "n_head"),
        "attention.head_count_kv": ("num_key_value_heads",),
        "vocab_size": ("vocab_size",),
    }
    for ours, theirs in keys.items():
        for key in theirs:
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                info[f"{arch}.{ours}"] = value
                break
    return info
