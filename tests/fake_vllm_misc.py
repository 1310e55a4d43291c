"""The fake vLLM's non-generating endpoints: embeddings (pooling runner), /tokenize,
/v1/models, /health, /ping, /version, /load and /metrics."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from aiohttp import web

from tests import fake_vllm_gen as gen
from tests.fake_vllm_state import (
    FAKE_SCRIPT,
    FAKE_STATE,
    FakeScript,
    FakeState,
    check_model,
    detail_response,
    error_response,
    json_body,
    json_response,
    too_long,
)


def _embedding_texts(value: Any) -> list[tuple[str, int]]:
    """(seed text, token count) per input: strings, token ids, or lists of either."""
    if isinstance(value, str):
        return [(value, len(gen.text_prompt_ids(value)))]
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [(" ".join(map(str, value)), len(value))]
    if isinstance(value, list):
        return [item for v in value for item in _embedding_texts(v)]
    return []


async def embeddings(request: web.Request) -> web.StreamResponse:
    script = request.app[FAKE_SCRIPT]
    if script.runner != "pooling":
        return detail_response(404, "Not Found")
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    if (err := check_model(script, body)) is not None:
        return err
    if body.get("dimensions") is not None:
        return error_response(
            f"Model {script.served_names[0]!r} does not support Matryoshka embeddings; "
            f"dimensions must be unset (received dimensions={body['dimensions']})."
        )
    truncate = body.get("truncate_prompt_tokens")
    data, total = [], 0
    for i, (text, full) in enumerate(_embedding_texts(body.get("input"))):
        count = full
        if isinstance(truncate, int):
            count = min(full, script.max_model_len if truncate < 0 else truncate)
        elif full > script.max_model_len:
            return too_long(script, full)
        total += count
        vec = gen.embedding(text, script.embedding_dim)
        out: list[float] | str = vec
        if body.get("encoding_format") == "base64":
            out = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"index": i, "object": "embedding", "embedding": out})
    usage = {"prompt_tokens": total, "total_tokens": total, "completion_tokens": 0,
             "prompt_tokens_details": None}
    return json_response(
        {"id": gen.new_id("embd"), "object": "list", "created": int(time.time()),
         "model": script.served_names[0], "data": data, "usage": usage}
    )


async def tokenize(request: web.Request) -> web.StreamResponse:
    script = request.app[FAKE_SCRIPT]
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    if (err := check_model(script, body)) is not None:
        return err
    messages = body.get("messages")
    if isinstance(messages, list):
        ids, strs = gen.chat_prompt_ids(messages), gen.chat_prompt_strs(messages)
    else:
        prompt = body.get("prompt")
        ids = gen.text_prompt_ids(prompt)
        strs = ["<s>", *gen.words(prompt if isinstance(prompt, str) else "")]
        if body.get("add_special_tokens") is False:
            ids, strs = ids[1:], strs[1:]
    return json_response(
        {
            "count": len(ids),
            "max_model_len": script.max_model_len,
            "tokens": ids,
            "token_strs": strs if body.get("return_token_strs") else None,
        }
    )


async def models(request: web.Request) -> web.StreamResponse:
    script = request.app[FAKE_SCRIPT]
    now = int(time.time())
    perm = {
        "id": gen.new_id("modelperm"), "object": "model_permission", "created": now,
        "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
        "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
        "organization": "*", "group": None, "is_blocking": False,
    }
    data = [
        {"id": name, "object": "model", "created": now, "owned_by": "vllm",
         "root": script.model_path, "parent": None, "max_model_len": script.max_model_len,
         "permission": [perm]}
        for name in script.served_names
    ]
    return json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200 if request.app[FAKE_SCRIPT].healthy else 503)


async def ping(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200 if request.app[FAKE_SCRIPT].healthy else 503)


async def version(request: web.Request) -> web.StreamResponse:
    return json_response({"version": request.app[FAKE_SCRIPT].version})


async def load(request: web.Request) -> web.StreamResponse:
    return json_response({"server_load": request.app[FAKE_STATE].running})


def metrics_text(script: FakeScript, state: FakeState) -> str:
    """A slice of vLLM's Prometheus output (labels sorted, like prometheus_client prints)."""
    labels = f'engine="0",model_name="{script.served_names[0]}"'
    gauges = [
        ("vllm:num_requests_running", "Number of requests in model execution batches.",
         state.running),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", 0),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
         0.01 * state.running),
    ]
    counters = [
        ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", 0),
        ("vllm:generation_tokens_total", "Number of generation tokens processed.", state.tokens),
    ]
    lines = []
    for kind, rows in (("gauge", gauges), ("counter", counters)):
        for name, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                      f"{name}{{{labels}}} {float(value)}"]
    return "\n".join(lines) + "\n"


async def metrics(request: web.Request) -> web.StreamResponse:
    text = metrics_text(request.app[FAKE_SCRIPT], request.app[FAKE_STATE])
    return web.Response(text=text, content_type="text/plain", charset="utf-8")




async def sleep(request: web.Request) -> web.StreamResponse:
    """POST /sleep?level=N (a JSON body is ignored, as in vLLM)."""
    script = request.app[FAKE_SCRIPT]
    if not script.sleep_mode:
        return error_response("Sleep mode is not enabled. Use --enable-sleep-mode.",
                              status=500, err_type="InternalServerError")
    script.sleeping = True
    return web.Response(status=200)


async def wake_up(request: web.Request) -> web.StreamResponse:
    request.app[FAKE_SCRIPT].sleeping = False
    return web.Response(status=200)


async def is_sleeping(request: web.Request) -> web.StreamResponse:
    return json_response({"is_sleeping": request.app[FAKE_SCRIPT].sleeping})


async def fake_wedge(request: web.Request) -> web.StreamResponse:
    """Not vLLM's: wedge the engine core (`?on=0` frees it again), like vllm#36960."""
    request.app[FAKE_SCRIPT].wedged = request.query.get("on", "1") != "0"
    return web.Response(status=200)


async def fake_info(request: web.Request) -> web.StreamResponse:
    """Not vLLM's: how this fake was started, so tests can check a placement, and the bodies
    of the generate requests it was sent (what vllama forwarded)."""
    script = request.app[FAKE_SCRIPT]
    sent = [{"path": r.path, "body": r.body} for r in request.app[FAKE_STATE].requests
            if r.path in ("/v1/chat/completions", "/v1/completions")]
    return json_response({**script.launch, "sleeping": script.sleeping, "requests": sent})
