"""Capabilities and context length read from the engine flags the supervisor will pass."""

from __future__ import annotations

import pytest

from vllama.config import ModelConfig
from vllama.gateway.targets import capabilities, max_model_len


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ((), ["completion"]),
        (("--enable-auto-tool-choice", "--tool-call-parser", "hermes"), ["completion", "tools"]),
        (("--enable_auto_tool_choice",), ["completion", "tools"]),
        (("--enable-auto-tool-choice", "--no-enable-auto-tool-choice"), ["completion"]),
        (("--reasoning-parser=qwen3",), ["completion", "thinking"]),
        (("--runner", "pooling"), ["embedding"]),
        (("--convert=embed",), ["embedding"]),
    ],
)
def test_capabilities_from_engine_flags(args: tuple[str, ...], names: list[str]) -> None:
    model = ModelConfig(name="m", source="/m", vllm_args=args)
    assert capabilities(model, (), None).names() == names


@pytest.mark.parametrize(
    ("args", "length"),
    [(("--max-model-len", "4096"),  4096), (("--max_model_len=8k",), 8192), ((), 2048)],
)
def test_max_model_len(args: tuple[str, ...], length: int) -> None:
    model = ModelConfig(name="m", source="/m", vllm_args=args)
    assert max_model_len(model, (), {"max_position_embeddings": 2048}) == length
