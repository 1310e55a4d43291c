"""Weights from safetensors headers: logical parameters, stored bytes, hostile files, and the
estimate from config.json."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from huggingface_hub.utils._safetensors import SafetensorsFileMetadata, TensorInfo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import tinymodel
from vllama.models.weights import (
    INDEX_NAME,
    TensorMeta,
    WeightsInfo,
    estimate_parameters,
    estimate_weights,
    quantization,
    read_header,
    read_weights,
    summarize,
    tensors_from_header,
    tensors_from_hub,
)

# Bits per element, written out here independently of the module under test.
BITS = {"F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "I8": 8, "U8": 8,
        "I32": 32, "I64": 64, "BOOL": 8, "F64": 64, "F4": 4}

Spec = dict[str, tuple[str, list[int]]]


def write_file(path: Path, tensors: Spec) -> None:
    """A safetensors file of any dtype whose data is a hole: only the header is real (the
    test bed's tinymodel.write_safetensors writes F32 only)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = (math.prod(shape) * BITS[dtype] + 7) // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)  # sparse: no tensor bytes are ever read


def metas(tensors: Spec) -> list[TensorMeta]:
    return [TensorMeta(n, d, tuple(s)) for n, (d, s) in tensors.items()]


# --- real layouts -----------------------------------------------------------------------------

MINILM_CONFIG: dict[str, Any] = {  # sentence-transformers/all-MiniLM-L6-v2's config.json
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384,
    "intermediate_size": 1536, "max_position_embeddings": 512, "num_attention_heads": 12,
    "num_hidden_layers": 6, "type_vocab_size": 2, "vocab_size": 30522,
}


def minilm_tensors() -> Spec:
    """all-MiniLM-L6-v2's model.safetensors header: F32 weights plus an int64 position_ids
    buffer, BERT naming (no `model.` prefix, LayerNorm.bias/weight, a pooler)."""
    h, inter = 384, 1536
    t: Spec = {
        "embeddings.position_ids": ("I64", [1, 512]),
        "embeddings.LayerNorm.bias": ("F32", [h]),
        "embeddings.LayerNorm.weight": ("F32", [h]),
        "embeddings.position_embeddings.weight": ("F32", [512, h]),
        "embeddings.token_type_embeddings.weight": ("F32", [2, h]),
        "embeddings.word_embeddings.weight": ("F32", [30522, h]),
        "pooler.dense.bias": ("F32", [h]),
        "pooler.dense.weight": ("F32", [h, h]),
    }
    for i in range(6):
        p = f"encoder.layer.{i}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            t[p + part + ".weight"] = ("F32", [h, h])
            t[p + part + ".bias"] = ("F32", [h])
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + norm + ".weight"] = ("F32", [h])
            t[p + norm + ".bias"] = ("F32", [h])
        t[p + "intermediate.dense.weight"] = ("F32", [inter, h])
        t[p + "intermediate.dense.bias"] = ("F32", [inter])
        t[p + "output.dense.weight"] = ("F32", [h, inter])
        t[p + "output.dense.bias"] = ("F32", [h])
    return t


MINILM_PARAMETERS = 22_713_216  # sentence-transformers reports this; the hub says 22.7M


def test_minilm_headers_give_22_7m_not_the_decoder_estimate(tmp_path: Path) -> None:
    """Issue 13: 37.60M was a decoder-shaped estimate; the headers say 22.7M (the int64
    position_ids buffer is stored but is no parameter)."""
    write_file(tmp_path / "model.safetensors", minilm_tensors())
    info = read_weights(tmp_path, MINILM_CONFIG)
    assert info == WeightsInfo(
        parameters=MINILM_PARAMETERS, stored_bytes=MINILM_PARAMETERS * 4 + 512 * 8,
        float_elements=MINILM_PARAMETERS, float_bytes=MINILM_PARAMETERS * 4,
        dtype="F32", source="headers", problems=())


def tiny_parameters(arch: str) -> int:
    t = tinymodel
    attn = (t.HEADS * t.HEAD_DIM * t.HIDDEN * 2 + t.KV_HEADS * t.HEAD_DIM * t.HIDDEN * 2)
    if arch == "qwen2":
        attn += (t.HEADS + 2 * t.KV_HEADS) * t.HEAD_DIM
    layer = attn + 3 * t.HIDDEN * t.INTERMEDIATE + 2 * t.HIDDEN
    return t.LAYERS * layer + 2 * t.VOCAB * t.HIDDEN + t.HIDDEN


@pytest.mark.parametrize("arch", tinymodel.ARCHES)
def test_generated_tiny_model(tmp_path: Path, arch: str) -> None:
    model = tinymodel.generate(tmp_path / arch, arch=arch)
    config = json.loads((model / "config.json").read_text())
    info = read_weights(model, config)
    expected = tiny_parameters(arch)
    assert (info.parameters, info.stored_bytes, info.dtype, info.source, info.problems) == (
        expected, expected * 4, "F32", "headers", ())
    assert estimate_parameters(config) == expected  # the config estimate agrees exactly


def test_sharded_with_index_ignores_a_stray_consolidated_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = {"model.embed_tokens.weight": rng.standard_normal((64, 16), dtype=np.float32)}
    b = {"lm_head.weight": rng.standard_normal((64, 16), dtype=np.float32),
         "model.norm.weight": np.ones(16, dtype=np.float32)}
    tinymodel.write_safetensors(tmp_path / "model-00001-of-00002.safetensors", a)
    tinymodel.write_safetensors(tmp_path / "model-00002-of-00002.safetensors", b)
    tinymodel.write_safetensors(tmp_path / "consolidated.safetensors", {**a, **b})
    weight_map = {**dict.fromkeys(a, "model-00001-of-00002.safetensors"),
                  **dict.fromkeys(b, "model-00002-of-00002.safetensors")}
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    info = read_weights(tmp_path, {})
    assert (info.parameters, info.stored_bytes, info.source) == (2064, 8256, "headers")


def test_shards_without_index_skip_consolidated(tmp_path: Path) -> None:
    write_file(tmp_path / "model-00001-of-00002.safetensors", {"a": ("BF16", [10, 10])})
    write_file(tmp_path / "model-00002-of-00002.safetensors", {"b": ("BF16", [5])})
    # Mistral's own format: the same weights under other names.
    write_file(tmp_path / "consolidated.safetensors", {"wa": ("BF16", [10, 10]),
                                                       "wb": ("BF16", [5])})
    info = read_weights(tmp_path, {})
    assert (info.parameters, info.problems) == (105, ())


def test_only_consolidated_is_read_when_alone(tmp_path: Path) -> None:
    write_file(tmp_path / "consolidated.safetensors", {"a": ("BF16", [10, 10])})
    assert read_weights(tmp_path, {}).parameters == 100


# --- quantized and other dtypes ---------------------------------------------------------------

IN, OUT, GROUP, VOCAB = 256, 512, 128, 100  # the linear layer dominates
LINEAR = IN * OUT
EMBED = VOCAB * IN


def gptq(bits: int) -> Spec:
    per_int = 32 // bits
    return {"model.embed_tokens.weight": ("F16", [VOCAB, IN]),
            "model.layers.0.mlp.up_proj.qweight": ("I32", [IN // per_int, OUT]),
            "model.layers.0.mlp.up_proj.qzeros": ("I32", [IN // GROUP, OUT // per_int]),
            "model.layers.0.mlp.up_proj.scales": ("F16", [IN // GROUP, OUT]),
            "model.layers.0.mlp.up_proj.g_idx": ("I32", [IN]),
            "model.layers.0.mlp.up_proj.bias": ("F16", [OUT])}


def awq() -> Spec:
    return {"model.embed_tokens.weight": ("F16", [VOCAB, IN]),
            "model.layers.0.mlp.up_proj.qweight": ("I32", [IN, OUT // 8]),
            "model.layers.0.mlp.up_proj.qzeros": ("I32", [IN // GROUP, OUT // 8]),
            "model.layers.0.mlp.up_proj.scales": ("F16", [IN // GROUP, OUT])}


def fp8_block() -> Spec:  # DeepSeek-V3 style
    return {"model.embed_tokens.weight": ("BF16", [VOCAB, IN]),
            "model.layers.0.mlp.up_proj.weight": ("F8_E4M3", [OUT, IN]),
            "model.layers.0.mlp.up_proj.weight_scale_inv": ("F32", [OUT // 128, IN // 128])}


def fp8_compressed() -> Spec:  # compressed-tensors / llm-compressor FP8
    return {"model.embed_tokens.weight": ("BF16", [VOCAB, IN]),
            "model.layers.0.mlp.up_proj.weight": ("F8_E4M3", [OUT, IN]),
            "model.layers.0.mlp.up_proj.weight_scale": ("BF16", [OUT, 1]),
            "model.layers.0.mlp.up_proj.input_scale": ("BF16", [1])}


def w4a16_packed() -> Spec:  # compressed-tensors pack-quantized
    return {"model.embed_tokens.weight": ("BF16", [VOCAB, IN]),
            "model.layers.0.mlp.up_proj.weight_packed": ("I32", [OUT, IN // 8]),
            "model.layers.0.mlp.up_proj.weight_scale": ("BF16", [OUT, IN // GROUP]),
            "model.layers.0.mlp.up_proj.weight_shape": ("I64", [2])}


def bnb_4bit() -> Spec:
    return {"model.embed_tokens.weight": ("F16", [VOCAB, IN]),
            "model.layers.0.mlp.up_proj.weight": ("U8", [LINEAR // 2, 1]),
            "model.layers.0.mlp.up_proj.weight.absmax": ("F32", [LINEAR // 64]),
            "model.layers.0.mlp.up_proj.weight.quant_map": ("F32", [16]),
            "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4": ("U8", [100])}


def bnb_8bit() -> Spec:
    return {"model.embed_tokens.weight": ("F16", [VOCAB, IN]),
            "model.layers.0.mlp.up_proj.weight": ("I8", [OUT, IN]),
            "model.layers.0.mlp.up_proj.SCB": ("F32", [OUT]),
            "model.layers.0.mlp.up_proj.weight_format": ("U8", [1])}


def mxfp4() -> Spec:  # gpt-oss: 32 values per 16-byte block, one U8 scale per block
    return {"model.embed_tokens.weight": ("BF16", [VOCAB, IN]),
            "model.layers.0.mlp.experts.down_proj_blocks": ("U8", [4, OUT, IN // 32, 16]),
            "model.layers.0.mlp.experts.down_proj_scales": ("U8", [4, OUT, IN // 32]),
            "model.layers.0.mlp.experts.down_proj_bias": ("BF16", [4, OUT])}


def stored(spec: Spec) -> int:
    return sum((math.prod(s) * BITS[d] + 7) // 8 for d, s in spec.values())


QUANTIZED = [
    # (name, tensors, quantization_config, logical parameters, dominant dtype)
    ("gptq-4bit", gptq(4), {"quant_method": "gptq", "bits": 4, "group_size": GROUP},
     EMBED + LINEAR + OUT, "I32"),
    ("gptq-8bit", gptq(8), {"quant_method": "gptq", "bits": 8}, EMBED + LINEAR + OUT, "I32"),
    ("gptq-bits-unstated", gptq(4), None, EMBED + LINEAR + OUT, "I32"),
    ("awq-4bit", awq(), {"quant_method": "awq", "bits": 4, "group_size": GROUP},
     EMBED + LINEAR, "I32"),
    ("awq-w_bit", awq(), {"quant_method": "awq", "w_bit": 4}, EMBED + LINEAR, "I32"),
    ("fp8-block", fp8_block(), {"quant_method": "fp8", "weight_block_size": [128, 128]},
     EMBED + LINEAR, "F8_E4M3"),
    ("fp8-compressed", fp8_compressed(), {"quant_method": "compressed-tensors"},
     EMBED + LINEAR, "F8_E4M3"),
    ("w4a16-packed", w4a16_packed(),
     {"quant_method": "compressed-tensors",
      "config_groups": {"group_0": {"weights": {"num_bits": 4}}}},
     EMBED + LINEAR, "I32"),
    ("bnb-nf4", bnb_4bit(), {"quant_method": "bitsandbytes", "load_in_4bit": True},
     EMBED + LINEAR, "U8"),
    ("bnb-int8", bnb_8bit(), {"quant_method": "bitsandbytes", "load_in_8bit": True},
     EMBED + LINEAR, "I8"),
    ("mxfp4", mxfp4(), {"quant_method": "mxfp4"}, EMBED + 4 * LINEAR + 4 * OUT, "U8"),
]


@pytest.mark.parametrize(("tensors", "quant", "parameters", "dtype"),
                         [q[1:] for q in QUANTIZED], ids=[q[0] for q in QUANTIZED])
def test_quantized_layouts_count_logical_parameters(
        tmp_path: Path, tensors: Spec, quant: dict[str, Any] | None, parameters: int,
        dtype: str) -> None:
    write_file(tmp_path / "model.safetensors", tensors)
    config = {"quantization_config": quant} if quant else {}
    info = read_weights(tmp_path, config)
    assert (info.parameters, info.stored_bytes, info.dtype, info.source, info.problems) == (
        parameters, stored(tensors), dtype, "headers", ())


@pytest.mark.parametrize(("dtype", "parameters", "stored_bytes", "float_elements"), [
    ("F32", 1000, 4000, 1000), ("F16", 1000, 2000, 1000), ("BF16", 1000, 2000, 1000),
    ("F64", 1000, 8000, 1000), ("F8_E4M3", 1000, 1000, 0), ("F8_E5M2", 1000, 1000, 0),
    ("F4", 1000, 500, 0),
    # Integer tensors outside a packed layout are buffers: stored, no parameters.
    ("I8", 0, 1000, 0), ("U8", 0, 1000, 0), ("I32", 0, 4000, 0), ("I64", 0, 8000, 0),
    ("BOOL", 0, 1000, 0),
])
def test_every_dtype(dtype: str, parameters: int, stored_bytes: int,
                     float_elements: int) -> None:
    tensors = [TensorMeta("w.weight", "BF16", (10,)), TensorMeta("t", dtype, (10, 100))]
    info = summarize(tensors, {})
    assert (info.parameters - 10, info.stored_bytes - 20, info.float_elements - 10) == (
        parameters, stored_bytes, float_elements)


def test_integer_weights_count_when_the_config_declares_quantization() -> None:
    tensors = [TensorMeta("a.weight", "I8", (10, 10))]
    assert summarize(tensors, {}).parameters == 0  # a stray int8 tensor: a buffer
    int8 = {"quantization_config": {"quant_method": "w8a8", "bits": 8}}
    assert summarize(tensors, int8).parameters == 100


def test_quantization_reading() -> None:
    assert quantization({}).method == ""
    assert quantization({"quantization_config": {"quant_method": "gptq", "bits": 3}}
                        ).bits == 3
    assert quantization({"quantization_config": {"quant_method": "modelopt",
                                                 "quant_algo": "NVFP4"}}).bits == 4
    assert quantization({"quantization_config": {"quant_method": "fp8"}}).bits == 8
    assert quantization({"quantization_config": {"bits": True}}) == quantization(
        {"quantization_config": {}})


def test_gptq_3bit_packs_32_values_in_3_int32() -> None:
    config = {"quantization_config": {"quant_method": "gptq", "bits": 3}}
    tensors = [TensorMeta("l.qweight", "I32", (IN * 3 // 32, OUT))]
    assert summarize(tensors, config).parameters == LINEAR


# --- nothing malformed raises -----------------------------------------------------------------


@pytest.mark.parametrize(("header", "kept", "problem"), [
    ({"a": {"dtype": "F16", "shape": ["x", 2], "data_offsets": [0, 4]}}, 0, "'a'"),
    ({"a": {"dtype": "F16", "shape": [True, 2]}}, 0, "'a'"),
    ({"a": {"dtype": "F16", "shape": [-1, 2]}}, 0, "'a'"),
    ({"a": {"dtype": "F16", "shape": 4}}, 0, "'a'"),
    ({"a": {"dtype": "F16"}}, 0, "'a'"),
    ({"a": {"dtype": 5, "shape": [2]}}, 0, "'a'"),
    ({"a": [1, 2]}, 0, "'a'"),
    ({"a": None, "b": {"dtype": "F16", "shape": [3]}}, 1, "'a'"),
    ({"__metadata__": {"format": "pt"}, "b": {"dtype": "F16", "shape": []}}, 1, None),
    ([1, 2, 3], 0, "not an object"),
    ("text", 0, "not an object"),
    (7, 0, "not an object"),
    (None, 0, "not an object"),
])
def test_bad_header_entries_are_skipped(header: object, kept: int, problem: str | None
                                        ) -> None:
    tensors, problems = tensors_from_header(header, "f.safetensors")
    assert len(tensors) == kept
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]
        assert problems[0].startswith("f.safetensors: ")


def _raw(length: int, body: bytes) -> bytes:
    return struct.pack("<Q", length) + body


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "too short"),
    (b"\x01\x02\x03", "too short"),
    (_raw(2**63, b"{}"), "exceeds"),
    (_raw(200 * 2**20, b"{}"), "exceeds"),
    (_raw(1000, b'{"a": {"dtype": "F16"'), "truncated"),
    (_raw(10, b"not json!!"), "not valid JSON"),
    (_raw(4, b"\xff\xfe\xfd\xfc"), "not valid JSON"),
    (_raw(len(NESTED), NESTED), "not valid JSON"),
    (_raw(2, b"[]"), "not an object"),
    (_raw(4, b"null"), "not an object"),
], ids=["empty", "short", "huge-length", "over-limit", "header-cut", "not-json", "not-utf8",
        "nested", "list", "null"])
def test_unreadable_files_give_problems_not_exceptions(
        tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    tensors, problems = read_header(path)
    assert tensors == [] and len(problems) == 1 and problem in problems[0], problems
    info = read_weights(tmp_path, MINILM_CONFIG)  # falls back to the estimate, says why
    assert (info.source, info.parameters) == ("estimate", MINILM_PARAMETERS)
    assert problem in info.problems[0]
    assert read_weights(tmp_path, {}) == WeightsInfo(0, 0, problems=info.problems)


def test_truncated_data_is_reported_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_file(path, {"a": ("F32", [100])})
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 10)
    info = read_weights(tmp_path, {})
    assert info.parameters == 100 and "truncated" in info.problems[0]


def test_one_bad_tensor_keeps_the_rest(tmp_path: Path) -> None:
    """Issue 12 item 15: `"shape": ["x", 2]` must not fail the model's facts."""
    header = {"good": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 32]},
              "bad": {"dtype": "BF16", "shape": ["x", 2], "data_offsets": [32, 40]}}
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(_raw(len(raw), raw) + bytes(40))
    info = read_weights(tmp_path, {})
    assert (info.parameters, info.source) == (16, "headers")
    assert info.problems == ("model.safetensors: tensor 'bad' has no valid dtype and shape; "
                             "skipped",)


def test_summarize_checks_sizes_and_duplicates() -> None:
    info = summarize([
        TensorMeta("a", "F16", (10,), nbytes=20),
        TensorMeta("a", "F16", (10,), nbytes=20),  # twice: counted once
        TensorMeta("b", "F16", (10,), nbytes=99),  # offsets disagree with the shape
        TensorMeta("c", "F12", (10,)),  # unknown dtype, no size: cannot count bytes
        TensorMeta("d", "F12", (10,), nbytes=15),  # unknown dtype with its size
    ], {})
    assert (info.parameters, info.stored_bytes) == (20, 35)
    assert [p.split(":")[0] for p in info.problems] == [
        "tensor 'a' appears twice; counted once", "tensor 'b'", "tensor 'c'"]


def test_hub_metadata_feeds_summarize() -> None:
    """The hub path: huggingface_hub's own metadata objects, as get_safetensors_metadata
    returns them for a repo without downloading it."""
    files = {
        "model-00001-of-00002.safetensors": SafetensorsFileMetadata(metadata={}, tensors={
            "x.weight": TensorInfo(dtype="BF16", shape=[3, 4], data_offsets=(0, 24))}),
        "model-00002-of-00002.safetensors": SafetensorsFileMetadata(metadata={}, tensors={
            "y.qweight": TensorInfo(dtype="I32", shape=[2, 8], data_offsets=(0, 64)),
            "y.scales": TensorInfo(dtype="F16", shape=[1, 8], data_offsets=(64, 80))}),
        "broken.safetensors": object(),
    }
    tensors, problems = tensors_from_hub(files)
    assert problems == ["broken.safetensors: no tensors in the hub's metadata"]
    gptq = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    assert summarize(tensors, gptq, problems=problems) == WeightsInfo(
        12 + 128, 24 + 64 + 16, 12 + 8, 24 + 16, "I32", "headers", tuple(problems))


def test_hub_metadata_with_a_bad_shape_is_skipped() -> None:
    bad = SimpleNamespace(tensors={"a": SimpleNamespace(dtype="F16", shape=["x", 2],
                                                        data_offsets=(0, 4))})
    assert tensors_from_hub({"m.safetensors": bad}) == (
        [], ["m.safetensors: tensor 'a' has no valid dtype and shape; skipped"])


# --- directories that lack something ----------------------------------------------------------


def test_index_naming_a_missing_shard_prefers_the_estimate(tmp_path: Path) -> None:
    write_file(tmp_path / "a.safetensors", {"x": ("F32", [10])})
    (tmp_path / INDEX_NAME).write_text(json.dumps(
        {"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    info = read_weights(tmp_path, MINILM_CONFIG)
    assert (info.source, info.parameters) == ("estimate", MINILM_PARAMETERS)
    assert info.problems == ("b.safetensors: No such file or directory",)
    partial = read_weights(tmp_path, {})  # no estimate: the partial count, with the problem
    assert (partial.source, partial.parameters, partial.problems) == (
        "headers", 10, ("b.safetensors: No such file or directory",))


@pytest.mark.parametrize(("index", "problem"), [
    ("{not json", "unreadable"),
    ("[1]", "no weight_map"),
    ('{"weight_map": []}', "no weight_map"),
    ('{"weight_map": {"x": "../outside.safetensors"}}', "refusing"),
    ('{"weight_map": {"x": "/etc/passwd"}}', "refusing"),
    ('{"weight_map": {"x": "%s.safetensors"}}' % ("a" * 300), "File name too long"),
    ('{"weight_map": {"x": "sub"}}', "Is a directory"),
])
def test_bad_index(tmp_path: Path, index: str, problem: str) -> None:
    write_file(tmp_path / "model.safetensors", {"x": ("F32", [10])})
    (tmp_path / "sub").mkdir()
    (tmp_path / INDEX_NAME).write_text(index)
    info = read_weights(tmp_path, {})
    assert info.parameters == 0 and problem in info.problems[0]


def test_no_weights_at_all(tmp_path: Path) -> None:
    assert read_weights(tmp_path, {}) == WeightsInfo(0, 0, problems=("no safetensors files",))
    assert read_weights(tmp_path / "absent", {}).problems == ("no safetensors files",)
    info = read_weights(tmp_path, MINILM_CONFIG)
    assert (info.source, info.parameters, info.stored_bytes, info.dtype) == (
        "estimate", MINILM_PARAMETERS, MINILM_PARAMETERS * 2, "BF16")


def test_a_directory_named_like_a_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").mkdir()
    assert read_weights(tmp_path, {}).problems == ("no safetensors files",)
    (tmp_path / INDEX_NAME).mkdir()
    assert read_weights(tmp_path, {}).problems == (f"{INDEX_NAME}: unreadable (Is a directory)",)


# --- the estimate -----------------------------------------------------------------------------

LLAMA_3_1_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
MISTRAL_7B: dict[str, Any] = {
    "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "tie_word_embeddings": False}
QWEN2_5_0_5B: dict[str, Any] = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151936, "tie_word_embeddings": True}
DEEPSEEK_V2_LITE: dict[str, Any] = {
    "model_type": "deepseek_v2", "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2,
    "first_k_dense_replace": 1, "kv_lora_rank": 512, "q_lora_rank": None,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 102400,
    "tie_word_embeddings": False}


@pytest.mark.parametrize(("config", "expected"), [
    (LLAMA_3_1_8B, 8_030_261_248),  # the published exact counts
    (MISTRAL_7B, 7_241_732_096),
    (QWEN2_5_0_5B, 494_032_768),
    (MINILM_CONFIG, MINILM_PARAMETERS),
    ({"text_config": LLAMA_3_1_8B, "vision_config": {}}, 8_030_261_248),
])
def test_estimate_is_exact_for_plain_architectures(config: dict[str, Any], expected: int
                                                   ) -> None:
    assert estimate_parameters(config) == expected


def test_estimate_is_close_for_mla_moe() -> None:
    estimate = estimate_parameters(DEEPSEEK_V2_LITE)
    assert estimate is not None and abs(estimate / 15_706_484_224 - 1) < 0.01


@pytest.mark.parametrize("config", [
    {}, {"hidden_size": 4096}, {**MISTRAL_7B, "hidden_size": True},
    {**MISTRAL_7B, "num_hidden_layers": "32"}, {**MISTRAL_7B, "vocab_size": 0},
])
def test_estimate_needs_the_sizes(config: dict[str, Any]) -> None:
    assert estimate_parameters(config) is None
    assert estimate_weights(config) is None


@pytest.mark.parametrize(("extra", "stored", "dtype"), [
    ({"torch_dtype": "float32"}, 4, "F32"),
    ({"torch_dtype": "bfloat16"}, 2, "BF16"),
    ({"dtype": "float16"}, 2, "F16"),
    ({}, 2, "BF16"),
    ({"torch_dtype": "bfloat16", "quantization_config": {"quant_method": "awq", "bits": 4}},
     0.5, "BF16"),
])
def test_estimate_weights_bytes(extra: dict[str, Any], stored: float, dtype: str) -> None:
    info = estimate_weights({**MISTRAL_7B, **extra})
    assert info is not None
    assert (info.stored_bytes, info.dtype, info.source) == (
        int(7_241_732_096 * stored), dtype, "estimate")


# --- fuzz: whatever the bytes, a result --------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=4),
    max_leaves=20)
ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from([*BITS, "F12", 3]) | JSON,
    "shape": st.lists(st.integers(-2, 4) | JSON, max_size=3) | JSON,
    "data_offsets": st.lists(st.integers(-5, 100), max_size=3) | JSON})


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.text(max_size=8), ENTRY | JSON, max_size=6) | JSON)
def test_any_header_json_gives_a_result(header: object) -> None:
    tensors, problems = tensors_from_header(header, "f")
    info = summarize(tensors, {}, problems=problems)
    assert info.parameters >= 0 and info.stored_bytes >= 0


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=64) | st.builds(
    lambda n, body: struct.pack("<Q", n) + body, st.integers(0, 2**64 - 1),
    st.binary(max_size=64)))
def test_any_file_gives_a_result(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.safetensors").write_bytes(content)
    assert isinstance(read_weights(tmp_path, {}), WeightsInfo)
