"""What vllama knows about a model: the facts its files state (config.json, the chat template,
safetensors headers, generation_config.json, LICENSE / README front matter) and the Ollama
shapes built from them (`details`, `model_info`, capabilities, `parameters`).

`read_files` is the only reader of a model directory's metadata and never raises: a file that
is missing or malformed leaves its fact empty. Everything else here is pure, so /api/tags,
/api/show, /api/ps, `vllama show` and the engines' flags all say the same thing about a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vllama.config import ModelConfig
from vllama.models.weights import config_int, read_weights, text_config
from vllama.translate.gojson import go_value
from vllama.translate.request import ModelCaps
from vllama.vllm_flags import flag_value, int_value
from vllama.wire.ollama import ModelDetails

CAPABILITY_NAMES = ("completion", "embedding", "tools", "thinking", "vision", "insert")


@dataclass(frozen=True)
class ModelFiles:
    """What a model directory says about itself, read once (`read_files`)."""

    directory: Path | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    template: str = ""
    parameter_count: int = 0
    # "headers": summed from the safetensors headers (logical parameters: packed quantized
    # weights count what they pack); "estimate": from config.json's sizes.
    parameters_from: Literal["headers", "estimate", "none"] = "none"
    generation: Mapping[str, Any] = field(default_factory=dict)
    license: str = ""
    sentence_transformers: bool = False  # modules.json / sentence_bert_config.json present


NO_FILES = ModelFiles()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_files(directory: Path | None) -> ModelFiles:
    """Every fact a model directory states (the empty facts for None: a remote upstream)."""
    if directory is None:
        return NO_FILES
    config = read_json(directory / "config.json")
    weights = read_weights(directory, config)
    return ModelFiles(
        directory=directory, config=config, template=chat_template(directory),
        parameter_count=weights.parameters, parameters_from=weights.source,
        generation=generation_defaults(directory), license=license_text(directory),
        sentence_transformers=any((directory / n).is_file()
                                  for n in ("modules.json", "sentence_bert_config.json")))


# ----------------------------------------------------------------------------- config.json


def architecture(config: Mapping[str, Any]) -> str:
    """The family Ollama shows: config.json's model_type ("vllm" when there is no config,
    e.g. a remote upstream)."""
    mt = config.get("model_type")
    return mt if isinstance(mt, str) and mt else "vllm"


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber, as in details.parameter_size ("7.6B", "494.03M", "22M")."""
    for div, unit, decimals in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= div:
            value = n / div
            if value == math.floor(value):
                return f"{value:.0f}{unit}"
            return f"{value:.{decimals}f}{unit}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


_DTYPES = {"bfloat16": "BF16", "float16": "F16", "half": "F16", "float32": "F32",
           "float": "F32", "float8_e4m3fn": "FP8"}


def quantization_level(config: Mapping[str, Any]) -> str:
    """`AWQ-INT4`, `GPTQ-INT8`, `FP8`, or the weights' dtype (`BF16`, `F32`)."""
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method", "")).upper()
        bits = quant.get("bits") or quant.get("w_bit")
        if method and bits:
            return f"{method}-INT{bits}"
        if method:
            return method
    dtype = config.get("torch_dtype") or config.get("dtype") or text_config(config).get(
        "torch_dtype")
    return _DTYPES.get(str(dtype).lower(), str(dtype).upper() if dtype else "")


def native_context_length(config: Mapping[str, Any]) -> int:
    cfg = text_config(config)
    return config_int(cfg, "max_position_embeddings", "n_positions", "max_seq_len",
                "seq_length") or 0


def context_length(files: ModelFiles, engine_args: Sequence[str]) -> int:
    """The context the engine runs with: --max-model-len if given (`8k`, `8K` as vLLM reads
    them), else the model's own."""
    return int_value(engine_args, "--max-model-len") or native_context_length(files.config)


# ----------------------------------------------------------------------------- other files


def chat_template(model_dir: Path) -> str:
    """The model's chat template: chat_template.jinja, else chat_template.json or
    tokenizer_config.json (the default one of named templates)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
    for source in (model_dir / "chat_template.json", model_dir / "tokenizer_config.json"):
        template = read_json(source).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            for item in template:
                if isinstance(item, dict) and item.get("name") == "default":
                    return str(item.get("template", ""))
    return ""


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


def license_text(model_dir: Path) -> str:
    """A LICENSE file's text, else the `license:` of the README's front matter."""
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        try:
            return (model_dir / name).read_text(encoding="utf-8", errors="replace")[:100_000]
        except OSError:
            continue
    try:
        readme = (model_dir / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if readme.startswith("---"):
        for line in readme.split("---", 2)[1].splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "license" and value.strip():
                return value.strip()
    return ""


# ----------------------------------------------------------------------------- the engine


def engine_args(model: ModelConfig, common_args: Sequence[str]) -> tuple[str, ...]:
    """The `vllm serve` arguments a model's engine runs with beyond vllama's tuned defaults:
    the config's global vllm_args, then the model's own (so they win)."""
    return (*common_args, *model.vllm_args)


def is_embedding(files: ModelFiles, args: Sequence[str]) -> bool:
    """The pooling runner: asked for by flag, else recognised from the architecture."""
    runner = flag_value(args, "--runner")
    convert = flag_value(args, "--convert")
    if runner == "pooling" or convert in ("embed", "classify"):
        return True
    if runner == "generate":
        return False
    archs = [str(a) for a in files.config.get("architectures") or []]
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel"))
           for a in archs):
        return False
    if files.sentence_transformers:
        return True
    if files.config.get("model_type") in ("bert", "nomic_bert", "xlm-roberta"):
        return True
    return any(a.endswith(("Model", "ForMaskedLM")) for a in archs)


def capabilities(files: ModelFiles, model: ModelConfig, args: Sequence[str]) -> ModelCaps:
    """Ollama capabilities as the engine really runs: tools need vLLM's auto tool choice
    (with which vLLM requires a parser), thinking a reasoning parser (a wrong `thinking` breaks
    every `ollama run` chat), embedding the pooling runner. Capabilities set in the config
    win."""
    if model.capabilities:
        wanted = set(model.capabilities)
    elif is_embedding(files, args):
        wanted = {"embedding"}
    else:
        wanted = {"completion"}
        if flag_value(args, "--enable-auto-tool-choice") is not None:
            wanted.add("tools")
        if flag_value(args, "--reasoning-parser"):
            wanted.add("thinking")
        archs = " ".join(str(a) for a in files.config.get("architectures") or [])
        if "vision_config" in files.config or "ForConditionalGeneration" in archs:
            wanted.add("vision")
        if model.fim_template:
            wanted.add("insert")
    return ModelCaps(completion="completion" in wanted, embedding="embedding" in wanted,
                     tools="tools" in wanted, thinking="thinking" in wanted,
                     vision="vision" in wanted,
                     insert_template=(model.fim_template or None) if "insert" in wanted
                     else None)


# ----------------------------------------------------------------------------- Ollama shapes


def details(files: ModelFiles, context: int | None = None) -> ModelDetails:
    """`details` for tags/ps/show."""
    arch = architecture(files.config)
    count = files.parameter_count
    out = ModelDetails(format="safetensors", family=arch, families=[arch],
                       parameter_size=human_number(count) if count else "",
                       quantization_level=quantization_level(files.config))
    if context:
        out.context_length = context
    hidden = config_int(text_config(files.config), "hidden_size", "n_embd", "d_model")
    if hidden:
        out.embedding_length = hidden
    return out


def model_info(files: ModelFiles, context: int | None, *, basename: str | None = None
               ) -> dict[str, Any]:
    """/api/show `model_info` (GGUF-style keys) from config.json."""
    arch = architecture(files.config)
    cfg = text_config(files.config)
    info: dict[str, Any] = {"general.architecture": arch}
    if basename:
        info["general.basename"] = basename
    if files.parameter_count:
        info["general.parameter_count"] = files.parameter_count
    if context:
        info[f"{arch}.context_length"] = context
    for key, names in (
        ("embedding_length", ("hidden_size", "n_embd", "d_model")),
        ("block_count", ("num_hidden_layers", "n_layer", "num_layers")),
        ("attention.head_count", ("num_attention_heads", "n_head")),
        ("attention.head_count_kv", ("num_key_value_heads",)),
        ("feed_forward_length", ("intermediate_size", "n_inner")),
        ("vocab_size", ("vocab_size",)),
    ):
        v = config_int(cfg, *names)
        if v is not None:
            info[f"{arch}.{key}"] = v
    return info


def format_parameters(params: Mapping[str, Any]) -> str:
    """/api/show `parameters`: `%-30s %#v` per value, one line per element of a list."""
    lines = []
    for key, val in params.items():
        for v in val if isinstance(val, (list, tuple)) else (val,):
            lines.append(f"{key:<30} {go_value(v)}")
    return "\n".join(lines)
