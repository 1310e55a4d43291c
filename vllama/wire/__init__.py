"""Wire shapes (msgspec Structs) for the two APIs vllama speaks: Ollama's on the client side
(`wire.ollama`) and OpenAI/vLLM's on the upstream side (`wire.openai`). No I/O here."""
