"""Names, listings and per-endpoint error texts (reference §1.4, §3.4-3.6, §7)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from vllama.errors import BadRequest, NotFound
from vllama.translate import (
    INPUT_TOO_LONG,
    PROMPT_TOO_LONG,
    PULL_NOT_FOUND,
    check_model_name,
    context_overflow,
    details_from_config,
    digest,
    display_name,
    format_parameters,
    full_name,
    human_number,
    invalid_name,
    is_context_overflow,
    is_valid_name,
    model_info_from_config,
    model_required,
    not_found,
    resolve_name,
    tag_name,
)
from vllama.translate.gojson import go_value


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("llama3.2", True), ("llama3.2:latest", True), ("user/model:tag", True),
        ("host.com:8080/ns/model:v1.0", True), ("Qwen/Qwen2.5-7B-Instruct", True),
        ("_x", True), ("a" * 80, True), ("a" * 81, False), ("", False), ("-x", False),
        ("x:", False), ("x:-t", False), ("org.x/model", False), ("a//b", False), ("/x", False),
        ("x y", False), ("x:t/y", False), ("https://h/ns/m", True), ("a/b/c/d", False),
    ],
)
def test_is_valid_name(name: str, ok: bool) -> None:
    assert is_valid_name(name) is ok


def test_name_forms() -> None:
    assert full_name("x") == "registry.ollama.ai/library/x:latest"
    assert full_name("u/m:t") == "registry.ollama.ai/u/m:t"
    assert display_name("foo") == "foo:latest"
    assert display_name("registry.ollama.ai/library/foo:7b") == "foo:7b"
    assert display_name("Qwen/Qwen2.5") == "Qwen/Qwen2.5:latest"
    assert display_name("h.io/ns/m") == "h.io/ns/m:latest"
    assert tag_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct:latest"
    assert tag_name("llama3.2:1b") == "llama3.2:1b"
    assert tag_name("host:8000/m") == "host:8000/m:latest"


@pytest.mark.parametrize(
    ("requested", "known", "resolved"),
    [
        ("tiny", ["tiny"], "tiny"),
        ("tiny:latest", ["tiny"], "tiny"),
        ("TINY:Latest", ["tiny"], "tiny"),
        ("qwen/qwen2.5-7b-instruct", ["Qwen/Qwen2.5-7B-Instruct"], "Qwen/Qwen2.5-7B-Instruct"),
        ("alias", ["alias:latest"], "alias:latest"),
        ("alias:latest", ["alias:latest"], "alias:latest"),
        ("tiny:7b", ["tiny"], None),
        ("nope", ["tiny"], None),
        ("", ["tiny"], None),
    ],
)
def test_resolve_name(requested: str, known: list[str], resolved: str | None) -> None:
    assert resolve_name(requested, known) == resolved


def test_digest() -> None:
    d = digest("tiny")
    assert len(d) == 64 and int(d, 16) >= 0 and d == digest("tiny") != digest("tiny2")


@pytest.mark.parametrize(
    ("endpoint", "name", "cls", "message"),
    [
        ("generate", "nope", NotFound, "model 'nope' not found"),
        ("chat", "nope", NotFound, "model 'nope' not found"),
        ("delete", "nope", NotFound, "model 'nope' not found"),
        ("embed", "nope", NotFound, 'model "nope" not found, try pulling it first'),
        ("embeddings", "nope", NotFound, 'model "nope" not found, try pulling it first'),
        ("show", "foo", NotFound, "model 'foo:latest' not found"),
        ("copy", "src", NotFound, 'model "src" not found'),
    ],
)
def test_not_found(endpoint: Any, name: str, cls: type, message: str) -> None:
    err = not_found(endpoint, name)
    assert isinstance(err, cls) and err.message == message and err.status == 404


def test_pull_not_found() -> None:
    err = not_found("pull", "x")
    assert err.message == PULL_NOT_FOUND == "pull model manifest: file does not exist"
    assert err.status == 500


@pytest.mark.parametrize(
    ("endpoint", "status", "message"),
    [
        ("generate", 404, "model '' not found"), ("embed", 404, "model '' not found"),
        ("chat", 400, "model is required"), ("embeddings", 400, "model is required"),
        ("show", 400, "model is required"), ("delete", 400, "model is required"),
        ("pull", 400, "model is required"), ("push", 400, "model is required"),
        ("copy", 400, 'source "" is invalid'),
    ],
)
def test_model_required(endpoint: Any, status: int, message: str) -> None:
    err = model_required(endpoint)
    assert (err.status, err.message) == (status, message)


def test_invalid_name_texts() -> None:
    assert invalid_name("chat", "a b").message == "invalid model name"
    assert invalid_name("delete", "a b").message == 'name "a b" is invalid'
    assert invalid_name("copy", "a b", field="destination").message == (
        'destination "a b" is invalid')


def test_check_model_name() -> None:
    known = ["org.x/Model", "tiny"]
    assert check_model_name("chat", "org.x/model:latest", known) == "org.x/Model"
    with pytest.raises(BadRequest, match=r"^model is required$"):
        check_model_name("chat", "", known)
    with pytest.raises(NotFound, match=r"^model '' not found$"):
        check_model_name("generate", "", known)
    with pytest.raises(BadRequest, match=r"^invalid model name$"):
        check_model_name("generate", "bad name", known)
    with pytest.raises(NotFound, match=r"^model 'other' not found$"):
        check_model_name("generate", "other", known)


def test_format_parameters() -> None:
    text = format_parameters({"num_ctx": 4096, "stop": ["<|im_end|>", "User:"],
                              "temperature": 0.7, "top_k": 40.0, "use_mmap": True})
    assert text.split("\n") == [
        "num_ctx                        4096",
        'stop                           "<|im_end|>"',
        'stop                           "User:"',
        "temperature                    0.7",
        "top_k                          40",
        "use_mmap                       true",
    ]
    assert format_parameters({}) == ""


@pytest.mark.parametrize(
    ("value", "text"),
    [(1e6, "1e+06"), (123456.0, "123456"), (1e-5, "1e-05"), (0.0001, "0.0001"), (-2.5, "-2.5"),
     ('a"b', '"a\\"b"'), ("\n", '"\\n"'), (False, "false"), (3, "3")],
)
def test_go_value(value: Any, text: str) -> None:
    assert go_value(value) == text


QWEN = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28,
        "vocab_size": 152064, "intermediate_size": 18944, "num_attention_heads": 28,
        "num_key_value_heads": 4, "torch_dtype": "bfloat16", "tie_word_embeddings": False}


def test_model_info_from_config() -> None:
    info = model_info_from_config(QWEN, 32768, basename="Qwen/Qwen2.5-7B-Instruct")
    assert info["general.architecture"] == "qwen2"
    assert info["general.basename"] == "Qwen/Qwen2.5-7B-Instruct"
    assert 7.5e9 < info["general.parameter_count"] < 7.7e9
    assert info["qwen2.context_length"] == 32768
    assert info["qwen2.embedding_length"] == 3584
    assert info["qwen2.block_count"] == 28
    assert info["qwen2.attention.head_count"] == 28
    assert info["qwen2.attention.head_count_kv"] == 4
    assert model_info_from_config({}, None) == {"general.architecture": "vllm"}
    assert model_info_from_config({}, 2048, parameter_count=5)["general.parameter_count"] == 5
    nested = {"model_type": "llava", "text_config": {"hidden_size": 64}}
    assert model_info_from_config(nested, 10)["llava.embedding_length"] == 64


def test_details_from_config() -> None:
    d = details_from_config(QWEN, max_model_len=32768)
    assert msgspec.json.decode(msgspec.json.encode(d)) == {
        "parent_model": "", "format": "safetensors", "family": "qwen2", "families": ["qwen2"],
        "parameter_size": "7.6B", "quantization_level": "BF16", "context_length": 32768,
        "embedding_length": 3584}
    empty = msgspec.json.decode(msgspec.json.encode(details_from_config({})))
    assert empty == {"parent_model": "", "format": "safetensors", "family": "vllm",
                     "families": ["vllm"], "parameter_size": "", "quantization_level": ""}
    awq = details_from_config({"quantization_config": {"quant_method": "awq", "bits": 4}})
    assert awq.quantization_level == "AWQ-4BIT"


@pytest.mark.parametrize(
    ("n", "text"),
    [(7_615_616_512, "7.6B"), (8_000_000_000, "8B"), (135_000_000, "135M"),
     (558_000, "558K"), (999, "999"), (1_234_567, "1.23M")],
)
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


@pytest.mark.parametrize(
    ("message", "overflow"),
    [
        ("This model's maximum context length is 2048 tokens. However, you requested 3000 "
         "tokens (2990 in the messages, 10 in the completion).", True),
        ("The decoder prompt (length 5000) is longer than the maximum model length of 2048.",
         True),
        ("'max_tokens' must be at least 1", False),
    ],
)
def test_context_overflow(message: str, overflow: bool) -> None:
    assert is_context_overflow(message) is overflow


def test_context_overflow_texts() -> None:
    assert context_overflow("chat").message == PROMPT_TOO_LONG
    assert context_overflow("generate").status == 400
    assert context_overflow("embed").message == INPUT_TOO_LONG
