"""Which vLLM tool-call and reasoning parsers a model needs, decided from its chat template.

vLLM only parses tool calls with `--enable-auto-tool-choice --tool-call-parser X` and only
separates thinking with `--reasoning-parser Y`; nobody knows the names, and Open WebUI sends
tools with every chat, so vllama picks them from the model itself (issue 13). Pure: callers
read the template (chat_template.jinja / tokenizer_config.json) and config.json.

The rules, in order:
- a model gets a tool parser only when its template reads the `tools` variable: a template
  that never shows the tools to the model cannot make it call them (Ollama: "does not support
  tools");
- the first row of `_FAMILIES` whose markers all occur in the template (and whose model_type
  matches, where it names some) gives the parsers. Markers are the strings the template
  teaches the model to emit, the same ones vLLM's parser looks for;
- a reasoning parser only when the template thinks (the row's think marker occurs in it, or
  for rows without their own reasoning parser: `<think>` switched by `enable_thinking`
  -> qwen3, or a generation prompt that opens `<think>` -> deepseek_r1). A reasoning parser
  on a model that does not think turns every answer into reasoning (vLLM reads text before
  a missing `</think>` as thinking), so when in doubt, none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from vllama.vllm_flags import flag_name

# The keys of _TOOL_PARSERS_TO_REGISTER in vllm/tool_parsers/__init__.py of vLLM 0.32.0, read
# from the installed package: `--tool-call-parser` accepts these (or a plugin's names).
VLLM_TOOL_PARSERS = frozenset({
    "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31",
    "deepseek_v32", "deepseek_v4", "deepseek_v41", "dots", "ernie45", "functiongemma",
    "gemma4", "gigachat3", "glm45", "glm47", "granite", "granite-20b-fc", "granite4",
    "hermes", "hf", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "internlm", "jamba",
    "k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3_json", "llama4_json",
    "llama4_pythonic", "longcat", "mimo", "minicpm5", "minimax_m2", "minimax_m3", "mistral",
    "muse_glimmer", "olmo3", "openai", "phi4_mini_json", "plamo3", "poolside_v1", "pythonic",
    "qwen3_coder", "qwen3_json", "qwen3_xml", "seed_oss", "step3", "step3p5", "xlam",
})

# The keys of _REASONING_PARSERS_TO_REGISTER in vllm/reasoning/__init__.py of vLLM 0.32.0.
VLLM_REASONING_PARSERS = frozenset({
    "cohere_command3", "cohere_command4", "deepseek_r1", "deepseek_v3", "deepseek_v4",
    "deepseek_v41", "ernie45", "gemma4", "glm45", "glm47", "granite", "granite_thinking_parser",
    "hf", "holo2", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "k2_horizon", "kimi_k2",
    "kimi_k3", "ling3", "mimo", "minicpmv", "minimax_m2", "minimax_m2_append_think",
    "minimax_m3", "mistral", "muse_glimmer", "nemotron_v3", "olmo3", "openai_gptoss", "plamo3",
    "poolside_v1", "qwen3", "seed_oss", "step3", "step3p5",
})

AUTO_TOOL_CHOICE = "--enable-auto-tool-choice"
TOOL_CALL_PARSER = "--tool-call-parser"
REASONING_PARSER = "--reasoning-parser"


class EngineFeatures(msgspec.Struct, frozen=True):
    """What the engine needs for a model's tool calls and thinking.

    think_kwarg: the chat-template variable that switches thinking on and off (Qwen3:
    enable_thinking, DeepSeek V3.1: thinking); None when the model always thinks (or never).
    """

    tool_parser: str | None = None
    reasoning_parser: str | None = None
    think_kwarg: str | None = None


class _Family(msgspec.Struct, frozen=True):
    """One row of the table: a model family's template markers and its vLLM parsers.

    markers: all must occur in the template text. model_types: when given, config.json's
    model_type must be one of them. reasoning_parser applies when think_marker occurs in the
    template ("" = always); a row without one leaves thinking to the generic `<think>` rule.
    """

    name: str
    markers: tuple[str, ...]
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    think_marker: str = "<think>"
    model_types: tuple[str, ...] = ()


# DeepSeek's markers use U+FF5C (fullwidth vertical line) and U+2581 (lower one eighth block).
DEEPSEEK_TOOL_CALLS = "<\uff5ctool\u2581calls\u2581begin\uff5c>"
DSML = "\uff5cDSML\uff5c"

# Most specific first: several families share `<tool_call>` or `<function=`.
_FAMILIES: tuple[_Family, ...] = (
    # gpt-oss speaks harmony: channels for thinking and for tool calls, always reasoning.
    _Family("gpt-oss", ("<|channel|>",), "openai", "openai_gptoss", think_marker=""),
    _Family("seed-oss", ("<seed:tool_call>",), "seed_oss", "seed_oss", "<seed:think>"),
    _Family("minimax-m2", ("<minimax:tool_call>",), "minimax_m2", "minimax_m2"),
    _Family("minimax-m3", ("]<]minimax[>[",), "minimax_m3", "minimax_m3", "<mm:think>"),
    # Kimi K2 Instruct does not think; the Thinking model's template carries <think>.
    _Family("kimi-k2", ("<|tool_calls_section_begin|>",), "kimi_k2", "kimi_k2"),
    # GLM-4.5/4.6/4.7 (glm45 and glm47 name the same classes in 0.32).
    _Family("glm-4.5", ("<arg_key>",), "glm45", "glm45"),
    # DeepSeek V3.2 and V4 write calls in DSML, in blocks named differently.
    _Family("deepseek-v3.2", (DSML, "function_calls"), "deepseek_v32", "deepseek_v3"),
    _Family("deepseek-v4", (DSML, "tool_calls"), "deepseek_v4", "deepseek_v4"),
    # DeepSeek V3 / R1: ```json arguments. R1 templates strip thinking from the history.
    _Family("deepseek-v3", (DEEPSEEK_TOOL_CALLS, "```json"), "deepseek_v3", "deepseek_r1",
            "</think>"),
    # DeepSeek V3.1: bare arguments; thinking is switched by the `thinking` kwarg.
    _Family("deepseek-v3.1", (DEEPSEEK_TOOL_CALLS,), "deepseek_v31", "deepseek_v3"),
    # Mistral and Magistral/Ministral reasoning ([THINK] ... [/THINK]).
    _Family("mistral", ("[TOOL_CALLS]",), "mistral", "mistral", "[THINK]"),
    # Qwen3-Coder, Qwen3.5, Step-3.5, Nemotron 3: <parameter=...> elements inside
    # <function=...> (functionary's <function=...> holds JSON instead).
    _Family("nemotron-3", ("<function=", "<parameter="), "qwen3_coder", "nemotron_v3",
            model_types=("nemotron_h",)),
    _Family("qwen3-coder", ("<function=", "<parameter="), "qwen3_coder"),
    _Family("gemma-4", ("<|tool_call>",), "gemma4", "gemma4", "<|channel>"),
    _Family("functiongemma", ("<start_function_call>",), "functiongemma"),
    _Family("lfm2", ("<|tool_list_start|>",), "lfm2"),
    _Family("lfm2.5", ("<|tool_call_start|>",), "lfm2"),
    _Family("apertus", ("<|tools_prefix|>",), "apertus"),
    _Family("internlm", ("<|plugin|>",), "internlm"),
    _Family("phi-4-mini", ("functools",), "phi4_mini_json"),
    _Family("olmo-3", ("<function_calls>",), "olmo3"),
    # Granite 4 closes each call; Granite 3.x opens a JSON list after a marker. Granite 3.2
    # thinks in prose ("Here is my thought process:"); 3.3's <think>/<response> has no parser.
    _Family("granite-4", ("</tool_call>",), "granite4",
            model_types=("granite", "granitemoe", "granitemoehybrid", "granitemoeshared")),
    _Family("granite-3", ("<|tool_call|>",), "granite", "granite", "Here is my thought process"),
    _Family("jamba", ("<tool_calls>",), "jamba", model_types=("jamba",)),
    _Family("hunyuan", ("<tool_calls>",), "hunyuan_a13b", "hunyuan_a13b", "<answer>",
            model_types=("hunyuan_v1_moe", "hunyuan_v1_dense")),
    # Pythonic calls, `[f(a=1)]`: Llama 4's own parser understands its <|python_start|> too.
    _Family("llama-4-pythonic", ("[func_name1(",), "llama4_pythonic", model_types=("llama4",)),
    _Family("pythonic", ("[func_name1(",), "pythonic"),
    # Llama 3.1/3.2/3.3 (and 4) JSON: {"name": ..., "parameters": ...}.
    _Family("llama-4-json", ("dictionary of argument name and its value",), "llama4_json",
            model_types=("llama4",)),
    _Family("llama-3-json", ("dictionary of argument name and its value",), "llama3_json"),
    # Hermes-style JSON in <tool_call>: Qwen2.5, Qwen3, QwQ, Hermes 2 Pro/3, many fine-tunes.
    _Family("hermes", ("<tool_call>",), "hermes"),
)

_TOOLS_VAR = re.compile(r"(?<![\w.])tools(?!\w)")
_ENABLE_THINKING_VAR = re.compile(r"(?<![\w.])enable_thinking(?!\w)")
_THINKING_VAR = re.compile(r"(?<![\w.])thinking(?!\w)")
# `<think>` left open for the model, not an empty `<think></think>` that switches it off.
_OPEN_THINK = re.compile(r"<think>(?!(?:\s|\\n)*</think>)")


def detect_features(template: str, config: Mapping[str, Any]) -> EngineFeatures:
    """The parsers vLLM 0.32 needs for a model with this chat template and config.json."""
    code = jinja_code(template)
    family = _family(template, config)
    tools = family.tool_parser if family and _TOOLS_VAR.search(code) else None
    if family and family.reasoning_parser:
        thinks = family.think_marker in template
        reasoning = family.reasoning_parser if thinks else None
    else:
        reasoning = _generic_reasoning(template, code)
    return EngineFeatures(tools, reasoning, _think_kwarg(code) if reasoning else None)


def _family(template: str, config: Mapping[str, Any]) -> _Family | None:
    model_type = config.get("model_type")
    for family in _FAMILIES:
        if family.model_types and model_type not in family.model_types:
            continue
        if all(marker in template for marker in family.markers):
            return family
    return None


def _generic_reasoning(template: str, code: str) -> str | None:
    """`<think>` models of no listed family: Qwen3-style switch, or always-open thinking."""
    if "<think>" not in template:
        return None
    if _ENABLE_THINKING_VAR.search(code):
        return "qwen3"
    prompt = template.rfind("add_generation_prompt")
    if prompt >= 0 and _OPEN_THINK.search(template, prompt):
        return "deepseek_r1"
    return None


def think_kwarg(template: str) -> str | None:
    """The variable the template reads to switch thinking on and off (`enable_thinking`,
    `thinking`), or None: vllama sends `chat_template_kwargs` only with one."""
    return _think_kwarg(jinja_code(template))


def _think_kwarg(code: str) -> str | None:
    if _ENABLE_THINKING_VAR.search(code):
        return "enable_thinking"
    if _THINKING_VAR.search(code):
        return "thinking"
    return None


def jinja_code(template: str) -> str:
    """The expressions and statements of a Jinja template with string literals and comments
    blanked, so a variable is found where the template reads it, not in prose it prints."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        start = template.find("{", i)
        if start < 0 or start + 1 >= n:
            break
        kind = template[start + 1]
        if kind == "#":
            end = template.find("#}", start + 2)
            i = n if end < 0 else end + 2
            continue
        if kind not in "{%":
            i = start + 1
            continue
        close = "}}" if kind == "{" else "%}"
        i = start + 2
        while i < n and not template.startswith(close, i):
            char = template[i]
            if char in "'\"":
                i = _string_end(template, i)
                out.append(" ")
                continue
            out.append(char)
            i += 1
        out.append("\n")
        i += 2
    return "".join(out)


def _string_end(template: str, i: int) -> int:
    quote, i = template[i], i + 1
    while i < len(template) and template[i] != quote:
        i += 2 if template[i] == "\\" else 1
    return i + 1


def feature_args(features: EngineFeatures, user_args: Sequence[str]) -> list[str]:
    """The `vllm serve` flags to add for these features: only what the user did not set.

    `--no-enable-auto-tool-choice` in vllm_args switches tools off; a user's own
    `--tool-call-parser` still gets `--enable-auto-tool-choice` (vLLM ignores a parser without
    it), and a user's bare `--enable-auto-tool-choice` gets the detected parser (vLLM refuses
    to start without one)."""
    user = {flag_name(arg) for arg in user_args} - {None}
    args: list[str] = []
    tools_off = _last_switch(user_args, AUTO_TOOL_CHOICE) is False
    if not tools_off:
        parser_set = TOOL_CALL_PARSER in user
        if AUTO_TOOL_CHOICE not in user and (parser_set or features.tool_parser):
            args.append(AUTO_TOOL_CHOICE)
        if not parser_set and features.tool_parser:
            args += [TOOL_CALL_PARSER, features.tool_parser]
    if REASONING_PARSER not in user and features.reasoning_parser:
        args += [REASONING_PARSER, features.reasoning_parser]
    return args


def advertised(final_args: Sequence[str]) -> tuple[bool, bool]:
    """(tools, thinking) as an engine started with this argv really runs: tools need auto tool
    choice and a parser, thinking needs a reasoning parser (the last spelling of each wins, as
    in vLLM's argparse)."""
    tools = bool(_last_switch(final_args, AUTO_TOOL_CHOICE)) and bool(
        _last_value(final_args, TOOL_CALL_PARSER))
    return tools, bool(_last_value(final_args, REASONING_PARSER))


def _last_switch(args: Sequence[str], flag: str) -> bool | None:
    """True/False for the last `--flag` / `--no-flag` in args, None when neither is there."""
    found: bool | None = None
    for arg in args:
        if flag_name(arg) == flag:
            found = not arg.replace("_", "-").startswith("--no-")
    return found


def _last_value(args: Sequence[str], flag: str) -> str | None:
    """The value of the last `--flag V` / `--flag=V` in args; None when absent."""
    found: str | None = None
    for i, arg in enumerate(args):
        if flag_name(arg) != flag:
            continue
        if arg.replace("_", "-").startswith("--no-"):
            found = None
        elif "=" in arg:
            found = arg.split("=", 1)[1]
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            found = args[i + 1]
        else:
            found = None
    return found
