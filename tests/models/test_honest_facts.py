"""parameter_size, quantization_level and size from the safetensors headers for every model
that has them, configured or not; config.json's estimate only without headers, and /api/show
says which (`model_info["general.parameter_count_source"]`)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from tests.unit.test_weights import MINILM_CONFIG, MINILM_PARAMETERS, minilm_tensors, write_file
from vllama.config import ModelConfig
from vllama.models import facts
from vllama.models.store import ModelStore
from vllama.models.weights import WeightsInfo, estimate_parameters

LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def minilm(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(MINILM_CONFIG))
    (root / "modules.json").write_text("[]")
    write_file(root / "model.safetensors", minilm_tensors())
    return root


def test_served_and_unserved_models_count_from_the_headers(tmp_path: Path) -> None:
    served, unserved = minilm(tmp_path / "served"), minilm(tmp_path / "unserved")
    no_headers = tmp_path / "config-only"
    no_headers.mkdir()
    (no_headers / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    store = ModelStore(None, tmp_path / "state",
                       models=(ModelConfig(name="minilm", source=str(served)),),
                       config_aliases={"mini2": str(unserved), "guess": str(no_headers)})
    tags = {m.name: msgspec.to_builtins(store.tag_entry(m)) for m in store.list_models()}
    stored = MINILM_PARAMETERS * 4 + 512 * 8  # the int64 position_ids buffer is stored too
    for name in ("minilm:latest", "mini2:latest"):
        tag = tags[name]
        assert tag["details"]["parameter_size"] == "22.71M"  # not 37.60M, the decoder guess
        assert tag["details"]["quantization_level"] == "F32"
        assert tag["size"] == stored
        assert tag["capabilities"] == ["embedding"]
        info = store.show(name).model_info
        assert info["general.parameter_count"] == MINILM_PARAMETERS
        assert info[facts.PARAMETER_COUNT_SOURCE] == "headers"
    # no headers: the estimate, said to be one; the size is what is on disk
    guess = tags["guess:latest"]
    estimate = estimate_parameters(LLAMA_CONFIG)
    assert estimate and guess["details"]["parameter_size"] == facts.human_number(estimate)
    assert guess["size"] == (no_headers / "config.json").stat().st_size
    assert guess["details"]["quantization_level"] == "BF16"
    assert store.show("guess").model_info[facts.PARAMETER_COUNT_SOURCE] == "estimate"


@pytest.mark.parametrize(
    ("config", "weights", "level"),
    [
        # the headers say what the checkpoint stores, whatever config.json claims
        ({"torch_dtype": "bfloat16"}, WeightsInfo(10, 40, dtype="F32", source="headers"), "F32"),
        ({}, WeightsInfo(10, 10, dtype="F8_E4M3", source="headers"), "FP8"),
        ({}, WeightsInfo(10, 20, dtype="BF16", source="headers"), "BF16"),
        # a declared quantization names the method and bits
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}},
         WeightsInfo(10, 5, dtype="I32", source="headers"), "GPTQ-INT4"),
        # packed integers without a declaration: config.json's dtype, as before
        ({"torch_dtype": "float16"}, WeightsInfo(10, 5, dtype="I32", source="headers"), "F16"),
        # an estimate knows no stored dtype
        ({"torch_dtype": "bfloat16"}, WeightsInfo(10, 40, dtype="F32", source="estimate"),
         "BF16"),
    ],
)
def test_quantization_level_from_headers(config: dict[str, object], weights: WeightsInfo,
                                         level: str) -> None:
    assert facts.quantization_level(config, weights) == level


@pytest.mark.parametrize(
    ("weights", "on_disk", "size"),
    [(WeightsInfo(10, 40, source="headers"), 100, 40),
     (WeightsInfo(10, 20, source="estimate"), 100, 100),
     (WeightsInfo(0, 0), 100, 100)],
)
def test_model_size(weights: WeightsInfo, on_disk: int, size: int) -> None:
    assert facts.model_size(facts.ModelFiles(weights=weights), on_disk) == size
