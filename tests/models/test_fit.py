"""`vllama fit` and `vllama list --fit`: a model's need (weights + KV cache + overhead, the
scheduler's arithmetic) against injected NVML snapshots of 1 and 8 GPUs, or host memory; the
model read from the cache or, metadata only, from the fake hub."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests import fake_hf_hub as fh
from tests import tinymodel
from tests.models.conftest import Hub, pull_all
from vllama.config import Config
from vllama.errors import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK
from vllama.gpu import GpuInfo, GpuSnapshot
from vllama.models import commands
from vllama.models.commands import CliContext
from vllama.models.store import ModelStore

GiB = 1 << 30
OVERHEAD = 2 * GiB  # vllama's default per GPU (memory.GPU_OVERHEAD_BYTES)


def gpus(count: int, total_gib: float = 80, free_gib: float = 79) -> GpuSnapshot:
    return GpuSnapshot(True, "", tuple(
        GpuInfo(index=i, name="NVIDIA H100 80GB HBM3", memory_total=int(total_gib * GiB),
                memory_used=int((total_gib - free_gib) * GiB), memory_free=int(free_gib * GiB))
        for i in range(count)))


NO_GPU = GpuSnapshot(False, "no NVIDIA GPU: test")


def ctx_for(store: ModelStore, snapshot: GpuSnapshot, *, meminfo: tuple[int, int] = (
        64 * GiB, 48 * GiB)) -> CliContext:
    return CliContext(store_factory=lambda: store, out=io.StringIO(), err=io.StringIO(),
                      config=Config(), gpu_snapshot=lambda: snapshot, meminfo=lambda: meminfo)


def out_of(ctx: CliContext) -> str:
    assert isinstance(ctx.out, io.StringIO)
    return ctx.out.getvalue()


def err_of(ctx: CliContext) -> str:
    assert isinstance(ctx.err, io.StringIO)
    return ctx.err.getvalue()


# --- checkpoints on the fake hub: headers only (the hub is asked for nothing else) -----------


def header_only(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A safetensors file cut after its header: all a metadata read may fetch."""
    width = {"BF16": 2, "F32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * width[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def llama(*, hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int,
          context: int) -> tuple[dict[str, Any], dict[str, tuple[str, list[int]]]]:
    """A Llama-architecture config.json and its BF16 tensors."""
    head_dim = hidden // heads
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "intermediate_size": inter, "vocab_size": vocab,
              "max_position_embeddings": context, "torch_dtype": "bfloat16",
              "tie_word_embeddings": False}
    t: dict[str, tuple[str, list[int]]] = {
        "model.embed_tokens.weight": ("BF16", [vocab, hidden]),
        "model.norm.weight": ("BF16", [hidden]), "lm_head.weight": ("BF16", [vocab, hidden])}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = ("BF16", [heads * head_dim, hidden])
        t[p + "self_attn.k_proj.weight"] = ("BF16", [kv_heads * head_dim, hidden])
        t[p + "self_attn.v_proj.weight"] = ("BF16", [kv_heads * head_dim, hidden])
        t[p + "self_attn.o_proj.weight"] = ("BF16", [hidden, heads * head_dim])
        t[p + "mlp.gate_proj.weight"] = ("BF16", [inter, hidden])
        t[p + "mlp.up_proj.weight"] = ("BF16", [inter, hidden])
        t[p + "mlp.down_proj.weight"] = ("BF16", [hidden, inter])
        t[p + "input_layernorm.weight"] = ("BF16", [hidden])
        t[p + "post_attention_layernorm.weight"] = ("BF16", [hidden])
    return config, t


# Llama-3.1-8B and -70B shapes: 8.03B and 70.6B parameters, 128k context.
L8B = llama(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256,
            context=131072)
L70B = llama(hidden=8192, layers=80, heads=64, kv_heads=8, inter=28672, vocab=128256,
             context=131072)


def add_repo(hub: Hub, repo: str, model: tuple[dict[str, Any], dict[str, Any]], *,
             shards: int = 1) -> int:
    """Put a checkpoint on the hub (sharded with an index when shards > 1); its parameters."""
    config, tensors = model
    files: dict[str, bytes] = {"config.json": json.dumps(config).encode()}
    names = list(tensors)
    if shards == 1:
        files["model.safetensors"] = header_only(tensors)
    else:
        per = -(-len(names) // shards)
        weight_map: dict[str, str] = {}
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
            files[shard] = header_only(part)
            weight_map |= dict.fromkeys(part, shard)
        files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    hub.app[fh.HUB_REPOS][repo] = fh.HubRepo(repo, files)
    return sum(math.prod(shape) for _, shape in tensors.values())


async def fit(ctx: CliContext, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    code = await asyncio.to_thread(commands.cmd_fit, ctx, *args, json_mode=True, **kwargs)
    text = out_of(ctx).strip().splitlines()
    return code, json.loads(text[-1]) if text else None


# --- the verdicts -----------------------------------------------------------------------------


async def test_an_8b_model_on_one_gpu(store: ModelStore, hub: Hub) -> None:
    params = add_repo(hub, "meta/llama-8b", L8B, shards=4)
    code, doc = await fit(ctx_for(store, gpus(1)), "meta/llama-8b", context=8192)
    assert code == EXIT_OK
    assert (doc["model"], doc["source"], doc["parameters"], doc["parameter_source"]) == (
        "meta/llama-8b:latest", "hub", params, "headers")
    assert 8.0e9 < params < 8.1e9 and doc["quantization"] == "BF16"
    assert doc["devices"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "kind": "gpu",
                               "free_bytes": 79 * GiB, "total_bytes": 80 * GiB}]
    kv_per_token = 2 * 32 * 8 * 128 * 2  # K and V, layers, KV heads, head size, BF16
    default = doc["default"]
    assert default["context"] == 131072 and default["verdict"] == "fits"
    assert default["devices"] == [0] and default["tensor_parallel"] == 1
    assert default["weights_bytes"] == params * 2
    assert default["kv_cache_bytes"] == kv_per_token * 131072  # 16 GiB
    assert default["overhead_bytes"] == OVERHEAD
    assert default["total_bytes"] == params * 2 + kv_per_token * 131072 + OVERHEAD
    at = doc["at_context"]
    assert at["context"] == 8192 and at["kv_cache_bytes"] == kv_per_token * 8192
    assert at["verdict"] == "fits"
    assert doc["largest_context"] == 131072  # the model's own: all of it fits
    assert doc["problems"] == []
    # metadata only: the hub was asked for headers, never for the weights
    ranges = [r for _, r in hub.state.range_requests]
    assert ranges and all(r == "bytes=0-100000" for r in ranges)


async def test_a_70b_model_needs_tensor_parallel(store: ModelStore, hub: Hub) -> None:
    add_repo(hub, "meta/llama-70b", L70B, shards=8)
    # One 80 GB GPU: 131 GiB of weights never fit, at any context.
    ctx = ctx_for(store, gpus(1))
    code, doc = await fit(ctx, "meta/llama-70b", context=8192)
    assert code == EXIT_FAILURE
    for at in (doc["default"], doc["at_context"]):
        assert at["verdict"] == "does_not_fit" and not at["fits_when_empty"]
    assert doc["largest_context"] == 0
    # Eight: four GPUs at the model's 128k context, two at 8k.
    code, doc = await fit(ctx_for(store, gpus(8)), "meta/llama-70b", context=8192)
    assert code == EXIT_OK
    default, at = doc["default"], doc["at_context"]
    assert (default["verdict"], default["tensor_parallel"]) == ("fits_tensor_parallel", 4)
    assert (at["verdict"], at["tensor_parallel"]) == ("fits_tensor_parallel", 2)
    assert len(default["devices"]) == 4 and len(at["devices"]) == 2
    assert at["per_device_bytes"] * 2 == at["total_bytes"]
    assert doc["largest_context"] == 131072


async def test_busy_gpus_and_the_largest_context(store: ModelStore, hub: Hub) -> None:
    add_repo(hub, "meta/llama-8b", L8B)
    # 24 GiB free on one GPU: the 8B weights (15 GiB) fit, 128k of KV (16 GiB) does not.
    ctx = ctx_for(store, gpus(1, free_gib=24))
    code, doc = await fit(ctx, "meta/llama-8b")
    assert code == EXIT_FAILURE
    assert doc["default"]["verdict"] == "does_not_fit" and doc["default"]["fits_when_empty"]
    largest = doc["largest_context"]
    assert 8192 < largest < 131072
    # the largest context it names does fit, and 128 MiB more KV does not (the figure is
    # conservative by the utilization fraction's rounding, 1/10000 of the GPU)
    code, doc = await fit(ctx_for(store, gpus(1, free_gib=24)), "meta/llama-8b",
                          context=largest)
    assert code == EXIT_OK and doc["at_context"]["verdict"] == "fits"
    code, doc = await fit(ctx_for(store, gpus(1, free_gib=24)), "meta/llama-8b",
                          context=largest + 1024)
    assert code == EXIT_FAILURE


async def test_text_report(store: ModelStore, hub: Hub) -> None:
    add_repo(hub, "meta/llama-70b", L70B, shards=2)
    ctx = ctx_for(store, gpus(8))
    code = await asyncio.to_thread(commands.cmd_fit, ctx, "meta/llama-70b", context=200000)
    assert code == EXIT_OK
    text = out_of(ctx)
    assert "model        meta/llama-70b:latest (hub)" in text
    assert "(safetensors headers), BF16" in text
    assert text.count("GPU ") >= 8 and "131072" in text
    assert "fits with 4 GPUs (tensor parallel)" in text
    assert "largest context that fits now: 131072 tokens" in text
    assert "note: 200000 tokens is more than the model's own context (131072)" in text


# --- where the model comes from ---------------------------------------------------------------


async def test_a_pulled_model_on_the_host(store: ModelStore, hub: Hub) -> None:
    assert (await pull_all(store, "tiny/llama"))[-1] == {"status": "success"}
    hub.state.requests.clear()
    ctx = ctx_for(store, NO_GPU, meminfo=(64 * GiB, 48 * GiB))
    code, doc = await fit(ctx, "tiny/llama")
    assert code == EXIT_OK
    assert doc["source"] == "cache" and doc["parameter_source"] == "headers"
    assert doc["devices"] == [{"index": -1, "name": "host", "kind": "cpu",
                               "free_bytes": 48 * GiB, "total_bytes": 64 * GiB}]
    assert doc["default"]["verdict"] == "fits" and doc["default"]["devices"] == []
    assert doc["default"]["context"] == 2048
    assert not hub.state.requests  # a model in the cache needs no hub


async def test_list_fit(store: ModelStore, hub: Hub) -> None:
    await pull_all(store, "tiny/llama")
    ctx = ctx_for(store, gpus(1))
    assert await asyncio.to_thread(commands.cmd_list, ctx, fit=True) == EXIT_OK
    lines = out_of(ctx).splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "CONTEXT", "NEEDS", "FITS", "LARGEST",
                                "CONTEXT"]
    row = next(line for line in lines if line.startswith("tiny/llama:latest"))
    assert "2048" in row and "fits (GPU 0)" in row
    ctx = ctx_for(store, gpus(1))
    assert await asyncio.to_thread(commands.cmd_list, ctx, json_mode=True, fit=True) == EXIT_OK
    [entry] = [m for m in json.loads(out_of(ctx))["models"] if m["name"] == "tiny/llama:latest"]
    assert entry["fit"]["verdict"] == "fits" and entry["fit"]["devices"] == [0]
    assert entry["largest_context"] == 2048 and entry["details"]["parameter_size"]


async def test_a_header_larger_than_the_first_read(store: ModelStore, hub: Hub) -> None:
    # huggingface_hub reads the first 100 kB, then the rest of a larger header in a second
    # range request (`bytes=8-N`), which the fake hub must answer exactly.
    tensors = {f"model.layers.{i}.w.weight": ("F32", [4, 4]) for i in range(3000)}
    config = {"model_type": "llama", "hidden_size": 4, "num_hidden_layers": 1,
              "num_attention_heads": 1, "vocab_size": 4, "max_position_embeddings": 64}
    add_repo(hub, "many/tensors", (config, tensors))
    hub.app[fh.HUB_REPOS]["many/tensors"].files["model.safetensors"] += b"\1" * 4096  # data
    code, doc = await fit(ctx_for(store, gpus(1)), "many/tensors")
    assert code == EXIT_OK and doc["parameters"] == 3000 * 16
    assert any(r.startswith("bytes=8-") for _, r in hub.state.range_requests)


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [("nobody/here", EXIT_NOT_FOUND, "model 'nobody/here' not found on "),
     ("gated/llama", EXIT_FAILURE, "gated/llama is a gated model"),
     ("no such name", 2, "invalid model name"),
     ("/no/such/dir", EXIT_NOT_FOUND, "model '/no/such/dir' not found")],
)
async def test_errors(store: ModelStore, hub: Hub, name: str, code: int, message: str) -> None:
    ctx = ctx_for(store, gpus(1))
    got = await asyncio.to_thread(commands.cmd_fit, ctx, name)
    assert got == code
    assert message in err_of(ctx)


async def test_a_bad_header_on_the_hub_is_a_note(store: ModelStore, hub: Hub) -> None:
    # A shape the hub library multiplies without checking: that shard is skipped, and the
    # config.json estimate stands in for the count.
    params = add_repo(hub, "meta/llama-8b", L8B, shards=2)
    repo = hub.app[fh.HUB_REPOS]["meta/llama-8b"]
    bad = json.dumps({"x": {"dtype": "BF16", "shape": ["a", 2], "data_offsets": [0, 4]}})
    raw = bad.encode() + b" " * (-len(bad) % 8)
    repo.files["model-00001-of-00002.safetensors"] = len(raw).to_bytes(8, "little") + raw
    code, doc = await fit(ctx_for(store, gpus(1)), "meta/llama-8b")
    assert code == EXIT_OK
    assert doc["parameter_source"] == "estimate"
    assert abs(doc["parameters"] - params) / params < 0.01
    assert any("model-00001-of-00002.safetensors" in p for p in doc["problems"])


def test_the_command_line(store: ModelStore, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="vllama")
    commands.add_subparsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fit", "org/m", "--context", "8192", "--json"])
    assert (args.model, args.context, args.json) == ("org/m", 8192, True)
    assert parser.parse_args(["list", "--fit"]).fit is True
    for bad in ("0", "-5", "8k"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["fit", "org/m", "--context", bad])
        assert exc.value.code == 2
    assert "--context" in capsys.readouterr().err
    # the config's settings reach the arithmetic: engine_overhead here
    model = tmp_path / "m"
    tinymodel.generate(model)
    ctx = ctx_for(store, gpus(1))
    ctx.config = Config(engine_overhead=5 * GiB)
    assert commands.cmd_fit(ctx, str(model), json_mode=True) == EXIT_OK
    assert json.loads(out_of(ctx))["default"]["overhead_bytes"] == 5 * GiB
