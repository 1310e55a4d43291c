"""Deterministic "model" behind the fake vLLM server: prompt token counts, the reply plan
(reasoning, content, tool call, JSON output, stop strings, max_tokens), logprobs and embeddings.

Pure functions only, no I/O, so the HTTP layer in ``tests.fake_vllm`` stays thin and the
numbers tests assert on (token counts, texts) can be computed here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

# Reasoning models think for a few tokens before answering; the fake always thinks 3.
REASONING_TOKENS = 3
# Tool-call arguments are streamed in this many fragments (hermes-style parsers emit several).
TOOL_ARG_FRAGMENTS = 3
# Every chat message costs 3 template tokens (role start, role name, role end) plus its words;
# a completion prompt costs a BOS token plus its words.
CHAT_TOKENS_PER_MESSAGE = 3
BOS = 1
# What vLLM says when its engine died (EngineDeadError); used in error chunks and 500s.
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def words(text: str) -> list[str]:
    return text.split()


def token_id(word: str) -> int:
    # crc32 is stable across runs and processes (hash() is salted).
    return 100 + zlib.crc32(word.encode()) % 50_000


def message_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string or a list of OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(t for t in texts if isinstance(t, str))
    return ""


def chat_prompt_ids(messages: list[Any]) -> list[int]:
    ids: list[int] = []
    for msg in messages:
        role = msg.get("role", "") if isinstance(msg, dict) else ""
        text = message_text(msg.get("content")) if isinstance(msg, dict) else ""
        ids += [2, token_id(str(role))] + [token_id(w) for w in words(text)] + [3]
    return ids


def chat_prompt_strs(messages: list[Any]) -> list[str]:
    strs: list[str] = []
    for msg in messages:
        role = msg.get("role", "") if isinstance(msg, dict) else ""
        text = message_text(msg.get("content")) if isinstance(msg, dict) else ""
        strs += ["<|im_start|>", str(role), *words(text), "<|im_end|>"]
    return strs


def text_prompt_ids(prompt: Any) -> list[int]:
    """Token ids of a completion prompt: a string, or token ids passed through."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    text = prompt if isinstance(prompt, str) else ""
    return [BOS] + [token_id(w) for w in words(text)]


def reply_token(i: int) -> str:
    return f"tok{i}" if i == 0 else f" tok{i}"


def reply_text(n: int) -> str:
    """What the fake model says when nothing cuts it short: ``tok0 tok1 ... tok{n-1}``."""
    return "".join(reply_token(i) for i in range(n))


def reasoning_token(i: int) -> str:
    return f"think{i}" if i == 0 else f" think{i}"


def _sample_for(schema: Any, text: str) -> Any:
    """A value that satisfies a (simple) JSON schema, so structured-output callers can parse it."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "integer":
        return 0
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        props = schema.get("properties")
        if isinstance(props, dict) and props:
            return {name: _sample_for(sub, text) for name, sub in props.items()}
        return {"answer": text}
    return text


def json_schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema the request asks the output to follow, ``{}`` for plain JSON, else None."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            return {}
        if fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            return schema if isinstance(schema, dict) else {}
    structured = body.get("structured_outputs")
    if isinstance(structured, dict) and "json" in structured:
        schema = structured["json"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                schema = {}
        return schema if isinstance(schema, dict) else {}
    return None


def json_reply_tokens(schema: dict[str, Any], n: int) -> list[str]:
    """A valid JSON text (``{"answer": "tok0 tok1"}`` for json_object) split into tokens."""
    inner = "tok0" if n < 1 else reply_text(n)
    value = _sample_for({"type": "object", **schema} if "type" not in schema else schema, inner)
    text = json.dumps(value)
    # Split before each space so the pieces concatenate back to the exact text.
    pieces = text.split(" ")
    return [pieces[0]] + [" " + p for p in pieces[1:]]


def tool_arguments(tool: dict[str, Any]) -> str:
    fn = tool.get("function") if isinstance(tool, dict) else None
    params = fn.get("parameters") if isinstance(fn, dict) else None
    props = params.get("properties") if isinstance(params, dict) else None
    if not isinstance(props, dict):
        return "{}"
    return json.dumps({name: _sample_for(sub, "value") for name, sub in props.items()})


def split_fragments(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Step:
    """One generated token as the stream shows it."""

    kind: Literal["reasoning", "content", "tool_start", "tool_args", "tool_end"]
    text: str = ""


@dataclass
class ToolCallPlan:
    id: str
    name: str
    arguments: str


@dataclass
class Plan:
    """Everything one choice of a reply will contain, computed before anything is sent."""

    steps: list[Step] = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: str | None = None
    tool_call: ToolCallPlan | None = None
    hide_reasoning: bool = False

    @property
    def completion_tokens(self) -> int:
        return len(self.steps)

    @property
    def content(self) -> str:
        return "".join(s.text for s in self.steps if s.kind == "content")

    @property
    def reasoning(self) -> str:
        return "".join(s.text for s in self.steps if s.kind == "reasoning")


def stops_of(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def _apply_stop(tokens: list[str], stops: list[str]) -> tuple[list[str], str | None]:
    """Cut the token texts where the first stop string starts (vLLM drops the stop string);
    the token that completed the match still counts as generated."""
    text = ""
    for i, tok in enumerate(tokens):
        text += tok
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            at, which = min(hits)
            # A match may start in an earlier token (vLLM held that text back while it could
            # still become a stop string): re-slice every token against the kept prefix.
            kept, out, pos = text[:at], [], 0
            for generated in tokens[: i + 1]:
                out.append(kept[pos : pos + len(generated)])
                pos += len(generated)
            return out, which
    return tokens, None


def _tool_for(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The tool the fake model calls, and whether the caller named it (then finish is stop)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None, False
    if isinstance(choice, dict):
        fn = choice.get("function")
        wanted = fn.get("name") if isinstance(fn, dict) else None
        for tool in tools:
            tfn = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(tfn, dict) and tfn.get("name") == wanted:
                return tool, True
    first = tools[0]
    return (first if isinstance(first, dict) else None), False


def plan_reply(
    body: dict[str, Any],
    *,
    chat: bool,
    natural_tokens: int,
    budget: int,
    reasoning: bool,
    tool_call: bool,
) -> Plan:
    """Decide what the model says. ``natural_tokens`` is where it would stop by itself (EOS),
    ``budget`` the most it may generate (max_tokens clamped to the context left)."""
    plan = Plan()
    natural: list[Step] = []
    if chat and reasoning:
        kwargs = body.get("chat_template_kwargs")
        if not (isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False):
            natural += [Step("reasoning", reasoning_token(i)) for i in range(REASONING_TOKENS)]
            plan.hide_reasoning = body.get("include_reasoning") is False
    tool, named = _tool_for(body) if chat and tool_call else (None, False)
    if tool is not None:
        fn = tool.get("function")
        name = str(fn.get("name", "")) if isinstance(fn, dict) else ""
        call = ToolCallPlan(new_id("chatcmpl-tool"), name, tool_arguments(tool))
        natural.append(Step("tool_start"))
        fragments = split_fragments(call.arguments, TOOL_ARG_FRAGMENTS)
        natural += [Step("tool_args", f) for f in fragments]
        natural.append(Step("tool_end"))
        plan.tool_call = call
        natural_finish = "stop" if named else "tool_calls"
    else:
        schema = json_schema_of(body)
        if schema is not None:
            texts = json_reply_tokens(schema, natural_tokens)
        else:
            texts = [reply_token(i) for i in range(natural_tokens)]
        texts, plan.stop_reason = _apply_stop(texts, stops_of(body))
        natural += [Step("content", t) for t in texts]
        natural_finish = "stop"
    if len(natural) > budget:
        plan.steps = natural[:budget]
        plan.finish_reason = "length"
        plan.stop_reason = None
        if plan.tool_call is not None and not any(s.kind == "tool_start" for s in plan.steps):
            plan.tool_call = None
    else:
        plan.steps = natural
        plan.finish_reason = natural_finish
    return plan


def logprob_of(i: int) -> float:
    return -0.1 * (i % 5 + 1)


def chat_logprobs(steps: list[Step], start: int, top: int) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat reply for the given steps (token index ``start`` on)."""
    content = []
    for k, step in enumerate(steps):
        i = start + k
        content.append(
            {
                "token": step.text,
                "logprob": logprob_of(i),
                "bytes": list(step.text.encode()),
                "top_logprobs": [
                    {
                        "token": step.text if j == 0 else f" alt{j}",
                        "logprob": logprob_of(i) - j,
                        "bytes": list((step.text if j == 0 else f" alt{j}").encode()),
                    }
                    for j in range(top)
                ],
            }
        )
    return {"content": content}


def completion_logprobs(steps: list[Step], start: int, offset: int, top: int) -> dict[str, Any]:
    """``choices[].logprobs`` of a /v1/completions reply (the legacy OpenAI shape)."""
    tokens, lps, tops, offsets = [], [], [], []
    for k, step in enumerate(steps):
        i = start + k
        tokens.append(step.text)
        lps.append(logprob_of(i))
        alts = {step.text: logprob_of(i)}
        alts.update({f" alt{j}": logprob_of(i) - j for j in range(1, top)})
        tops.append(alts)
        offsets.append(offset)
        offset += len(step.text)
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


def embedding(text: str, dim: int) -> list[float]:
    """A vector seeded from the text: equal texts give equal vectors; deliberately not
    normalized (vLLM returns whatever the pooler gives; normalizing is the gateway's job)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return [round(rng.uniform(-1.0, 1.0), 6) for _ in range(dim)]
