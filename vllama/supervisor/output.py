"""Make sense of a vLLM child's output lines (pure): log level, process tag, load phase.

vLLM V1 lines look like `(EngineCore_DP0 pid=42) INFO 11-22 10:00:00 [file.py:12] message`;
tracebacks and argparse errors have no level prefix, so a small stateful reader maps them to
ERROR until the next prefixed line.
"""

from __future__ import annotations

import logging
import re

import msgspec

_TAG = re.compile(r"^\((?P<proc>[^)]*)\)\s+")
_LEVEL = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+\d\d-\d\d\b")
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
# An unprefixed line that is clearly an error: a raised exception's last line or argparse.
_ERRORISH = re.compile(r"^(?:[\w.]+(?:Error|Exception|Interrupt)\b|\w+: error: )")

# Substring -> phase, in start-up order. Later phases win when a line matches several.
PHASES: tuple[tuple[str, str], ...] = (
    ("vLLM API server version", "starting"),
    ("non-default args", "starting"),
    ("Initializing", "initializing engine"),
    ("Loading model", "loading weights"),
    ("Loading weights", "loading weights"),
    ("Loading safetensors", "loading weights"),
    ("Model loading took", "weights loaded"),
    # Not a bare "torch.compile": --enforce-eager logs "disabling torch.compile" at start.
    ("Dynamo bytecode transform", "compiling"),
    ("Compiling a graph", "compiling"),
    ("Memory profiling", "profiling memory"),
    ("KV cache", "allocating KV cache"),
    ("Capturing CUDA graph", "capturing CUDA graphs"),
    ("Capturing", "capturing CUDA graphs"),
    ("init engine", "engine initialized"),
    ("Starting vLLM API server", "starting API server"),
    ("Application startup complete", "startup complete"),
)


def phase_of(line: str) -> str | None:
    """The load phase a log line announces, or None."""
    for needle, phase in reversed(PHASES):
        if needle in line:
            return phase
    return None


class ParsedLine(msgspec.Struct, frozen=True):
    text: str
    level: int
    process: str  # vLLM's "(APIServer pid=1)" tag without parentheses, or ""


class LineReader:
    """Per-stream state: inside a traceback every line is ERROR."""

    def __init__(self) -> None:
        self._in_traceback = False

    def parse(self, raw: str) -> ParsedLine:
        text = raw.rstrip("\r\n")
        tag = _TAG.match(text)
        process = tag["proc"] if tag is not None else ""
        body = text[tag.end() :] if tag is not None else text
        m = _LEVEL.match(body)
        if m is not None:
            self._in_traceback = False
            return ParsedLine(text, _LEVELS[m["level"]], process)
        if body.lstrip().startswith("Traceback (most recent call last)"):
            self._in_traceback = True
        if self._in_traceback or _ERRORISH.match(body.strip()):
            return ParsedLine(text, logging.ERROR, process)
        return ParsedLine(text, logging.INFO, process)
