"""Make sense of a vLLM child's output lines (pure): log level, process tag, load phase.

vLLM V1 lines look like `(EngineCore_DP0 pid=42) INFO 11-22 10:00:00 [file.py:12] message`;
tracebacks and argparse errors have no level prefix, so a small stateful reader maps them to
ERROR until the next prefixed line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

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
# uvicorn's access line (`INFO:     127.0.0.1:5 - "GET /metrics HTTP/1.1" 200 OK`): the gateway
# logs every request itself, and the supervisor's own probes would fill the log, so DEBUG.
_ACCESS = re.compile(r'^INFO:\s+\S+ - "[A-Z]+ \S+ HTTP/[\d.]+" \d{3}')
_ACCESS_RAW = re.compile(_ACCESS.pattern.encode())


def is_access_line(raw: bytes) -> bool:
    """uvicorn's access line, before decoding: the relay skips these cheaply when DEBUG is off
    (they would not be logged, and must not use up the line budget of lines that would)."""
    return _ACCESS_RAW.match(raw) is not None
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
        if _ACCESS.match(body):
            return ParsedLine(text, logging.DEBUG, process)
        if body.lstrip().startswith("Traceback (most recent call last)"):
            self._in_traceback = True
        if self._in_traceback or _ERRORISH.match(body.strip()):
            return ParsedLine(text, logging.ERROR, process)
        return ParsedLine(text, logging.INFO, process)


class LineBudget:
    """How many lines of one child's output may be logged: a token bucket (RATE lines a
    second, bursts up to BURST: a start-up prints a few hundred at once), shared by its two
    pipes. Lines over it are dropped and counted, and the count is reported now and then."""

    RATE = 200.0
    BURST = 2000
    REPORT_EVERY = 10.0

    def __init__(self, clock: Callable[[], float], rate: float = RATE, burst: int = BURST
                 ) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._last = clock()
        self._reported_at = self._last
        self._unreported = 0
        self.dropped_total = 0

    def grant(self, wanted: int) -> int:
        """How many of `wanted` lines may be logged now; the rest count as dropped."""
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._last) * self._rate)
        self._last = now
        allowed = min(wanted, int(self._tokens))
        self._tokens -= allowed
        self._unreported += wanted - allowed
        self.dropped_total += wanted - allowed
        return allowed

    def due_report(self, *, final: bool = False) -> int:
        """Lines dropped since the last report, once REPORT_EVERY has passed (or at the end);
        0 when there is nothing to say yet."""
        now = self._clock()
        if not self._unreported or (not final and now - self._reported_at < self.REPORT_EVERY):
            return 0
        count, self._unreported, self._reported_at = self._unreported, 0, now
        return count
