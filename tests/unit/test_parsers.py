"""Tool-call and reasoning parsers chosen from the model itself (vllama.models.parsers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vllama.models import parsers
from vllama.models.parsers import (
    DEEPSEEK_TOOL_CALLS,
    DSML,
    VLLM_REASONING_PARSERS,
    VLLM_TOOL_PARSERS,
    EngineFeatures,
    advertised,
    detect_features,
    feature_args,
    jinja_code,
)

TEMPLATES = Path(__file__).parent.parent / "data" / "templates"

TOOLS = ["--enable-auto-tool-choice", "--tool-call-parser"]

# (template file, config.json, tool parser, reasoning parser, think kwarg): the real templates.
REAL: list[tuple[str, dict[str, Any], str | None, str | None, str | None]] = [
    ("Qwen-Qwen2.5-7B-Instruct", {"model_type": "qwen2"}, "hermes", None, None),
    ("Qwen-Qwen3-0.6B", {"model_type": "qwen3"}, "hermes", "qwen3", "enable_thinking"),
    ("Qwen-QwQ-32B", {"model_type": "qwen2"}, "hermes", "deepseek_r1", None),
    ("Qwen3-Coder", {"model_type": "qwen3_moe"}, "qwen3_coder", None, None),
    ("Qwen3.5-4B", {"model_type": "qwen3_5"}, "qwen3_coder", "qwen3", "enable_thinking"),
    ("meta-llama-Llama-3.1-8B-Instruct", {"model_type": "llama"}, "llama3_json", None, None),
    ("meta-llama-Llama-3.2-3B-Instruct", {"model_type": "llama"}, "llama3_json", None, None),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use", {"model_type": "llama"}, "hermes", None,
     None),
    ("mistralai-Mistral-Nemo-Instruct-2407", {"model_type": "mistral"}, "mistral", None, None),
    ("Mistral-Small-3.2-24B-Instruct-2506", {"model_type": "mistral3"}, "mistral", None, None),
    ("mistralai-Ministral-3-14B-Reasoning-2512", {"model_type": "mistral3"}, "mistral",
     "mistral", None),
    # R1 distills render tool calls from the history but never show the model `tools`.
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", {"model_type": "qwen2"}, None, "deepseek_r1",
     None),
    # Nor does V3.1's own template (vLLM documents a replacement --chat-template for tools).
    ("deepseek-ai-DeepSeek-V3.1", {"model_type": "deepseek_v3"}, None, "deepseek_v3",
     "thinking"),
    ("deepseek-ai-DeepSeek-V3.2", {"model_type": "deepseek_v32"}, "deepseek_v32",
     "deepseek_v3", "enable_thinking"),
    ("openai-gpt-oss-120b", {"model_type": "gpt_oss"}, "openai", "openai_gptoss", None),
    # Granite 3.3 thinks in <think>/<response>, which no vLLM 0.32 reasoning parser reads.
    ("ibm-granite-granite-3.3-2B-Instruct", {"model_type": "granite"}, "granite", None, None),
    ("ibm-granite-granite-4.0", {"model_type": "granitemoehybrid"}, "granite4", None, None),
    ("moonshotai-Kimi-K2", {"model_type": "kimi_k2"}, "kimi_k2", None, None),
    ("Kimi-K2-Thinking", {"model_type": "kimi_k2"}, "kimi_k2", "kimi_k2", None),
    ("GLM-4.6", {"model_type": "glm4_moe"}, "glm45", "glm45", "enable_thinking"),
    ("MiniMax-M2", {"model_type": "minimax_m2"}, "minimax_m2", "minimax_m2", None),
    ("ByteDance-Seed-OSS", {"model_type": "seed_oss"}, "seed_oss", "seed_oss", None),
    ("NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", {"model_type": "nemotron_h"}, "qwen3_coder",
     "nemotron_v3", "enable_thinking"),
    # Nemotron Nano v2's <TOOLCALL> has no vLLM parser: tools stay off, thinking works.
    ("NVIDIA-Nemotron-Nano-v2", {"model_type": "nemotron_h"}, None, "qwen3", "enable_thinking"),
    ("google-gemma-4-31B-it", {"model_type": "gemma4"}, "gemma4", "gemma4", "enable_thinking"),
    ("LFM2-8B-A1B", {"model_type": "lfm2_moe"}, "lfm2", None, None),
    ("HuggingFaceTB-SmolLM3-3B", {"model_type": "smollm3"}, None, "qwen3", "enable_thinking"),
    # functionary's <function=...> holds JSON, not Qwen3-Coder's <parameter=...>.
    ("meetkai-functionary-medium-v3.1", {"model_type": "llama"}, None, None, None),
    ("google-gemma-3-it", {"model_type": "gemma3"}, None, None, None),
    ("microsoft-Phi-3.5-mini-instruct", {"model_type": "phi3"}, None, None, None),
]


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def _with_tools(marker: str, extra: str = "") -> str:
    """A minimal template that shows the model its tools and teaches it `marker`."""
    return ("{%- if tools %}{{ 'Call tools like " + marker + "' }}{{ tools | tojson }}"
            "{%- endif %}" + extra + "{%- for m in messages %}{{ m.content }}{%- endfor %}")


# Rows no saved template covers: a minimal template with the row's markers.
SYNTHETIC: list[tuple[str, str, dict[str, Any], EngineFeatures]] = [
    ("deepseek-r1-0528", _with_tools(DEEPSEEK_TOOL_CALLS + "function\n```json",
                                     "{% set c = c.split('</think>')[-1] %}"),
     {"model_type": "deepseek_v3"}, EngineFeatures("deepseek_v3", "deepseek_r1")),
    ("deepseek-v3-0324", _with_tools(DEEPSEEK_TOOL_CALLS + "function\n```json"),
     {"model_type": "deepseek_v3"}, EngineFeatures("deepseek_v3", None)),
    ("deepseek-v4", _with_tools(f"<{DSML}tool_calls>", "{{ '<think>' }}"),
     {"model_type": "deepseek_v4"}, EngineFeatures("deepseek_v4", "deepseek_v4")),
    ("minimax-m3", _with_tools("]<]minimax[>[<tool_call>", "{{ '<mm:think>' }}"),
     {"model_type": "minimax_m3"}, EngineFeatures("minimax_m3", "minimax_m3")),
    ("granite-3.2", _with_tools("<|tool_call|>",
                                "{% if thinking %}{{ 'Here is my thought process:' }}{% endif %}"),
     {"model_type": "granite"}, EngineFeatures("granite", "granite", "thinking")),
    ("functiongemma", _with_tools("<start_function_call>"), {"model_type": "gemma3_text"},
     EngineFeatures("functiongemma")),
    ("lfm2.5", _with_tools("<|tool_call_start|>"), {"model_type": "lfm2"},
     EngineFeatures("lfm2")),
    ("apertus", _with_tools("<|tools_prefix|>"), {"model_type": "apertus"},
     EngineFeatures("apertus")),
    ("internlm", _with_tools("<|action_start|><|plugin|>"), {"model_type": "internlm2"},
     EngineFeatures("internlm")),
    ("phi-4-mini", _with_tools("functools[...]"), {"model_type": "phi3"},
     EngineFeatures("phi4_mini_json")),
    ("olmo-3", _with_tools("<function_calls>"), {"model_type": "olmo3"},
     EngineFeatures("olmo3")),
    ("jamba", _with_tools("<tool_calls>"), {"model_type": "jamba"}, EngineFeatures("jamba")),
    ("hunyuan", _with_tools("<tool_calls>", "{{ '<think></think><answer>' }}"),
     {"model_type": "hunyuan_v1_moe"}, EngineFeatures("hunyuan_a13b", "hunyuan_a13b")),
    ("llama-4-pythonic", _with_tools("[func_name1(params_name1=params_value1)]"),
     {"model_type": "llama4"}, EngineFeatures("llama4_pythonic")),
    ("pythonic", _with_tools("[func_name1(params_name1=params_value1)]"),
     {"model_type": "llama"}, EngineFeatures("pythonic")),
    ("llama-4-json", _with_tools("dictionary of argument name and its value"),
     {"model_type": "llama4"}, EngineFeatures("llama4_json")),
]


@pytest.mark.parametrize(("name", "config", "tool", "reasoning", "kwarg"), REAL,
                         ids=[row[0] for row in REAL])
def test_real_templates(name: str, config: dict[str, Any], tool: str | None,
                        reasoning: str | None, kwarg: str | None) -> None:
    features = detect_features(_template(name), config)
    assert features == EngineFeatures(tool, reasoning, kwarg)
    args = feature_args(features, [])
    expected = ([*TOOLS, tool] if tool else []) + (
        ["--reasoning-parser", reasoning] if reasoning else [])
    assert args == expected
    assert advertised(args) == (tool is not None, reasoning is not None)


@pytest.mark.parametrize(("family", "template", "config", "features"), SYNTHETIC,
                         ids=[row[0] for row in SYNTHETIC])
def test_rows_without_saved_templates(family: str, template: str, config: dict[str, Any],
                                      features: EngineFeatures) -> None:
    assert detect_features(template, config) == features


def test_every_row_is_reached() -> None:
    """A row shadowed by an earlier one would never be chosen; each is hit by some case."""
    hit = {fam.name for name, config, *_ in REAL
           if (fam := parsers._family(_template(name), config)) is not None}
    hit |= {fam.name for _, template, config, _ in SYNTHETIC
            if (fam := parsers._family(template, config)) is not None}
    assert hit == {fam.name for fam in parsers._FAMILIES}


def test_table_uses_only_names_vllm_ships() -> None:
    for fam in parsers._FAMILIES:
        assert fam.tool_parser is None or fam.tool_parser in VLLM_TOOL_PARSERS, fam.name
        assert (fam.reasoning_parser is None
                or fam.reasoning_parser in VLLM_REASONING_PARSERS), fam.name
    assert {"qwen3", "deepseek_r1"} <= VLLM_REASONING_PARSERS  # the generic <think> rule


def test_family_markers_need_tools_in_the_template() -> None:
    """Markers alone (a template that renders past tool calls) give no tool parser."""
    template = "{% for m in messages %}{{ '<tool_call>' + m.content + '</tool_call>' }}{% endfor %}"
    assert detect_features(template, {}) == EngineFeatures()


def test_no_template_no_features() -> None:
    """A base model without a chat template: nothing to parse for."""
    assert detect_features("", {"model_type": "qwen3"}) == EngineFeatures()


def test_model_type_rows_need_their_model_type() -> None:
    granite4 = _template("ibm-granite-granite-4.0")
    assert detect_features(granite4, {}).tool_parser == "hermes"
    assert detect_features(granite4, {"model_type": "granite"}).tool_parser == "granite4"
    assert detect_features(_with_tools("<tool_calls>"), {}) == EngineFeatures()


@pytest.mark.parametrize(("template", "reasoning"), [
    # Qwen3-Instruct-2507 style: strips old thinking from history but never thinks.
    ("{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}", None),
    # Thinking switched off for good: an empty think block in the generation prompt.
    ("{% if add_generation_prompt %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}", None),
    # Always-open thinking (Qwen3-Thinking-2507, QwQ, R1 distills).
    ("{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}",
     "deepseek_r1"),
    # enable_thinking that only appears in prose is no switch.
    ("{{ 'set enable_thinking to think: <think>' }}", None),
])
def test_generic_thinking(template: str, reasoning: str | None) -> None:
    assert detect_features(template, {}).reasoning_parser == reasoning


@pytest.mark.parametrize(("template", "reads"), [
    ("{% if tools %}x{% endif %}", True),
    ("{%- if not tools is defined %}{% set tools = none %}{% endif %}", True),
    ("{{- tools | tojson }}", True),
    ("{% for t in tools %}{% endfor %}", True),
    ("You may use tools. {{ messages }}", False),  # prose outside any block
    ("{{ 'the tools are:' }}", False),  # inside a string literal
    ("{{ \"tools \\\" tools\" }}", False),  # escaped quote inside a string
    ("{# tools #}{{ x }}", False),  # a comment
    ("{{ message.tools }}", False),  # an attribute (Phi-4-mini: message['tools'])
    ("{{ message['tools'] }}", False),
    ("{% if custom_tools or available_tools or tools_in_user_message %}{% endif %}", False),
    ("{{ tools", True),  # a block left open still reads the variable
    ("{{ 'tools", False),  # and an unterminated string is still a string
])
def test_tools_variable(template: str, reads: bool) -> None:
    assert bool(parsers._TOOLS_VAR.search(jinja_code(template))) is reads


QWEN3 = EngineFeatures("hermes", "qwen3", "enable_thinking")
NO_TOOLS = EngineFeatures(None, "deepseek_r1")


@pytest.mark.parametrize(("features", "user", "added", "caps"), [
    (QWEN3, [], [*TOOLS, "hermes", "--reasoning-parser", "qwen3"], (True, True)),
    # Explicit vllm_args win, in any spelling vLLM accepts.
    (QWEN3, ["--tool-call-parser", "qwen3_xml"], ["--enable-auto-tool-choice",
                                                  "--reasoning-parser", "qwen3"], (True, True)),
    (QWEN3, ["--tool_call_parser=pythonic"], ["--enable-auto-tool-choice",
                                              "--reasoning-parser", "qwen3"], (True, True)),
    (QWEN3, ["--enable-auto-tool-choice"], ["--tool-call-parser", "hermes",
                                            "--reasoning-parser", "qwen3"], (True, True)),
    (QWEN3, ["--reasoning-parser", "deepseek_r1"], [*TOOLS, "hermes"], (True, True)),
    (QWEN3, ["--reasoning_parser=deepseek_r1"], [*TOOLS, "hermes"], (True, True)),
    # An empty reasoning parser is vLLM's "none": thinking off.
    (QWEN3, ["--reasoning-parser="], [*TOOLS, "hermes"], (True, False)),
    (QWEN3, ["--reasoning-parser", ""], [*TOOLS, "hermes"], (True, False)),
    # --no-enable-auto-tool-choice switches tools off, whatever else is set.
    (QWEN3, ["--no-enable-auto-tool-choice"], ["--reasoning-parser", "qwen3"], (False, True)),
    (QWEN3, ["--no_enable_auto_tool_choice", "--tool-call-parser", "hermes"],
     ["--reasoning-parser", "qwen3"], (False, True)),
    # A model without tool support gets no tool flags, unless the user names a parser.
    (NO_TOOLS, [], ["--reasoning-parser", "deepseek_r1"], (False, True)),
    (NO_TOOLS, ["--enable-auto-tool-choice"], ["--reasoning-parser", "deepseek_r1"],
     (False, True)),
    (NO_TOOLS, ["--tool-call-parser", "hermes"],
     ["--enable-auto-tool-choice", "--reasoning-parser", "deepseek_r1"], (True, True)),
    (EngineFeatures(), [], [], (False, False)),
    (EngineFeatures(), ["--max-model-len", "4096"], [], (False, False)),
])
def test_feature_args_and_capabilities(features: EngineFeatures, user: list[str],
                                       added: list[str], caps: tuple[bool, bool]) -> None:
    assert feature_args(features, user) == added
    # The engine runs with ours and the user's flags; the user's come last (build_argv).
    assert advertised([*added, *user]) == caps


@pytest.mark.parametrize(("argv", "caps"), [
    ([], (False, False)),
    (["--enable-auto-tool-choice"], (False, False)),  # no parser: vLLM refuses to start
    (["--tool-call-parser", "hermes"], (False, False)),  # no auto tool choice
    (["--enable-auto-tool-choice", "--tool-call-parser"], (False, False)),  # no value
    (["--tool-call-parser", "--enable-auto-tool-choice"], (False, False)),
    (["--enable-auto-tool-choice", "--tool-call-parser=hermes"], (True, False)),
    (["--enable_auto_tool_choice", "--tool_call_parser", "hermes"], (True, False)),
    (["--enable-auto-tool-choice", "--tool-call-parser", "hermes",
      "--no-enable-auto-tool-choice"], (False, False)),  # the last one wins
    (["--no-enable-auto-tool-choice", "--enable-auto-tool-choice",
      "--tool-call-parser", "hermes"], (True, False)),
    (["--reasoning-parser", "qwen3"], (False, True)),
    (["--reasoning-parser", "qwen3", "--reasoning-parser="], (False, False)),
    (["--model", "x", "--reasoning-parser=deepseek_r1", "--dtype", "auto"], (False, True)),
])
def test_advertised(argv: list[str], caps: tuple[bool, bool]) -> None:
    assert advertised(argv) == caps
