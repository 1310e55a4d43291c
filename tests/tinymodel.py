"""Deterministic tiny chat model for tests that need a real vLLM engine.

    python -m tests.tinymodel OUTDIR [--arch llama|qwen2] [--seed N]

writes a HF-format checkpoint (config.json, model.safetensors, tokenizer files, chat template)
of about 2.5 MB that `vllm serve OUTDIR` loads on the CPU in a few seconds. Only numpy and
`tokenizers` are needed, so it runs in the project venv without torch or transformers.

Properties tests rely on:
- Same seed => byte-identical files. Random numbers come from PCG64's raw 64-bit stream (whose
  sequence numpy guarantees) turned into uniform floats with exact arithmetic only, so neither
  numpy's distribution code nor libm can make two machines disagree.
- The model can never emit eos, any special token, an id the tokenizer does not know, or a token
  whose bytes are not complete printable UTF-8. Every request therefore runs to exactly
  `max_tokens` (finish_reason "length") at any temperature, and each streamed delta is whole
  text, so greedy streamed output equals non-streamed output.
  How: residual dimension 0 holds a constant 1 that every token embedding carries and no layer
  writes (row 0 of o_proj/down_proj is zero); the per-layer norms give it weight 0 so layers
  never see it, the final norm passes it on, and the lm_head rows of forbidden tokens read it
  with weight -1000, which pushes their logits thousands below any allowed token's.

The same weights also serve as an embedding model with `vllm serve OUTDIR --runner pooling
--convert embed` (last-token pooling, `hidden_size` = 128 dimensions); no separate BERT model is
needed.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

F32 = npt.NDArray[np.float32]

ARCHES = ("llama", "qwen2")
HIDDEN = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 32: a head size vLLM's CPU attention supports
INTERMEDIATE = 256
VOCAB = 1024
MAX_POSITIONS = 2048
FORBID_WEIGHT = -1000.0

BOS = "<|begin_of_text|>"
EOS = "<|im_end|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
EOT = "<|endoftext|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, IM_START, EOT)  # ids 0..4, in this order

# ChatML, as Qwen-style models use it. Handles system/user/assistant/tool roles, list-of-parts
# content, assistant tool calls (rendered as <tool_call> JSON) and add_generation_prompt.
CHAT_TEMPLATE = """\
{%- macro render_content(content) %}
{%- if content is string %}{{- content }}
{%- elif content is iterable %}
{%- for part in content %}{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}\
{%- endfor %}
{%- endif %}
{%- endmacro %}
{%- set has_tools = tools is defined and tools %}
{%- if has_tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages and messages[0]['role'] == 'system' %}\
{{- render_content(messages[0]['content']) + '\\n\\n' }}{%- endif %}
{{- 'You may call these tools:\\n' }}
{%- for tool in tools %}{{- (tool | tojson) + '\\n' }}{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if not (loop.first and message['role'] == 'system' and has_tools) %}
{{- '<|im_start|>' + message['role'] + '\\n' + render_content(message['content']) }}
{%- if message['tool_calls'] is defined and message['tool_calls'] %}
{%- for call in message['tool_calls'] %}
{%- set fn = call['function'] if call['function'] is defined else call %}
{{- '<tool_call>\\n{"name": "' + fn['name'] + '", "arguments": ' }}
{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}\
{{- fn['arguments'] | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


class _Rng:
    """Uniform floats from PCG64's raw output: a stream numpy keeps stable across versions."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def uniform(self, shape: tuple[int, ...], scale: float) -> F32:
        """Floats in [-scale, scale), exactly representable, identical on every machine."""
        n = int(np.prod(shape))
        raw = np.asarray(self._bits.random_raw(n), dtype=np.uint64) >> np.uint64(40)
        unit = raw.astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)  # [-1, 1)
        return (unit * np.float32(scale)).astype(np.float32).reshape(shape)

    def below(self, n: int, k: int) -> list[int]:
        """n integers in [0, k)."""
        return [int(x) % k for x in self._bits.random_raw(n)]


# --- tokenizer --------------------------------------------------------------------------------

_SYLLABLES = (
    "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "an", "el", "or", "us", "th", "ing", "er",
    "qu", "ba", "de", "fi", "go", "hu", "ja", "ze", "yo", "pla", "str", "ion", "ent", "ish", "ow",
)
_PUNCT = (".", ",", "!", "?", ";", ":")
# A little non-ASCII so common multi-byte characters get merged into whole tokens.
_EXTRA_WORDS = ("café", "naïve", "über", "日本語", "привет", "ελληνικά", "🙂", "→", "½", "2024")


def _corpus(rng: _Rng, lines: int = 1500) -> list[str]:
    """Pseudo-text made from the seed only, so the vocabulary depends on nothing else."""
    out: list[str] = []
    for _ in range(lines):
        n_words = 4 + rng.below(1, 10)[0]
        words: list[str] = []
        for _w in range(n_words):
            pick = rng.below(4, 1000)
            if pick[0] < 30:
                words.append(_EXTRA_WORDS[pick[1] % len(_EXTRA_WORDS)])
                continue
            n_syl = 1 + pick[1] % 3
            syl = rng.below(n_syl, len(_SYLLABLES))
            word = "".join(_SYLLABLES[i] for i in syl)
            if pick[2] < 120:
                word = word.capitalize()
            if pick[3] < 80:
                word += _PUNCT[pick[3] % len(_PUNCT)]
            words.append(word)
        out.append(" ".join(words))
    return out


def build_tokenizer(seed: int) -> Tokenizer:
    """Byte-level BPE (any text round-trips) trained on the seed's corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(_Rng(seed + 1_000_003)), trainer=trainer)
    return tok


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def allowed_token_ids(tok: Tokenizer) -> list[int]:
    """Ids whose text is complete, printable UTF-8 (spaces allowed, newlines not)."""
    to_byte = _byte_decoder()
    special = set(SPECIAL_TOKENS)
    allowed: list[int] = []
    for piece, idx in tok.get_vocab(with_added_tokens=True).items():
        if piece in special:
            continue
        try:
            text = bytes(to_byte[ch] for ch in piece).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue  # a fragment of a multi-byte character: streaming would split it
        if text and text.isprintable():
            allowed.append(idx)
    return sorted(allowed)


# --- weights ----------------------------------------------------------------------------------


def _weights(arch: str, seed: int, allowed: list[int]) -> dict[str, F32]:
    rng = _Rng(seed)
    w: dict[str, F32] = {}
    embed = rng.uniform((VOCAB, HIDDEN), 0.15)
    embed[:, 0] = 1.0  # the constant residual channel (see module docstring)
    w["model.embed_tokens.weight"] = embed
    # Norm weights: layers ignore channel 0, the final norm keeps it for the lm_head.
    layer_norm = np.ones(HIDDEN, dtype=np.float32)
    layer_norm[0] = 0.0
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = layer_norm.copy()
        w[p + "post_attention_layernorm.weight"] = layer_norm.copy()
        w[p + "self_attn.q_proj.weight"] = rng.uniform((HEADS * HEAD_DIM, HIDDEN), 0.15)
        w[p + "self_attn.k_proj.weight"] = rng.uniform((KV_HEADS * HEAD_DIM, HIDDEN), 0.15)
        w[p + "self_attn.v_proj.weight"] = rng.uniform((KV_HEADS * HEAD_DIM, HIDDEN), 0.15)
        if arch == "qwen2":  # Qwen2 has q/k/v biases
            w[p + "self_attn.q_proj.bias"] = rng.uniform((HEADS * HEAD_DIM,), 0.02)
            w[p + "self_attn.k_proj.bias"] = rng.uniform((KV_HEADS * HEAD_DIM,), 0.02)
            w[p + "self_attn.v_proj.bias"] = rng.uniform((KV_HEADS * HEAD_DIM,), 0.02)
        o_proj = rng.uniform((HIDDEN, HEADS * HEAD_DIM), 0.05)
        o_proj[0, :] = 0.0  # never write the constant channel
        w[p + "self_attn.o_proj.weight"] = o_proj
        w[p + "mlp.gate_proj.weight"] = rng.uniform((INTERMEDIATE, HIDDEN), 0.15)
        w[p + "mlp.up_proj.weight"] = rng.uniform((INTERMEDIATE, HIDDEN), 0.15)
        down = rng.uniform((HIDDEN, INTERMEDIATE), 0.05)
        down[0, :] = 0.0
        w[p + "mlp.down_proj.weight"] = down
    w["model.norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    lm_head = rng.uniform((VOCAB, HIDDEN), 0.5)
    lm_head[:, 0] = 0.0
    forbidden = np.ones(VOCAB, dtype=bool)
    forbidden[allowed] = False
    lm_head[forbidden, :] = 0.0
    lm_head[forbidden, 0] = FORBID_WEIGHT
    w["lm_head.weight"] = lm_head
    return w


def write_safetensors(path: Path, tensors: dict[str, F32]) -> None:
    """safetensors: u64-LE header length, JSON header, then the raw little-endian data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        arr = tensors[name]
        nbytes = arr.size * 4
        header[name] = {
            "dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment with spaces
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


# --- config files -----------------------------------------------------------------------------


def _config(arch: str, ids: dict[str, int]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": MAX_POSITIONS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
    }
    if arch == "llama":
        cfg |= {"attention_bias": False, "mlp_bias": False}
    else:
        cfg |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": LAYERS}
    return cfg


def _tokenizer_config(ids: dict[str, int], chat_template: str) -> dict[str, Any]:
    added = {
        str(ids[t]): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": [IM_START, EOT],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "chat_template": chat_template,
    }


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def generate(outdir: Path, *, arch: str = "llama", seed: int = 0,
             chat_template: str = CHAT_TEMPLATE) -> Path:
    """Write the tiny model into `outdir` (created if needed) and return it. `chat_template`
    replaces the built-in ChatML one (a real model's, to test what vllama derives from it);
    it may use the ChatML markers, which the tokenizer has as special tokens."""
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, not {arch!r}")
    outdir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(seed)
    ids: dict[str, int] = {}
    for t in SPECIAL_TOKENS:
        idx = tok.token_to_id(t)
        assert idx is not None, t  # the trainer adds every special token
        ids[t] = idx
    tok.save(str(outdir / "tokenizer.json"))
    _dump(outdir / "tokenizer_config.json", _tokenizer_config(ids, chat_template))
    (outdir / "chat_template.jinja").write_text(chat_template)
    _dump(
        outdir / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
         "additional_special_tokens": [IM_START, EOT]},
    )
    _dump(outdir / "config.json", _config(arch, ids))
    _dump(
        outdir / "generation_config.json",
        {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]},
    )
    write_safetensors(outdir / "model.safetensors", _weights(arch, seed, allowed_token_ids(tok)))
    return outdir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.tinymodel", description="Write the deterministic tiny test model."
    )
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--arch", choices=ARCHES, default="llama")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--embedding",
        action="store_true",
        help="accepted for clarity: the same model is the embedding model when served with "
        "`--runner pooling --convert embed`",
    )
    args = ap.parse_args(argv)
    out = generate(args.outdir, arch=args.arch, seed=args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
