"""What the Hugging Face hub says about a repo's weights without downloading them: config.json
and the safetensors headers (huggingface_hub reads each header with a range request), for
`vllama fit` on a model that is not pulled.

Blocking (huggingface_hub is synchronous); the CLI calls it directly. Every hub failure
becomes a vllama error with a text to act on; a header the hub library cannot parse is a
problem noted in the result (its shard is skipped and config.json's estimate is used), never
a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllama.errors import NotFound, UpstreamError, VllamaError
from vllama.models.weights import INDEX_NAME, WeightsInfo, summarize, tensors_from_hub

SINGLE_FILE = "model.safetensors"
TIMEOUT = 30.0  # seconds per hub request


def hub_weights(repo: str, *, endpoint: str | None, token: str | None
                ) -> tuple[dict[str, Any], WeightsInfo]:
    """(config.json, weights) of a hub repo, reading only metadata. Raises VllamaError."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    site = endpoint or "https://huggingface.co"
    try:
        info = api.model_info(repo, timeout=TIMEOUT)
        names = [s.rfilename for s in info.siblings or []]
        config = _json(api, repo, "config.json", token) if "config.json" in names else {}
        shards = _shards(api, repo, names, token)
    except Exception as exc:
        raise _error(exc, repo, site) from exc
    if not shards:
        raise VllamaError(f"{repo} has no safetensors weights on {site}: vllama cannot tell "
                          "what it needs")
    metadata: dict[str, Any] = {}
    problems: list[str] = []
    for shard in shards:
        try:
            metadata[shard] = api.parse_safetensors_file_metadata(repo, shard, token=token,
                                                                  timeout=TIMEOUT)
        except Exception as exc:
            if _is_parse_error(exc):  # a malformed header: this shard only
                problems.append(f"{shard}: {exc}")
                continue
            raise _error(exc, repo, site) from exc
    tensors, notes = tensors_from_hub(metadata)
    weights = summarize(tensors, config, problems=[*problems, *notes],
                        complete=not problems)
    return (config if isinstance(config, dict) else {}), weights


def _shards(api: Any, repo: str, names: Sequence[str], token: str | None) -> list[str]:
    """The safetensors files holding the model: the index's shards, the single file, or
    the top-level .safetensors files (consolidated copies last resort, as on disk)."""
    if INDEX_NAME in names:
        weight_map = _json(api, repo, INDEX_NAME, token).get("weight_map")
        if isinstance(weight_map, dict):
            return sorted({v for v in weight_map.values() if isinstance(v, str)})
    if SINGLE_FILE in names:
        return [SINGLE_FILE]
    top = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)
    return [n for n in top if not n.startswith("consolidated")] or top


def _json(api: Any, repo: str, filename: str, token: str | None) -> dict[str, Any]:
    """A small JSON file of the repo, read into memory (nothing lands in any cache)."""
    from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status

    url = hf_hub_url(repo, filename, endpoint=api.endpoint)
    # The API object's own headers: its token (or the saved one), user agent.
    headers = api._build_hf_headers(token=token)
    response = get_session().get(url, headers=headers, timeout=TIMEOUT, follow_redirects=True)
    hf_raise_for_status(response)
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _is_parse_error(exc: BaseException) -> bool:
    from huggingface_hub.errors import SafetensorsParsingError

    # The hub library multiplies a shape it has not checked: a bad header can raise plain
    # TypeError/ValueError too.
    return isinstance(exc, (SafetensorsParsingError, TypeError, ValueError))


def _error(exc: BaseException, repo: str, site: str) -> VllamaError:
    from huggingface_hub import errors as hf

    if isinstance(exc, VllamaError):
        return exc
    if isinstance(exc, hf.GatedRepoError):
        return VllamaError(f"{repo} is a gated model: accept its license at {site}/{repo} and "
                           "set HF_TOKEN to an access token of that account", status=401)
    if isinstance(exc, (hf.RepositoryNotFoundError, hf.RevisionNotFoundError)):
        return NotFound(f"model '{repo}' not found on {site}")
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return UpstreamError(f"reading {repo}'s metadata from {site}: {first}")
