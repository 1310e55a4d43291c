"""Built-in Ollama-style names for popular models, mapped to the Hugging Face repos vLLM loads.

The table is data, not logic: `vllama aliases` prints it, and `names.resolve` consults it after
the aliases from the config file. Each family names the tag `latest` stands for, the way
`ollama pull qwen2.5` means `qwen2.5:7b`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

# family -> (default tag, {tag: repo id}). Tags are lower-case, as Ollama spells them.
_FAMILIES: Final[dict[str, tuple[str, dict[str, str]]]] = {
    "qwen2.5": ("7b", {
        "0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
        "1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
        "3b": "Qwen/Qwen2.5-3B-Instruct",
        "7b": "Qwen/Qwen2.5-7B-Instruct",
        "14b": "Qwen/Qwen2.5-14B-Instruct",
        "32b": "Qwen/Qwen2.5-32B-Instruct",
        "72b": "Qwen/Qwen2.5-72B-Instruct",
    }),
    "qwen2.5-coder": ("7b", {
        "0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "1.5b": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        "3b": "Qwen/Qwen2.5-Coder-3B-Instruct",
        "7b": "Qwen/Qwen2.5-Coder-7B-Instruct",
        "14b": "Qwen/Qwen2.5-Coder-14B-Instruct",
        "32b": "Qwen/Qwen2.5-Coder-32B-Instruct",
    }),
    "qwen3": ("8b", {
        "0.6b": "Qwen/Qwen3-0.6B",
        "1.7b": "Qwen/Qwen3-1.7B",
        "4b": "Qwen/Qwen3-4B",
        "8b": "Qwen/Qwen3-8B",
        "14b": "Qwen/Qwen3-14B",
        "32b": "Qwen/Qwen3-32B",
        "30b": "Qwen/Qwen3-30B-A3B",
        "235b": "Qwen/Qwen3-235B-A22B",
    }),
    "llama3": ("8b", {
        "8b": "meta-llama/Meta-Llama-3-8B-Instruct",
        "70b": "meta-llama/Meta-Llama-3-70B-Instruct",
    }),
    "llama3.1": ("8b", {
        "8b": "meta-llama/Llama-3.1-8B-Instruct",
        "70b": "meta-llama/Llama-3.1-70B-Instruct",
        "405b": "meta-llama/Llama-3.1-405B-Instruct",
    }),
    "llama3.2": ("3b", {
        "1b": "meta-llama/Llama-3.2-1B-Instruct",
        "3b": "meta-llama/Llama-3.2-3B-Instruct",
    }),
    "llama3.3": ("70b", {
        "70b": "meta-llama/Llama-3.3-70B-Instruct",
    }),
    "mistral": ("7b", {
        "7b": "mistralai/Mistral-7B-Instruct-v0.3",
    }),
    "mistral-nemo": ("12b", {
        "12b": "mistralai/Mistral-Nemo-Instruct-2407",
    }),
    "mixtral": ("8x7b", {
        "8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "8x22b": "mistralai/Mixtral-8x22B-Instruct-v0.1",
    }),
    "gemma2": ("9b", {
        "2b": "google/gemma-2-2b-it",
        "9b": "google/gemma-2-9b-it",
        "27b": "google/gemma-2-27b-it",
    }),
    "gemma3": ("4b", {
        "1b": "google/gemma-3-1b-it",
        "4b": "google/gemma-3-4b-it",
        "12b": "google/gemma-3-12b-it",
        "27b": "google/gemma-3-27b-it",
    }),
    "phi3": ("3.8b", {
        "3.8b": "microsoft/Phi-3-mini-4k-instruct",
        "mini": "microsoft/Phi-3-mini-4k-instruct",
        "14b": "microsoft/Phi-3-medium-4k-instruct",
        "medium": "microsoft/Phi-3-medium-4k-instruct",
    }),
    "phi3.5": ("3.8b", {
        "3.8b": "microsoft/Phi-3.5-mini-instruct",
    }),
    "phi4": ("14b", {
        "14b": "microsoft/phi-4",
    }),
    "phi4-mini": ("3.8b", {
        "3.8b": "microsoft/Phi-4-mini-instruct",
    }),
    "deepseek-r1": ("8b", {
        "1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "14b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        "32b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        "70b": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    }),
    "smollm2": ("1.7b", {
        "135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
        "1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    }),
    # Embedding models.
    "nomic-embed-text": ("v1.5", {
        "v1.5": "nomic-ai/nomic-embed-text-v1.5",
    }),
    "bge-m3": ("567m", {
        "567m": "BAAI/bge-m3",
    }),
    "bge-large": ("335m", {
        "335m": "BAAI/bge-large-en-v1.5",
    }),
    "all-minilm": ("22m", {
        "22m": "sentence-transformers/all-MiniLM-L6-v2",
        "l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
        "33m": "sentence-transformers/all-MiniLM-L12-v2",
        "l12-v2": "sentence-transformers/all-MiniLM-L12-v2",
    }),
    "mxbai-embed-large": ("335m", {
        "335m": "mixedbread-ai/mxbai-embed-large-v1",
        "v1": "mixedbread-ai/mxbai-embed-large-v1",
    }),
    "snowflake-arctic-embed": ("335m", {
        "335m": "Snowflake/snowflake-arctic-embed-l",
        "110m": "Snowflake/snowflake-arctic-embed-m",
        "33m": "Snowflake/snowflake-arctic-embed-s",
    }),
}


def _flatten() -> dict[str, str]:
    table: dict[str, str] = {}
    for family, (default, tags) in _FAMILIES.items():
        for tag, repo in tags.items():
            table[f"{family}:{tag}"] = repo
        table[f"{family}:latest"] = tags[default]
    return table


# "family:tag" -> repo id, `:latest` included. Read-only so no caller can mutate shared state.
BUILTIN_ALIASES: Final = MappingProxyType(_flatten())


def builtin_table() -> list[tuple[str, str]]:
    """(name, repo) rows in a stable order for `vllama aliases`: families as declared, each
    family's `latest` first."""
    rows: list[tuple[str, str]] = []
    for family, (default, tags) in _FAMILIES.items():
        rows.append((f"{family}:latest", tags[default]))
        rows.extend((f"{family}:{tag}", repo) for tag, repo in tags.items())
    return rows
