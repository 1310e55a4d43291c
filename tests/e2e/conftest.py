"""Real-vLLM fixtures for this tier (defined in tests/e2e/fixtures.py for reuse by other tiers)."""

from tests.e2e.fixtures import tiny_model_dir, vllm_bin, vllm_embed_engine, vllm_engine

__all__ = ["tiny_model_dir", "vllm_bin", "vllm_embed_engine", "vllm_engine"]
