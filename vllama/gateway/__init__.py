"""The aiohttp gateway: Ollama's REST API and OpenAI pass-through in front of vLLM."""
