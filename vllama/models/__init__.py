"""Model management: Ollama-style names over the Hugging Face cache.

- `names` / `aliases`: pure name resolution and validation, the built-in alias table;
- `store.ModelStore`: list / find / show / rm / cp / create / overrides_for / pull;
- `pull`: Ollama progress objects while huggingface_hub downloads into the cache;
- `routes`: aiohttp handlers (/api/pull, /api/delete, /api/copy, /api/create, /api/push) and
  helpers for /api/tags and /api/show, reading the store from `app[routes.MODEL_STORE]`;
- `commands`: the `vllama pull|list|show|rm|cp|ps|aliases` implementations and
  `add_subparsers`.
"""
