"""The memory arithmetic: KV cache per token and per context, weights as loaded, the need
per device under tensor parallelism, and the largest context a budget allows."""

from __future__ import annotations

from typing import Any

import pytest

from vllama.models.memory import (
    BLOCK_TOKENS,
    CPU_OVERHEAD_BYTES,
    DEFAULT_CONTEXT,
    GPU_OVERHEAD_BYTES,
    SLIDING_SLACK_TOKENS,
    GiB,
    KVLayout,
    MemoryNeed,
    context_length,
    device_bytes,
    dtype_bytes,
    kv_bytes,
    kv_bytes_per_token,
    kv_cache_bytes,
    kv_layout,
    largest_context,
    memory_need,
    total_bytes,
    tp_allowed,
    weight_bytes,
    with_context,
)
from vllama.models.weights import WeightsInfo

KiB = 1024

LLAMA_8B: dict[str, Any] = {  # meta-llama/Llama-3.1-8B-Instruct
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "original_max_position_embeddings": 8192,
                     "rope_type": "llama3"}}
LLAMA_70B: dict[str, Any] = {
    **LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
    "num_attention_heads": 64}
QWEN_7B: dict[str, Any] = {  # Qwen/Qwen2.5-7B-Instruct: a window it does not use
    "model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
    "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 28}
DEEPSEEK_V3: dict[str, Any] = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
    "num_attention_heads": 128, "num_key_value_heads": 128, "kv_lora_rank": 512,
    "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
    "max_position_embeddings": 163840,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096}}
GEMMA3_27B: dict[str, Any] = {  # vision wrapper; every 6th text layer is global
    "model_type": "gemma3", "vision_config": {"hidden_size": 1152},
    "text_config": {"model_type": "gemma3_text", "hidden_size": 5376, "head_dim": 128,
                    "num_hidden_layers": 62, "num_attention_heads": 32,
                    "num_key_value_heads": 16, "sliding_window": 1024,
                    "sliding_window_pattern": 6, "max_position_embeddings": 131072}}
GPT_OSS: dict[str, Any] = {
    "model_type": "gpt_oss", "hidden_size": 2880, "head_dim": 64, "num_hidden_layers": 24,
    "num_attention_heads": 64, "num_key_value_heads": 8, "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072}
MINILM: dict[str, Any] = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
                          "num_attention_heads": 12, "max_position_embeddings": 512}


def weights(stored: int, floats: int = 0, float_bytes: int = 0) -> WeightsInfo:
    return WeightsInfo(0, stored, floats, float_bytes)


LLAMA_8B_WEIGHTS = WeightsInfo(8_030_261_248, 16_060_522_496, 8_030_261_248, 16_060_522_496,
                               "BF16", "headers")
LLAMA_70B_WEIGHTS = WeightsInfo(70_553_706_496, 141_107_412_992, 70_553_706_496,
                                141_107_412_992, "BF16", "headers")


@pytest.mark.parametrize(("name", "expected"), [
    ("auto", 2), ("bfloat16", 2), ("float16", 2), ("half", 2), ("float32", 4),
    ("torch.float32", 4), ("FLOAT32", 4), ("fp8", 1), ("fp8_e4m3", 1), ("fp8_e5m2", 1),
    ("something-new", 2),
])
def test_dtype_bytes(name: str, expected: int) -> None:
    assert dtype_bytes(name) == expected


@pytest.mark.parametrize(("config", "flags", "per_token"), [
    # The reference's example: 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB.
    (LLAMA_8B, {}, 128 * KiB),
    (LLAMA_8B, {"kv_cache_dtype": "fp8"}, 64 * KiB),  # fp8 KV halves it
    (LLAMA_8B, {"dtype": "float32"}, 256 * KiB),  # the CPU engine's --dtype float32
    (LLAMA_8B, {"dtype": "float32", "kv_cache_dtype": "bfloat16"}, 128 * KiB),
    (LLAMA_70B, {}, 320 * KiB),
    (QWEN_7B, {}, 2 * 28 * 4 * 128 * 2),  # head_dim from hidden / heads
    (GEMMA3_27B, {}, 2 * 62 * 16 * 128 * 2),  # text_config, explicit head_dim
    (MINILM, {}, 2 * 6 * 12 * 32 * 2),  # no num_key_value_heads: every head has KV
    ({"num_hidden_layers": 32, "n_head": 71, "hidden_size": 4544, "multi_query": True},
     {}, 2 * 32 * 1 * 64 * 2),  # Falcon-7B: multi-query
    (DEEPSEEK_V3, {}, 61 * (512 + 64) * 2),  # MLA: the latent and the rope part, no x2
    (DEEPSEEK_V3, {"kv_cache_dtype": "fp8"}, 61 * (512 + 64)),
    ({**LLAMA_8B, "head_dim": None}, {}, 128 * KiB),  # null head_dim: hidden / heads
    ({}, {}, 0),
    ({"num_hidden_layers": 32}, {}, 0),
    ({**LLAMA_8B, "num_hidden_layers": True}, {}, 0),
])
def test_kv_bytes_per_token(config: dict[str, Any], flags: dict[str, str], per_token: int
                            ) -> None:
    assert kv_bytes_per_token(config, **flags) == per_token


def test_llama_8b_8192_tokens_is_one_gib() -> None:
    layout = kv_layout(LLAMA_8B)
    assert layout is not None
    assert kv_cache_bytes(layout, 8192) == GiB
    assert kv_cache_bytes(layout, 131072) == 16 * GiB


def test_kv_rounds_up_to_whole_blocks() -> None:
    layout = kv_layout(LLAMA_8B)
    assert layout is not None
    assert kv_cache_bytes(layout, 1) == BLOCK_TOKENS * 128 * KiB
    assert kv_cache_bytes(layout, 17) == 2 * BLOCK_TOKENS * 128 * KiB
    assert kv_cache_bytes(layout, 0) == 0


@pytest.mark.parametrize(("config", "full", "sliding", "window"), [
    (GEMMA3_27B, 10, 52, 1024),  # 62 layers, every 6th global: 10 global, 52 local
    (GPT_OSS, 12, 12, 128),  # layer_types alternate
    ({**LLAMA_8B, "model_type": "gemma2", "sliding_window": 4096}, 16, 16, 4096),
    ({**LLAMA_8B, "sliding_window": 4096, "use_sliding_window": True,
      "max_window_layers": 28}, 28, 4, 4096),
    # Said but not assigned to layers (Mistral v0.1), switched off (Qwen2.5), or a
    # layer_types list that does not match the layers: all full, the safe side.
    ({**LLAMA_8B, "sliding_window": 4096}, 32, 0, 0),
    (QWEN_7B, 28, 0, 0),
    ({**GPT_OSS, "use_sliding_window": False}, 24, 0, 0),
    ({**GPT_OSS, "layer_types": ["sliding_attention"] * 3}, 24, 0, 0),
    ({**LLAMA_8B, "sliding_window": 4096, "use_sliding_window": True,
      "max_window_layers": 99}, 32, 0, 0),
])
def test_sliding_window_layers(config: dict[str, Any], full: int, sliding: int,
                               window: int) -> None:
    layout = kv_layout(config)
    assert layout is not None
    assert (layout.full_layers, layout.sliding_layers, layout.window) == (
        full, sliding, window)


def test_sliding_layers_cost_at_most_their_window() -> None:
    layout = kv_layout(GEMMA3_27B)
    assert layout is not None
    per_layer_token = 2 * 16 * 128 * 2
    capped = 1024 + SLIDING_SLACK_TOKENS
    assert kv_cache_bytes(layout, 131072) == per_layer_token * (10 * 131072 + 52 * capped)
    # Below the window every layer holds every token.
    assert kv_cache_bytes(layout, 4096) == per_layer_token * 62 * 4096


@pytest.mark.parametrize(("tp", "per_device"), [
    (1, 16 * GiB), (2, 8 * GiB), (4, 4 * GiB), (8, 2 * GiB),
    (16, 2 * GiB),  # 8 KV heads over 16 ranks: each head held twice
])
def test_kv_splits_by_kv_heads_under_tensor_parallelism(tp: int, per_device: int) -> None:
    layout = kv_layout(LLAMA_8B)
    assert layout is not None
    assert kv_cache_bytes(layout, 131072, tp) == per_device


def test_mla_latent_is_replicated_not_split() -> None:
    layout = kv_layout(DEEPSEEK_V3)
    assert layout is not None and layout.mla
    assert kv_cache_bytes(layout, 4096, 8) == kv_cache_bytes(layout, 4096, 1)


@pytest.mark.parametrize(("config", "expected"), [
    (LLAMA_8B, 131072),  # llama3 rope scaling is already in max_position_embeddings
    (QWEN_7B, 32768),
    (GEMMA3_27B, 131072),  # under text_config
    (DEEPSEEK_V3, 163840),  # yarn: 4096 x 40
    ({**QWEN_7B, "max_position_embeddings": 40960, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
     131072),
    ({"n_positions": 1024}, 1024),
    ({"max_position_embeddings": "4096"}, DEFAULT_CONTEXT),
    ({}, DEFAULT_CONTEXT),
])
def test_context_length(config: dict[str, Any], expected: int) -> None:
    assert context_length(config) == expected


@pytest.mark.parametrize(("info", "dtype", "loaded"), [
    (weights(4000, 1000, 4000), "auto", 2000),  # an F32 checkpoint runs in 16-bit
    (weights(4000, 1000, 4000), "float32", 4000),
    (weights(2000, 1000, 2000), "float32", 4000),  # BF16 upcast on the CPU engine
    (weights(2000, 1000, 2000), "bfloat16", 2000),
    (weights(1000 + 200, 100, 200), "auto", 1200),  # GPTQ: packed ints as stored
    (weights(1000), "float32", 1000),  # FP8: as stored
])
def test_weights_as_loaded(info: WeightsInfo, dtype: str, loaded: int) -> None:
    assert weight_bytes(info, dtype) == loaded


def test_llama_8b_need() -> None:
    need = memory_need(LLAMA_8B_WEIGHTS, LLAMA_8B)
    assert (need.context, need.kv_tokens, need.max_context) == (131072, 131072, 131072)
    assert (need.attention_heads, need.kv_heads, need.overhead_bytes) == (
        32, 8, GPU_OVERHEAD_BYTES)
    assert kv_bytes(need) == 16 * GiB
    assert device_bytes(need) == 16_060_522_496 + 16 * GiB + 2 * GiB
    at_8k = memory_need(LLAMA_8B_WEIGHTS, LLAMA_8B, max_model_len=8192)
    assert device_bytes(at_8k) == 16_060_522_496 + GiB + 2 * GiB
    assert with_context(need, 8192) == at_8k


def test_need_follows_the_engine_flags() -> None:
    cpu = memory_need(LLAMA_8B_WEIGHTS, LLAMA_8B, max_model_len=2048, dtype="float32",
                      overhead_bytes=CPU_OVERHEAD_BYTES)
    assert cpu.weights_bytes == 2 * 16_060_522_496  # upcast
    assert kv_bytes(cpu) == 2048 * 256 * KiB
    fp8 = memory_need(LLAMA_8B_WEIGHTS, LLAMA_8B, max_model_len=8192, kv_cache_dtype="fp8")
    assert kv_bytes(fp8) == GiB // 2
    more = memory_need(LLAMA_8B_WEIGHTS, LLAMA_8B, max_model_len=8192, kv_tokens=32768)
    assert (more.context, kv_bytes(more)) == (8192, 4 * GiB)
    longer = memory_need(LLAMA_8B_WEIGHTS, {**LLAMA_8B, "max_position_embeddings": 4096},
                         max_model_len=8192)
    assert longer.max_context == 8192


def test_unknown_attention_counts_weights_and_overhead_only() -> None:
    need = memory_need(weights(10 * GiB), {}, max_model_len=4096)
    assert need.kv is None and kv_bytes(need) == 0
    assert device_bytes(need) == 12 * GiB
    assert largest_context(need, 13 * GiB) == 4096


@pytest.mark.parametrize(("tp", "per_device"), [
    (1, 141_107_412_992 + 40 * GiB + 2 * GiB),
    (2, 141_107_412_992 // 2 + 20 * GiB + 2 * GiB),
    (4, 141_107_412_992 // 4 + 10 * GiB + 2 * GiB),
    (8, 141_107_412_992 // 8 + 5 * GiB + 2 * GiB),
])
def test_tensor_parallel_divides_weights_and_kv_not_overhead(tp: int, per_device: int
                                                             ) -> None:
    need = memory_need(LLAMA_70B_WEIGHTS, LLAMA_70B)
    assert kv_bytes(need) == 40 * GiB
    assert device_bytes(need, tp) == per_device
    assert total_bytes(need, tp) == per_device * tp


@pytest.mark.parametrize(("heads", "kv_heads", "allowed"), [
    (32, 8, [1, 2, 4, 8, 16]),  # 16 ranks hold each KV head twice
    (14, 2, [1, 2, 14]),  # Qwen2.5-0.5B: 7 ranks cannot share 2 KV heads evenly
    (28, 4, [1, 2, 4]),
    (12, 12, [1, 2, 3, 4, 6, 12]),
    (0, 0, list(range(1, 17))),  # unknown: no constraint
])
def test_tp_allowed(heads: int, kv_heads: int, allowed: list[int]) -> None:
    need = MemoryNeed(0, None, 1, 1, 1, 0, heads, kv_heads)
    assert [tp for tp in range(1, 17) if tp_allowed(need, tp)] == allowed
    assert not tp_allowed(need, 0)


@pytest.mark.parametrize(("budget", "tp", "expected"), [
    # 16,060,522,496 weights + 2 GiB: what is left, in 16-token blocks of 128 KiB a token.
    (20 * GiB, 1, (20 * GiB - 16_060_522_496 - 2 * GiB) // (16 * 128 * KiB) * 16),
    (16 * GiB, 1, 0),  # not even the weights, overhead and one block
    (200 * GiB, 1, 131072),  # capped at the model's own
    (12 * GiB, 2, (12 * GiB - 16_060_522_496 // 2 - 2 * GiB) // (16 * 64 * KiB) * 16),
])
def test_largest_context(budget: int, tp: int, expected: int) -> None:
    need = memory_need(LLAMA_8B_WEIGHTS, LLAMA_8B)
    found = largest_context(need, budget, tp)
    assert found == expected
    if found:
        assert device_bytes(with_context(need, found), tp) <= budget
    if 0 < found < need.max_context:
        assert device_bytes(with_context(need, found + BLOCK_TOKENS), tp) > budget


def test_layout_is_a_plain_struct() -> None:
    assert kv_layout(LLAMA_8B) == KVLayout(512, 8, 32)
