"""What a checkpoint's weights are: logical parameters, stored bytes and dtype, read from the
safetensors headers only (an 8-byte length and a JSON header per file; never the tensors).

The pure core, `summarize`, takes tensor descriptions from anywhere: `read_weights` feeds it
the headers of a local directory; huggingface_hub's `get_safetensors_metadata` gives the same
(dtype, shape, data offsets) for a hub repo without a download. A bad file never raises:
what could not be read is skipped and named in `problems`, so one malformed model can never
fail a listing (issue 12 item 15). Without any header, `estimate_parameters` works from
config.json and `source` says "estimate".
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

MAX_HEADER_BYTES: Final = 100 * 1024 * 1024  # real headers are kilobytes; refuse absurd ones
INDEX_NAME: Final = "model.safetensors.index.json"

# safetensors dtypes and their width in bits (sub-byte float formats are packed).
DTYPE_BITS: Final[Mapping[str, int]] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# Tensors the engine casts to its --dtype on load (an F32 checkpoint runs in BF16 on a GPU).
FLOAT_DTYPES: Final = frozenset({"F16", "BF16", "F32", "F64"})
_INTEGER_DTYPES: Final = frozenset({"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64",
                                    "U64"})

# Tensors that hold several low-bit values per stored element.
_PACKED_SUFFIXES: Final = (".qweight", ".weight_packed", "_blocks")
# Quantization side data (zero points, scales, group indexes, bnb state): stored, but not
# parameters of the model. Only applied to quantized checkpoints, where these names are
# unambiguous.
_QUANT_METADATA_SUFFIXES: Final = (
    ".qzeros", ".scales", ".g_idx", "_scales",
    ".weight_scale", ".weight_scale_inv", ".weight_scale_2", ".weight_zero_point",
    ".weight_g_idx", ".weight_shape", ".weight_global_scale",
    ".input_scale", ".input_global_scale", ".output_scale",
    ".k_scale", ".v_scale", ".q_scale", ".kv_scale",
    ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format",
)


class TensorMeta(msgspec.Struct, frozen=True):
    """One tensor as a header describes it."""

    name: str
    dtype: str  # safetensors spelling: "BF16", "F8_E4M3", "I32", ...
    shape: tuple[int, ...]
    nbytes: int | None = None  # from data_offsets, when known


class WeightsInfo(msgspec.Struct, frozen=True):
    """What a model's weights amount to.

    `parameters` counts logical parameters: a GPTQ/AWQ int32 `qweight` counts the 32/bits
    values it packs, an FP8 element counts one, and buffers (int64 `position_ids`) and
    quantization side data (zero points, scales, `g_idx`) count none, so a GPTQ Llama-3.1-8B
    says 8.0B as the original does. `stored_bytes` counts every tensor as stored.
    `float_elements`/`float_bytes` are the F16/BF16/F32/F64 part, which the engine casts to
    its own dtype when it loads (memory.weight_bytes uses them).
    """

    parameters: int
    stored_bytes: int
    float_elements: int = 0
    float_bytes: int = 0
    dtype: str = ""  # the dtype holding the most parameters, e.g. "BF16"; "I32" for GPTQ
    source: Literal["headers", "estimate", "none"] = "none"
    problems: tuple[str, ...] = ()


# --- config.json helpers ----------------------------------------------------------------------


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs keep the language model's sizes under `text_config`; its keys win
    over the top level's."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, Mapping) else config


def config_int(cfg: Mapping[str, Any], *keys: str) -> int | None:
    """The first of `keys` that holds a positive integer (bools are not integers here)."""
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


_CONFIG_DTYPES: Final[Mapping[str, str]] = {
    "bfloat16": "BF16", "float16": "F16", "half": "F16", "float32": "F32", "float": "F32",
    "float64": "F64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def config_dtype(config: Mapping[str, Any]) -> str:
    """The checkpoint's dtype as config.json states it ("BF16"), or ""."""
    for cfg in (config, text_config(config)):
        for key in ("torch_dtype", "dtype"):
            value = cfg.get(key)
            if isinstance(value, str):
                return _CONFIG_DTYPES.get(value.lower().removeprefix("torch."), "")
    return ""


# --- quantization -----------------------------------------------------------------------------


class Quantization(msgspec.Struct, frozen=True):
    method: str  # "gptq", "awq", "fp8", "bitsandbytes", "compressed-tensors", ... or ""
    bits: int | None  # weight bits, when the config says


def quantization(config: Mapping[str, Any]) -> Quantization:
    """The weight quantization config.json declares (`quantization_config`)."""
    quant = config.get("quantization_config")
    if not isinstance(quant, Mapping):
        return Quantization("", None)
    method = str(quant.get("quant_method") or "").lower()
    bits = config_int(quant, "bits", "w_bit", "weight_bits", "num_bits")
    groups = quant.get("config_groups")
    if bits is None and isinstance(groups, Mapping):  # compressed-tensors
        for group in groups.values():
            weights = group.get("weights") if isinstance(group, Mapping) else None
            if isinstance(weights, Mapping) and (bits := config_int(weights, "num_bits")):
                break
    if bits is None:
        algo = str(quant.get("quant_algo") or "").upper()
        if quant.get("load_in_4bit") is True or method == "mxfp4" or "FP4" in algo or (
                "INT4" in algo):
            bits = 4
        elif quant.get("load_in_8bit") is True or method == "fp8" or "FP8" in algo:
            bits = 8
    return Quantization(method or "unknown", bits)


def _logical(tensor: TensorMeta, elements: int, quant: Quantization, quantized: bool) -> int:
    """How many model parameters one tensor holds."""
    name = tensor.name
    if quantized and name.endswith(_QUANT_METADATA_SUFFIXES):
        return 0
    if tensor.dtype not in _INTEGER_DTYPES:
        return elements  # floats, FP8, FP4: one parameter per element
    packed = name.endswith(_PACKED_SUFFIXES) or (quantized and name.endswith(".weight"))
    if not packed:
        return 0  # an integer buffer (position_ids, token_type_ids), not a parameter
    stored_bits = DTYPE_BITS[tensor.dtype]
    # A packed tensor with no declared width is GPTQ/AWQ's common 4-bit.
    bits = quant.bits or (4 if name.endswith(_PACKED_SUFFIXES) else stored_bits)
    return elements * stored_bits // bits if bits < stored_bits else elements


# --- the pure core ----------------------------------------------------------------------------


def summarize(tensors: Iterable[TensorMeta], config: Mapping[str, Any], *,
              problems: Sequence[str] = (), complete: bool = True) -> WeightsInfo:
    """Weights from tensor descriptions. `problems` are carried into the result;
    `complete=False` says some files could not be read, so the header total is partial and
    the config estimate is preferred when there is one."""
    items = list(tensors)
    notes = list(problems)
    quant = quantization(config)
    quantized = bool(quant.method) or any(t.name.endswith(_PACKED_SUFFIXES) for t in items)
    parameters = stored = float_elements = float_bytes = 0
    by_dtype: Counter[str] = Counter()
    seen: set[str] = set()
    for tensor in items:
        if tensor.name in seen:
            notes.append(f"tensor {tensor.name!r} appears twice; counted once")
            continue
        seen.add(tensor.name)
        elements = math.prod(tensor.shape)
        bits = DTYPE_BITS.get(tensor.dtype)
        expected = None if bits is None else (elements * bits + 7) // 8
        if expected is None and tensor.nbytes is None:
            notes.append(f"tensor {tensor.name!r}: unknown dtype {tensor.dtype!r}; skipped")
            continue
        if expected is not None and tensor.nbytes is not None and tensor.nbytes != expected:
            notes.append(f"tensor {tensor.name!r}: {tensor.nbytes} bytes stored, but "
                         f"{tensor.dtype} x {list(tensor.shape)} is {expected}; skipped")
            continue
        size = tensor.nbytes if tensor.nbytes is not None else expected
        assert size is not None
        count = _logical(tensor, elements, quant, quantized) if bits else elements
        stored += size
        parameters += count
        by_dtype[tensor.dtype] += count
        if tensor.dtype in FLOAT_DTYPES:
            float_elements += elements
            float_bytes += size
    if items and parameters and complete:
        return WeightsInfo(parameters, stored, float_elements, float_bytes,
                           _dominant(by_dtype), "headers", tuple(notes))
    estimate = estimate_weights(config)
    if estimate is not None:
        return msgspec.structs.replace(estimate, problems=tuple(notes))
    if parameters:  # partial headers beat nothing; problems say what is missing
        return WeightsInfo(parameters, stored, float_elements, float_bytes,
                           _dominant(by_dtype), "headers", tuple(notes))
    return WeightsInfo(0, 0, problems=tuple(notes))


def _dominant(by_dtype: Counter[str]) -> str:
    return by_dtype.most_common(1)[0][0] if by_dtype else ""


# --- headers ----------------------------------------------------------------------------------


def _shape(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        return None
    return tuple(value)


def tensors_from_header(header: object, source: str) -> tuple[list[TensorMeta], list[str]]:
    """Tensor descriptions from one decoded safetensors header; bad entries are skipped and
    reported (`source` names the file in the problem text)."""
    if not isinstance(header, dict):
        return [], [f"{source}: header is {type(header).__name__}, not an object"]
    out: list[TensorMeta] = []
    problems: list[str] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = _shape(entry.get("shape")) if isinstance(entry, dict) else None
        if not isinstance(dtype, str) or shape is None:
            problems.append(f"{source}: tensor {name!r} has no valid dtype and shape; skipped")
            continue
        offsets = entry.get("data_offsets")
        nbytes = None
        if (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            nbytes = offsets[1] - offsets[0]
        out.append(TensorMeta(name, dtype, shape, nbytes))
    return out, problems


def tensors_from_hub(files_metadata: Mapping[str, Any]) -> tuple[list[TensorMeta], list[str]]:
    """Tensor descriptions from huggingface_hub's `get_safetensors_metadata(repo)
    .files_metadata` (file name -> object with `.tensors`: name -> TensorInfo with dtype,
    shape, data_offsets), checked like a local header. The hub call itself can raise on a
    malformed header (it multiplies the shape); the caller catches that."""
    tensors: list[TensorMeta] = []
    problems: list[str] = []
    for filename, meta in files_metadata.items():
        infos = getattr(meta, "tensors", None)
        if not isinstance(infos, Mapping):
            problems.append(f"{filename}: no tensors in the hub's metadata")
            continue
        header = {name: {"dtype": getattr(info, "dtype", None),
                         "shape": _as_list(getattr(info, "shape", None)),
                         "data_offsets": _as_list(getattr(info, "data_offsets", None))}
                  for name, info in infos.items()}
        found, notes = tensors_from_header(header, str(filename))
        tensors.extend(found)
        problems.extend(notes)
    return tensors, problems


def _as_list(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value


def read_header(path: Path, source: str | None = None) -> tuple[list[TensorMeta], list[str]]:
    """The tensors one .safetensors file declares; never raises (problems instead)."""
    label = source or path.name
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(0)
            prefix = fh.read(8)
            if len(prefix) < 8:
                return [], [f"{label}: {size} bytes, too short for a safetensors file"]
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                return [], [f"{label}: header length {length} exceeds the "
                            f"{MAX_HEADER_BYTES // 2**20} MiB limit"]
            if length > size - 8:
                return [], [f"{label}: truncated (header of {length} bytes, file of {size})"]
            raw = fh.read(length)
    except OSError as exc:
        return [], [f"{label}: {exc.strerror or exc}"]
    try:
        header = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        return [], [f"{label}: header is not valid JSON ({exc})"]
    tensors, problems = tensors_from_header(header, label)
    data = size - 8 - length
    end = max((_end(header, t.name) for t in tensors), default=0)
    if end > data:
        problems.append(f"{label}: truncated (tensors end at byte {end} of the data, "
                        f"the file holds {data})")
    return tensors, problems


def _end(header: object, name: str) -> int:
    entry = header.get(name) if isinstance(header, dict) else None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return offsets[1] if isinstance(offsets, list) and len(offsets) == 2 else 0


def weight_files(model_dir: Path) -> tuple[list[Path], list[str]]:
    """The .safetensors files that make up the model: those the index names when there is
    one, else every one in the directory (without Mistral's `consolidated.safetensors`, a
    second copy of the same weights, when the sharded ones are there too)."""
    try:
        raw = (model_dir / INDEX_NAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raw = None
    except OSError as exc:
        return [], [f"{INDEX_NAME}: unreadable ({exc.strerror or exc})"]
    if raw is not None:
        try:
            doc = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            return [], [f"{INDEX_NAME}: unreadable ({exc})"]
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            return [], [f"{INDEX_NAME}: no weight_map"]
        files: list[Path] = []
        problems: list[str] = []
        for name in sorted({v for v in weight_map.values() if isinstance(v, str)}):
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts:
                problems.append(f"{INDEX_NAME}: refusing shard path {name!r}")
                continue
            files.append(model_dir / rel)
        return files, problems
    try:
        found = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
    except OSError as exc:
        return [], [f"{model_dir}: {exc.strerror or exc}"]
    shards = [p for p in found if not p.name.startswith("consolidated")]
    return (shards or found), []


def read_weights(model_dir: Path, config: Mapping[str, Any]) -> WeightsInfo:
    """WeightsInfo for a local model directory (reads headers only; never raises)."""
    files, problems = weight_files(model_dir)
    tensors: list[TensorMeta] = []
    complete = not problems
    for path in files:
        found, notes = read_header(path)  # a missing shard is a problem like any other
        if not found and notes:
            complete = False
        tensors.extend(found)
        problems.extend(notes)
    if not files and not problems:
        problems.append("no safetensors files")
    return summarize(tensors, config, problems=problems, complete=complete)


# --- the estimate from config.json ------------------------------------------------------------

# Encoders (BERT and kin): learned absolute positions, token types, a non-gated MLP, biases,
# no LM head.
_ENCODERS: Final = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert",
                              "electra", "mpnet", "ernie"})
# Decoders whose MLP has two matrices (up, down) rather than the gated three.
_UNGATED: Final = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi",
                             "starcoder2", "gpt_bigcode", "mpt", "codegen"})


def _encoder_parameters(cfg: Mapping[str, Any], h: int, layers: int, vocab: int,
                        inter: int) -> int:
    attn = 4 * (h * h + h)
    mlp = h * inter + inter + inter * h + h
    per_layer = attn + mlp + 4 * h  # two LayerNorms
    positions = config_int(cfg, "max_position_embeddings") or 0
    types = config_int(cfg, "type_vocab_size") or 0
    embed = (vocab + positions + types) * h + 2 * h
    archs = cfg.get("architectures")
    pooler = h * h + h if isinstance(archs, list) and any(
        isinstance(a, str) and a.endswith("Model") for a in archs) else 0
    return layers * per_layer + embed + pooler


def _attention(cfg: Mapping[str, Any], h: int, heads: int) -> int:
    kv_lora = config_int(cfg, "kv_lora_rank")
    if kv_lora:  # DeepSeek MLA
        rope = config_int(cfg, "qk_rope_head_dim") or 0
        nope = config_int(cfg, "qk_nope_head_dim") or 0
        v_dim = config_int(cfg, "v_head_dim") or nope
        q_lora = config_int(cfg, "q_lora_rank")
        q = (h * q_lora + q_lora * heads * (nope + rope)) if q_lora else h * heads * (
            nope + rope)
        kv = h * (kv_lora + rope) + kv_lora * heads * (nope + v_dim)
        return q + kv + heads * v_dim * h
    kv_heads = config_int(cfg, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = config_int(cfg, "head_dim") or h // heads
    attn = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim
    if cfg.get("attention_bias") is True or cfg.get("model_type") == "qwen2":
        attn += (heads + 2 * kv_heads) * head_dim
    return attn


def _mlp(cfg: Mapping[str, Any], h: int, inter: int, layer: int) -> int:
    mats = 2 if cfg.get("model_type") in _UNGATED else 3
    experts = config_int(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    dense_first = config_int(cfg, "first_k_dense_replace") or 0
    if not experts or layer < dense_first:
        return mats * h * inter
    moe_inter = config_int(cfg, "moe_intermediate_size") or inter
    mlp = experts * mats * h * moe_inter + h * experts  # experts and the router
    shared = config_int(cfg, "n_shared_experts", "num_shared_experts") or 0
    mlp += shared * mats * h * moe_inter
    shared_inter = config_int(cfg, "shared_expert_intermediate_size")
    if shared_inter:  # Qwen2-MoE style: one shared expert of its own width, and its gate
        mlp += mats * h * shared_inter + h
    return mlp


def estimate_parameters(config: Mapping[str, Any]) -> int | None:
    """A model's parameter count from config.json sizes, or None when it cannot tell. Exact
    for BERT-style encoders and plain Llama-style decoders; close for MoE and MLA."""
    cfg = text_config(config)
    h = config_int(cfg, "hidden_size", "n_embd", "d_model")
    layers = config_int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    vocab = config_int(cfg, "vocab_size")
    heads = config_int(cfg, "num_attention_heads", "n_head")
    if not (h and layers and vocab and heads):
        return None
    inter = config_int(cfg, "intermediate_size", "n_inner", "ffn_dim") or 4 * h
    if cfg.get("model_type") in _ENCODERS:
        return _encoder_parameters(cfg, h, layers, vocab, inter)
    attn = _attention(cfg, h, heads)
    body = sum(attn + _mlp(cfg, h, inter, i) + 2 * h for i in range(layers))
    # transformers' own default is tied; Llama-family configs always write the key (false).
    tied = cfg.get("tie_word_embeddings", True) is not False
    return body + vocab * h * (1 if tied else 2) + h


def estimate_weights(config: Mapping[str, Any]) -> WeightsInfo | None:
    """WeightsInfo from config.json alone (no headers): parameters as estimated, stored at
    the quantized width or the config's dtype (16-bit when it says nothing)."""
    count = estimate_parameters(config)
    if count is None:
        return None
    dtype = config_dtype(config) or "BF16"
    quant = quantization(config)
    if quant.bits:
        return WeightsInfo(count, count * quant.bits // 8, dtype=dtype, source="estimate")
    width = DTYPE_BITS.get(dtype, 16)
    stored = count * width // 8
    floating = dtype in FLOAT_DTYPES
    return WeightsInfo(count, stored, count if floating else 0, stored if floating else 0,
                       dtype, "estimate")
