"""The tiny model generator (no vLLM needed): determinism, tokenizer, and the no-eos wiring."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from tests import tinymodel
from tests.tinymodel import FORBID_WEIGHT, SPECIAL_TOKENS, generate


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def read_safetensors(path: Path) -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32"
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"])
    return out


def test_same_seed_same_bytes(model_dir: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again")
    assert _files(again) == _files(model_dir)
    other = generate(tmp_path / "other", seed=1)
    assert _files(other)["model.safetensors"] != _files(model_dir)["model.safetensors"]


def test_files_and_size(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert names == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    }
    assert sum(p.stat().st_size for p in model_dir.iterdir()) < 4_000_000


def test_config(model_dir: Path, tok: Tokenizer) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (2, 128, 4)
    assert (cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"]) == (2, 32, 1024)
    assert cfg["max_position_embeddings"] == 2048
    assert cfg["torch_dtype"] == "float32"
    assert cfg["tie_word_embeddings"] is False
    assert cfg["eos_token_id"] == tok.token_to_id("<|im_end|>")
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"]


def test_qwen2_variant(tmp_path: Path) -> None:
    d = generate(tmp_path, arch="qwen2")
    assert json.loads((d / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    tensors = read_safetensors(d / "model.safetensors")
    assert tensors["model.layers.1.self_attn.k_proj.bias"].shape == (64,)


def test_unknown_arch_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch"):
        generate(tmp_path, arch="gpt2")


def test_special_tokens(model_dir: Path, tok: Tokenizer) -> None:
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == 1024
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == (
        "<|begin_of_text|>", "<|im_end|>", "<|pad|>",
    )
    assert {v["content"] for v in cfg["added_tokens_decoder"].values()} == set(SPECIAL_TOKENS)
    # A special token in text is one token, not split into bytes.
    assert tok.encode("<|im_start|>user").ids[0] == 3


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_tokenizer_round_trips_any_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_round_trips_unicode(tok: Tokenizer) -> None:
    text = "café naïve 日本語 привет 🙂🍝 → ½\ttab\nnewline"
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text
    assert len(enc.ids) < len(text.encode())  # BPE merged something


def test_chat_template_files(model_dir: Path) -> None:
    jinja = (model_dir / "chat_template.jinja").read_text()
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == jinja
    for needle in ("<|im_start|>", "<|im_end|>", "add_generation_prompt", "tool_calls", "tools"):
        assert needle in jinja
    # Well-formed: every block opened is closed (the real render is checked in tests/e2e
    # through vLLM's /tokenize; jinja2 is not in the project venv).
    tags = re.findall(r"{%-?\s*(\w+)", jinja)
    assert tags.count("if") == tags.count("endif")
    assert tags.count("for") == tags.count("endfor")
    assert jinja.count("{{") == jinja.count("}}")


def test_forbidden_tokens_wired_off(model_dir: Path, tok: Tokenizer) -> None:
    w = read_safetensors(model_dir / "model.safetensors")
    allowed = set(tinymodel.allowed_token_ids(tok))
    forbidden = set(range(1024)) - allowed
    assert set(range(len(SPECIAL_TOKENS))) <= forbidden
    assert 700 < len(allowed) < 1000
    for i in allowed:  # every allowed token is complete, printable text
        text = tok.decode([i])
        assert text.isprintable()
        assert "\ufffd" not in text
    # The constant channel: carried by every embedding, never written, hidden from layers.
    assert np.all(w["model.embed_tokens.weight"][:, 0] == 1.0)
    for layer in range(2):
        p = f"model.layers.{layer}."
        assert np.all(w[p + "self_attn.o_proj.weight"][0] == 0.0)
        assert np.all(w[p + "mlp.down_proj.weight"][0] == 0.0)
        assert w[p + "input_layernorm.weight"][0] == 0.0
        assert w[p + "post_attention_layernorm.weight"][0] == 0.0
    assert w["model.norm.weight"][0] == 1.0
    lm = w["lm_head.weight"]
    rows = sorted(forbidden)
    assert np.all(lm[rows, 0] == FORBID_WEIGHT)
    assert np.all(lm[rows, 1:] == 0.0)
    assert np.all(lm[sorted(allowed), 0] == 0.0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tinymodel.main([str(tmp_path / "m"), "--seed", "7"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").stat().st_size > 2_000_000
