"""Model facts: capabilities and context length read from the engine flags the supervisor
will pass, and the facts read from a model's files, as tables."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from vllama.config import ModelConfig
from vllama.models import facts
from vllama.models.facts import ModelFiles
from vllama.models.weights import estimate_weights


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ((), ["completion"]),
        (("--enable-auto-tool-choice", "--tool-call-parser", "hermes"), ["completion", "tools"]),
        # auto tool choice without a parser: vLLM would not start, so no tools
        (("--enable_auto_tool_choice",), ["completion"]),
        (("--enable_auto_tool_choice", "--tool-call-parser=hermes"), ["completion", "tools"]),
        (("--enable-auto-tool-choice", "--no-enable-auto-tool-choice"), ["completion"]),
        (("--reasoning-parser=qwen3",), ["completion", "thinking"]),
        (("--runner", "pooling"), ["embedding"]),
        (("--convert=embed",), ["embedding"]),
    ],
)
def test_capabilities_from_engine_flags(args: tuple[str, ...], names: list[str]) -> None:
    model = ModelConfig(name="m", source="/m", vllm_args=args)
    assert facts.capabilities(ModelFiles(), model, args).names() == names


@pytest.mark.parametrize(
    ("args", "length"),
    # vLLM's human_readable_int: k is 1,000 and K is 1,024
    [(("--max-model-len", "4096"),  4096), (("--max_model_len=8k",), 8000),
     (("--max-model-len=8K",), 8192), (("--max-model-len", "25.6k"), 25600),
     (("--max-model-len", "big"), 2048), ((), 2048)],
)
def test_max_model_len(args: tuple[str, ...], length: int) -> None:
    files = ModelFiles(config={"max_position_embeddings": 2048})
    assert facts.context_length(files, args) == length


def test_format_parameters() -> None:
    text = facts.format_parameters({"num_ctx": 4096, "stop": ["<|im_end|>", "User:"],
                                    "temperature": 0.7, "top_k": 40.0, "use_mmap": True})
    assert text.split("\n") == [
        "num_ctx                        4096",
        'stop                           "<|im_end|>"',
        'stop                           "User:"',
        "temperature                    0.7",
        "top_k                          40",
        "use_mmap                       true",
    ]
    assert facts.format_parameters({}) == ""


QWEN = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28,
        "vocab_size": 152064, "intermediate_size": 18944, "num_attention_heads": 28,
        "num_key_value_heads": 4, "torch_dtype": "bfloat16", "tie_word_embeddings": False}


def _estimated(config: dict[str, object]) -> ModelFiles:
    weights = estimate_weights(config)
    assert weights is not None
    return ModelFiles(config=config, weights=weights)


def test_model_info() -> None:
    info = facts.model_info(_estimated(QWEN), 32768, basename="Qwen2.5-7B-Instruct")
    assert info["general.architecture"] == "qwen2"
    assert info["general.basename"] == "Qwen2.5-7B-Instruct"
    assert 7.5e9 < info["general.parameter_count"] < 7.7e9
    assert info["qwen2.context_length"] == 32768
    assert info["qwen2.embedding_length"] == 3584
    assert info["qwen2.block_count"] == 28
    assert info["qwen2.attention.head_count"] == 28
    assert info["qwen2.attention.head_count_kv"] == 4
    assert facts.model_info(ModelFiles(), None) == {"general.architecture": "vllm"}
    nested = {"model_type": "llava", "text_config": {"hidden_size": 64}}
    assert facts.model_info(ModelFiles(config=nested), 10)["llava.embedding_length"] == 64


def test_details() -> None:
    d = facts.details(_estimated(QWEN), 32768)
    assert msgspec.json.decode(msgspec.json.encode(d)) == {
        "parent_model": "", "format": "safetensors", "family": "qwen2", "families": ["qwen2"],
        "parameter_size": "7.6B", "quantization_level": "BF16", "context_length": 32768,
        "embedding_length": 3584}
    empty = msgspec.json.decode(msgspec.json.encode(facts.details(ModelFiles())))
    assert empty == {"parent_model": "", "format": "safetensors", "family": "vllm",
                     "families": ["vllm"], "parameter_size": "", "quantization_level": ""}


@pytest.mark.parametrize(
    ("n", "text"),
    [(7_615_616_512, "7.6B"), (8_000_000_000, "8B"), (135_000_000, "135M"),
     (494_032_768, "494.03M"), (22_000_000, "22M"), (558_000, "558K"), (558_208, "558K"),
     (999, "999"), (1_234_567, "1.23M")],
)
def test_human_number(n: int, text: str) -> None:
    assert facts.human_number(n) == text


@pytest.mark.parametrize(("config", "level"), [
    ({"torch_dtype": "bfloat16"}, "BF16"),
    ({"dtype": "float16"}, "F16"),
    # one spelling for a quantized checkpoint (the twins once said AWQ-4BIT and AWQ-INT4)
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "AWQ-INT4"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 8}}, "GPTQ-INT8"),
    ({"quantization_config": {"quant_method": "fp8"}, "torch_dtype": "bfloat16"}, "FP8"),
    ({"text_config": {"torch_dtype": "float32"}}, "F32"),
    ({}, ""),
])
def test_quantization_level(config: dict[str, object], level: str) -> None:
    assert facts.quantization_level(config) == level


def test_facts_from_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "vision_config": {}, "text_config": {"hidden_size": 64, "num_hidden_layers": 2,
                                             "max_position_embeddings": 8192,
                                             "num_attention_heads": 4,
                                             "num_key_value_heads": 1, "vocab_size": 100}}))
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05,
         "do_sample": True, "eos_token_id": [1, 2]}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "default", "template": "{{ messages }}"},
                           {"name": "tool_use", "template": "x"}]}))
    (tmp_path / "README.md").write_text("---\nlicense: gemma\n---\n# Gemma\n")
    files = facts.read_files(tmp_path)
    context = facts.context_length(files, ())
    assert context == 8192
    model_info = facts.model_info(files, context, basename="gemma")
    assert model_info["gemma3.context_length"] == 8192
    assert model_info["gemma3.attention.head_count_kv"] == 1
    assert files.parameters_from == "estimate" and model_info["general.parameter_count"] > 0
    assert files.template == "{{ messages }}"
    model = ModelConfig(name="g", source=str(tmp_path))
    assert facts.capabilities(files, model, ()).names() == ["completion", "vision"]
    assert files.license == "gemma"
    assert facts.format_parameters(files.generation).splitlines() == [
        f"{'temperature':<30} 0.6", f"{'top_p':<30} 0.95", f"{'top_k':<30} 20",
        f"{'repeat_penalty':<30} 1.05"]


def test_embedding_models_are_recognised(tmp_path: Path) -> None:
    model = ModelConfig(name="e", source=str(tmp_path))
    bert = ModelFiles(config={"architectures": ["BertModel"], "model_type": "bert"})
    assert facts.capabilities(bert, model, ()).names() == ["embedding"]
    st = ModelFiles(config={"architectures": ["MPNetModel"]}, sentence_transformers=True)
    assert facts.capabilities(st, model, ()).names() == ["embedding"]
    causal = ModelFiles(config={"architectures": ["Qwen2ForCausalLM"]})
    assert facts.capabilities(causal, model, ()).names() == ["completion"]
    # the engine flags win over what the files suggest
    assert facts.capabilities(bert, model, ("--runner", "generate")).names() == ["completion"]


def test_a_malformed_header_is_skipped_not_fatal(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": ["x", 2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [3, 2], "data_offsets": [8, 32]}})
    raw = header.encode()
    (tmp_path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    (tmp_path / "config.json").write_text("[1, 2]")  # not an object: no facts, no crash
    files = facts.read_files(tmp_path)
    assert files.parameter_count == 6 and files.parameters_from == "headers"
    assert files.config == {}
