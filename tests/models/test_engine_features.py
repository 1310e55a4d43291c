"""The parsers a model's template needs, wired through `facts.engine_args`: the one function
the supervisor's argv, the scheduler's need, the gateway's capabilities and the store's
listings all derive from. Real chat templates (tests/data/templates) in model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from vllama.config import ModelConfig
from vllama.models import facts
from vllama.models.store import ModelStore

TEMPLATES = REPO_ROOT / "tests" / "data" / "templates"
AUTO = ("--enable-auto-tool-choice", "--tool-call-parser")


def model_dir(root: Path, template: str, config: dict[str, object] | None = None) -> Path:
    """A model directory with config.json and this saved template as chat_template.jinja."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(
        config or {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    (root / "chat_template.jinja").write_text((TEMPLATES / template).read_text())
    return root


@pytest.mark.parametrize(
    ("template", "user", "added", "caps", "kwarg"),
    [
        # vllama's defaults: the parsers the template needs, nothing from the user
        ("Qwen-Qwen2.5-7B-Instruct.jinja", (), (*AUTO, "hermes"), ["completion", "tools"],
         None),
        ("Qwen-Qwen3-0.6B.jinja", (), (*AUTO, "hermes", "--reasoning-parser", "qwen3"),
         ["completion", "tools", "thinking"], "enable_thinking"),
        # R1 distills always think (no switch to send) and never show the model its tools
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", (),
         ("--reasoning-parser", "deepseek_r1"), ["completion", "thinking"], None),
        # V3.1 switches thinking with `thinking`
        ("deepseek-ai-DeepSeek-V3.1.jinja", (), ("--reasoning-parser", "deepseek_v3"),
         ["completion", "thinking"], "thinking"),
        # Gemma 3's template never shows the model its tools: Ollama's 400 stays
        ("google-gemma-3-it.jinja", (), (), ["completion"], None),
        # the user's flags win: their parser, tools off, their reasoning parser
        ("Qwen-Qwen2.5-7B-Instruct.jinja", ("--tool-call-parser", "llama3_json"),
         ("--enable-auto-tool-choice",), ["completion", "tools"], None),
        ("Qwen-Qwen3-0.6B.jinja", ("--no-enable-auto-tool-choice",),
         ("--reasoning-parser", "qwen3"), ["completion", "thinking"], "enable_thinking"),
        ("Qwen-Qwen2.5-7B-Instruct.jinja", ("--reasoning-parser", "deepseek_r1"),
         (*AUTO, "hermes"), ["completion", "tools", "thinking"], None),
        # a pooling engine gets no parsers
        ("Qwen-Qwen3-0.6B.jinja", ("--runner", "pooling"), (), ["embedding"], None),
    ],
)
def test_engine_args_and_capabilities(tmp_path: Path, template: str, user: tuple[str, ...], *,
                                      added: tuple[str, ...], caps: list[str],
                                      kwarg: str | None) -> None:
    files = facts.read_files(model_dir(tmp_path, template))
    model = ModelConfig(name="m", source=str(tmp_path), vllm_args=user)
    args = facts.engine_args(files, model, ())
    assert args == (*user, *added)
    got = facts.capabilities(files, model, args)
    assert got.names() == caps
    assert got.think_kwarg == kwarg


def test_common_args_come_first_and_count(tmp_path: Path) -> None:
    files = facts.read_files(model_dir(tmp_path, "Qwen-Qwen2.5-7B-Instruct.jinja"))
    model = ModelConfig(name="m", source=str(tmp_path), vllm_args=("--max-model-len", "4096"))
    assert facts.engine_args(files, model, ("--no-enable-auto-tool-choice",)) == (
        "--no-enable-auto-tool-choice", "--max-model-len", "4096")


def test_config_capabilities_win(tmp_path: Path) -> None:
    files = facts.read_files(model_dir(tmp_path, "Qwen-Qwen3-0.6B.jinja"))
    model = ModelConfig(name="m", source=str(tmp_path), capabilities=("completion",))
    caps = facts.capabilities(files, model, facts.engine_args(files, model, ()))
    assert caps.names() == ["completion"] and caps.think_kwarg is None


@pytest.mark.parametrize("inline", [False, True])
def test_chat_template_flag_is_what_is_detected(tmp_path: Path, inline: bool) -> None:
    # Gemma's own template has no tools; the user's --chat-template (a file, or the text
    # itself) does.
    files = facts.read_files(model_dir(tmp_path / "m", "google-gemma-3-it.jinja"))
    hermes = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    path = tmp_path / "hermes.jinja"
    path.write_text(hermes)
    user = ("--chat-template", hermes if inline else str(path))
    model = ModelConfig(name="m", source=str(tmp_path / "m"), vllm_args=user)
    args = facts.engine_args(files, model, ())
    assert args == (*user, *AUTO, "hermes")
    assert facts.capabilities(files, model, args).tools
    missing = ModelConfig(name="m", source="/m", vllm_args=("--chat-template", "/nope.jinja"))
    assert facts.engine_args(files, missing, ()) == missing.vllm_args


def test_remote_upstream_keeps_the_common_thinking_switch() -> None:
    model = ModelConfig(name="r", upstream="http://h/v1", capabilities=("completion",
                                                                         "thinking"))
    caps = facts.capabilities(facts.NO_FILES, model, facts.engine_args(facts.NO_FILES, model,
                                                                       ()))
    assert caps.thinking and caps.think_kwarg == facts.DEFAULT_THINK_KWARG


def test_the_store_lists_what_unconfigured_models_would_run_with(tmp_path: Path) -> None:
    tools = model_dir(tmp_path / "tools", "Qwen-Qwen2.5-7B-Instruct.jinja")
    plain = model_dir(tmp_path / "plain", "google-gemma-3-it.jinja")
    aliases = {"t": str(tools), "p": str(plain)}
    store = ModelStore(None, tmp_path / "state", config_aliases=aliases)
    shown = {m.name: store.tag_entry(m).capabilities for m in store.list_models()}
    assert shown == {"t:latest": ["completion", "tools"], "p:latest": ["completion"]}
    assert store.show("t").capabilities == ["completion", "tools"]
    # the config's common vllm_args apply to them as they would to their engines
    off = ModelStore(None, tmp_path / "state", config_aliases=aliases,
                     common_args=("--no-enable-auto-tool-choice",))
    assert off.show("t").capabilities == ["completion"]
