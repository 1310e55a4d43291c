"""/api/tags, /api/show, /api/ps, /api/embed, /api/embeddings and the /v1 pass-through."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import msgspec

from tests.fake_vllm import FakeScript
from vllama.config import ModelConfig

from .conftest import MakeBed


async def test_tags_show_ps(make_bed: MakeBed, tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 2048, "torch_dtype": "float32", "vocab_size": 1024,
        "intermediate_size": 256}))
    (model_dir / "chat_template.jinja").write_text("{{ messages }}")
    (model_dir / "model.safetensors").write_bytes(b"\0" * 1000)
    bed = await make_bed(parameters={"temperature": 0.2, "stop": ["<|im_end|>"]},
                         extra_models=(ModelConfig(name="tiny", source=str(model_dir)),))
    tags = await (await bed.client.get("/api/tags")).json()
    names = {m["name"] for m in tags["models"]}
    assert names == {"fake:latest", "tiny:latest"}
    for m in tags["models"]:
        assert m["model"] == m["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", m["digest"])
        assert re.search(r"(Z|[+-]\d\d:\d\d)$", m["modified_at"])
        assert "details" in m
    tiny = next(m for m in tags["models"] if m["name"] == "tiny:latest")
    # the size of every file of the model, as Ollama counts every blob (not only weights)
    assert tiny["size"] == sum(p.stat().st_size for p in model_dir.iterdir())
    assert tiny["details"]["family"] == "llama"
    assert tiny["details"]["quantization_level"] == "F32"

    show = await (await bed.client.post("/api/show", data=b'{"name": "tiny"}')).json()
    assert show["model_info"]["general.architecture"] == "llama"
    assert show["model_info"]["llama.context_length"] == 2048
    assert show["model_info"]["llama.embedding_length"] == 128
    assert show["template"] == "{{ messages }}"
    assert show["capabilities"] == ["completion"]
    fake = await (await bed.client.post("/api/show", data=b'{"model": "fake"}')).json()
    assert fake["model_info"]["general.architecture"] == "vllm"
    assert fake["details"]["format"] == "safetensors"
    assert re.search(r'^temperature\s+0\.2$', fake["parameters"], re.M)
    assert re.search(r'^stop\s+"<\|im_end\|>"$', fake["parameters"], re.M)

    ps = await (await bed.client.get("/api/ps")).json()
    listed = {m["name"]: m for m in ps["models"]}
    assert "fake:latest" in listed  # an external upstream counts as loaded
    assert "tiny:latest" not in listed  # no engine runs it here
    assert listed["fake:latest"]["expires_at"].startswith("2")
    assert int(listed["fake:latest"]["expires_at"][:4]) > 2200


async def test_embed(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], runner="pooling", embedding_dim=8),
                         capabilities=("embedding",))
    resp = await bed.post("/api/embed", {"model": "fake", "input": ["a b c", "d e"]})
    assert resp.status == 200
    doc = await resp.json()
    assert len(doc["embeddings"]) == 2
    for vec in doc["embeddings"]:
        assert len(vec) == 8
        assert math.isclose(math.hypot(*vec), 1.0, rel_tol=1e-6)
    assert isinstance(doc["prompt_eval_count"], int) and doc["prompt_eval_count"] > 0
    assert isinstance(doc["total_duration"], int)
    sent = bed.state.bodies("/v1/embeddings")[-1]
    assert sent["truncate_prompt_tokens"] == -1 and "dimensions" not in sent
    small = await (await bed.post("/api/embed", {"model": "fake", "input": "a b",
                                                 "dimensions": 3})).json()
    assert len(small["embeddings"][0]) == 3
    assert math.isclose(math.hypot(*small["embeddings"][0]), 1.0, rel_tol=1e-6)
    empties: list[object] = ["", [], None]
    for empty in empties:
        doc = await (await bed.post("/api/embed", {"model": "fake", "input": empty})).json()
        assert doc == {"model": "fake", "embeddings": []}
    bad = await bed.post("/api/embed", {"model": "fake", "input": 5})
    assert bad.status == 400 and (await bad.json())["error"] == "invalid input type"
    legacy = await (await bed.post("/api/embeddings", {"model": "fake", "prompt": "a"})).json()
    assert len(legacy["embedding"]) == 8
    assert await (await bed.post("/api/embeddings", {"model": "fake"})).json() == {
        "embedding": []}


async def test_embed_on_generate_model_is_clear(make_bed: MakeBed) -> None:
    bed = await make_bed()
    resp = await bed.post("/api/embed", {"model": "fake", "input": "x"})
    assert resp.status == 400
    assert (await resp.json())["error"] == '"fake" does not support embeddings'


async def test_openai_pass_through(make_bed: MakeBed) -> None:
    bed = await make_bed(upstream_model="fake", name="alias")
    resp = await bed.post("/v1/chat/completions", {
        "model": "alias", "messages": [{"role": "user", "content": "x"}], "stream": True,
        "max_tokens": 3})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = await resp.read()
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(msgspec.json.decode(e)["object"] == "chat.completion.chunk" for e in events[:-1])
    assert bed.state.bodies("/v1/chat/completions")[-1]["model"] == "fake"
    plain = await bed.post("/v1/completions", {"model": "alias", "prompt": "x",
                                               "max_tokens": 2})
    assert (await plain.json())["object"] == "text_completion"
    missing = await bed.post("/v1/chat/completions", {"model": "nope", "messages": []})
    assert missing.status == 404
    err = (await missing.json())["error"]
    assert err["type"] == "not_found_error" and "nope" in err["message"]
    models = await (await bed.client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["alias"]
    assert (await bed.client.get("/v1/models/alias")).status == 200
    assert (await bed.client.get("/v1/models/zzz")).status == 404


async def test_upstream_unreachable_is_503_with_retry_after(make_bed: MakeBed) -> None:
    bed = await make_bed()
    await bed.upstream.close()
    resp = await bed.post("/api/chat", {"model": "fake", "messages": [
        {"role": "user", "content": "x"}]})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"  # the probe interval: when it may be back
    error = (await resp.json())["error"]
    assert "every upstream is down" in error and "unreachable" in error


async def test_context_overflow_in_ollamas_words(make_bed: MakeBed) -> None:
    bed = await make_bed(FakeScript(served_names=["fake"], max_model_len=8))
    long_text = " ".join(["word"] * 50)
    resp = await bed.post("/api/chat", {"model": "fake", "messages": [
        {"role": "user", "content": long_text}]})
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(
        "the prompt is longer than the context length currently available to the model")
    pooled = await make_bed(FakeScript(served_names=["fake"], runner="pooling",
                                       max_model_len=8))
    resp = await pooled.post("/api/embed", {"model": "fake", "input": long_text,
                                            "truncate": False})
    assert resp.status == 400
    assert (await resp.json())["error"] == "the input length exceeds the context length"
