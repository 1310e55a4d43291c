"""vllama: Ollama's API and ease in front of vLLM's throughput, run by systemd."""

__version__ = "0.1.0"
