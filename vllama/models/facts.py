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
from vllama.models import parsers
from vllama.models.parsers import EngineFeatures
from vllama.models.weights import WeightsInfo, config_int, read_weights, text_config
from vllama.translate.gojson import go_value
from vllama.translate.request import ModelCaps
from vllama.vllm_flags import flag_value, int_value
from vllama.wire.ollama import ModelDetails

CAPABILITY_NAMES = ("completion", "embedding", "tools", "thinking", "vision", "insert")
PARAMETER_COUNT_SOURCE = "general.parameter_count_source"


@dataclass(frozen=True)
class ModelFiles:
    """What a model directory says about itself, read once (`read_files`)."""

    directory: Path | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    template: str = ""
    # The weights as the safetensors headers state them (logical parameters: packed quantized
    # weights count what they pack), or as config.json's sizes estimate them without headers.
    weights: WeightsInfo = field(default_factory=lambda: WeightsInfo(0, 0))
    generation: Mapping[str, Any] = field(default_factory=dict)
    license: str = ""
    sentence_transformers: bool = False  # modules.json / sentence_bert_config.json present

    @property
    def parameter_count(self) -> int:
        return self.weights.parameters

    @property
    def parameters_from(self) -> Literal["headers", "estimate", "none"]:
        """"headers": counted from the safetensors headers; "estimate": from config.json."""
        return self.weights.source if self.weights.parameters else "none"


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
    return ModelFiles(
        directory=directory, config=config, template=chat_template(directory),
        weights=read_weights(directory, config), generation=generation_defaults(directory),
        license=license_text(directory),
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
# safetensors dtypes as Ollama-style quantization levels.
_HEADER_DTYPES = {"BF16": "BF16", "F16": "F16", "F32": "F32", "F64": "F64",
                  "F8_E4M3": "FP8", "F8_E5M2": "FP8"}


def quantization_level(config: Mapping[str, Any], weights: WeightsInfo | None = None) -> str:
    """`AWQ-INT4`, `GPTQ-INT8`, `FP8` as config.json declares the quantization, else the dtype
    the safetensors headers store most parameters in (`BF16`, `F32`), else config.json's."""
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method", "")).upper()
        bits = quant.get("bits") or quant.get("w_bit")
        if method and bits:
            return f"{method}-INT{bits}"
        if method:
            return method
    if weights is not None and weights.source == "headers" and weights.dtype in _HEADER_DTYPES:
        return _HEADER_DTYPES[weights.dtype]
    dtype = config.get("torch_dtype") or config.get("dtype") or text_config(config).get(
        "torch_dtype")
    return _DTYPES.get(str(dtype).lower(), str(dtype).upper() if dtype else "")


def native_context_length(config: Mapping[str, Any]) -> int:
    cfg = text_config(config)
    return config_int(cfg, "max_position_embeddings", "n_positions", "max_seq_len",
                "seq_length") or 0


def context_length(files: ModelFiles, engine_args: Sequence[str], declared: int = 0) -> int:
    """The context the engine runs with: --max-model-len if given (`8k`, `8K` as vLLM reads
    them), else the model's own; for a remote model without files, what its config entry
    declares (`context_length`)."""
    return (int_value(engine_args, "--max-model-len") or native_context_length(files.config)
            or declared)


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


def configured_args(model: ModelConfig, common_args: Sequence[str]) -> tuple[str, ...]:
    """The `vllm serve` arguments the config gives a model: the global vllm_args, then the
    model's own (so they win)."""
    return (*common_args, *model.vllm_args)


def engine_args(files: ModelFiles, model: ModelConfig, common_args: Sequence[str]
                ) -> tuple[str, ...]:
    """The arguments a model's engine runs with beyond vllama's tuned defaults and its
    placement: the configured ones, then the tool-call and reasoning parsers its chat template
    needs (`parsers`) where the configured ones do not decide them. The supervisor's argv, the
    scheduler's need and the capabilities clients see all come from here."""
    user = configured_args(model, common_args)
    if is_embedding(files, user):  # a pooling engine neither calls tools nor thinks
        return user
    return (*user, *parsers.feature_args(features(files, user), user))


def features(files: ModelFiles, args: Sequence[str]) -> EngineFeatures:
    """What the model's chat template needs of the engine (`--chat-template` in args wins
    over the model's own template)."""
    return parsers.detect_features(template_for(files, args), files.config)


def template_for(files: ModelFiles, args: Sequence[str]) -> str:
    """The chat template the engine renders with: `--chat-template`'s file (or inline text,
    which vLLM also accepts), else the model's own. Reads that one small file, never raises:
    an unreadable file means no template to detect from."""
    given = flag_value(args, "--chat-template")
    if not given:
        return files.template
    path = Path(given).expanduser()
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        # vLLM takes a value that is no file for the template itself when it has Jinja in it.
        return given if "{" in given else ""


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


# The chat-template switch for thinking when the template is unknown (a remote upstream):
# Qwen3's, the most common, and ignored by templates that do not read it.
DEFAULT_THINK_KWARG = "enable_thinking"


def capabilities(files: ModelFiles, model: ModelConfig, args: Sequence[str]) -> ModelCaps:
    """Ollama capabilities as an engine started with `args` (`engine_args`) really runs:
    tools need vLLM's auto tool choice and a tool-call parser, thinking a reasoning parser (a
    wrong `thinking` breaks every `ollama run` chat), embedding the pooling runner.
    Capabilities set in the config win."""
    if model.capabilities:
        wanted = set(model.capabilities)
    elif is_embedding(files, args):
        wanted = {"embedding"}
    else:
        wanted = {"completion"}
        tools, thinking = parsers.advertised(args)
        if tools:
            wanted.add("tools")
        if thinking:
            wanted.add("thinking")
        archs = " ".join(str(a) for a in files.config.get("architectures") or [])
        if "vision_config" in files.config or "ForConditionalGeneration" in archs:
            wanted.add("vision")
        if model.fim_template:
            wanted.add("insert")
    thinking = "thinking" in wanted
    return ModelCaps(completion="completion" in wanted, embedding="embedding" in wanted,
                     tools="tools" in wanted, thinking=thinking,
                     vision="vision" in wanted,
                     insert_template=(model.fim_template or None) if "insert" in wanted
                     else None,
                     think_kwarg=think_kwarg(files, args) if thinking else None)


def think_kwarg(files: ModelFiles, args: Sequence[str]) -> str | None:
    """The chat-template variable that switches the model's thinking on and off; None when
    its template has none (it always thinks), DEFAULT_THINK_KWARG when no template is known."""
    template = template_for(files, args)
    return parsers.think_kwarg(template) if template else DEFAULT_THINK_KWARG


# ----------------------------------------------------------------------------- Ollama shapes


def details(files: ModelFiles, context: int | None = None) -> ModelDetails:
    """`details` for tags/ps/show."""
    arch = architecture(files.config)
    count = files.parameter_count
    out = ModelDetails(format="safetensors", family=arch, families=[arch],
                       parameter_size=human_number(count) if count else "",
                       quantization_level=quantization_level(files.config, files.weights))
    if context:
        out.context_length = context
    hidden = config_int(text_config(files.config), "hidden_size", "n_embd", "d_model")
    if hidden:
        out.embedding_length = hidden
    return out


def model_size(files: ModelFiles, on_disk: int) -> int:
    """`size` as tags/ps show it: the weights' bytes as the safetensors headers state them
    (Ollama's size is its weights blob), else the bytes of the model's files on disk."""
    weights = files.weights
    return weights.stored_bytes if weights.source == "headers" and weights.stored_bytes else (
        on_disk)


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
        # Not a GGUF key (clients ignore unknown ones): "headers" when counted from the
        # safetensors headers, "estimate" when worked out from config.json's sizes.
        info[PARAMETER_COUNT_SOURCE] = files.parameters_from
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
