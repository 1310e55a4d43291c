"""Logging setup: journald's native protocol under systemd, JSON lines, or text for a terminal.

Every record may carry vllama's fields through ``extra=`` (``component``, ``model``,
``request_id``, ``status``, ``latency_ms``, ``vllm_pid``, ...). Journald gets them as
``VLLAMA_*`` fields; JSON lines get them as keys; text shows the interesting ones inline.
The request id lives in a context variable so every line logged while serving a request
carries it without being passed around.

Logged values carry what clients sent (paths, model names, header values), so no format lets a
control character through raw: a CR, LF or ESC from outside can neither forge a log line nor
drive a terminal. Text and journald escape them (``clean``); only a traceback keeps its own line
breaks, each continuation line indented in text so that nothing but a real record starts at
column 0. JSON keeps the values exact: its encoder escapes C0 controls and the line is then made
ASCII-safe for the rest (DEL, C1, U+2028/U+2029); bytes that were not UTF-8 (a header's lone
surrogates) cannot be encoded, so they are written as ``\\xNN`` there too.
"""

from __future__ import annotations

import array
import asyncio
import contextvars
import logging
import os
import re
import socket
import struct
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, TextIO

import msgspec

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

JOURNAL_SOCKET = "/run/systemd/journal/socket"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SRCFILE = logging._srcfile  # logging's own, for journald's CODE_FILE/CODE_LINE/CODE_FUNC

# syslog priorities (journald PRIORITY=)
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


# C0 controls but TAB, DEL, C1 controls, the Unicode line and paragraph separators, and lone
# surrogates (undecodable bytes in a header arrive surrogate-escaped).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\x1b": "\\e"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_SURROGATE = re.compile("[\ud800-\udfff]")
# What msgspec writes raw but a terminal or a line splitter may still act on.
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")


def clean(value: object) -> str:
    """``str(value)`` with control characters escaped (``\\n``, ``\\r``, ``\\e``, ``\\xNN``)."""
    text = value if isinstance(value, str) else str(value)
    if _CONTROL.search(text) is None:  # the common case: one scan, no copy
        return text
    return _CONTROL.sub(_escape_char, text)


def _json_text(value: str) -> str:
    return value if _SURROGATE.search(value) is None else _SURROGATE.sub(_escape_char, value)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def traceback_text(record: logging.LogRecord) -> str:
    """The record's traceback, each line escaped but the line breaks kept."""
    if not record.exc_info:
        return ""
    text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return "\n".join(clean(line) for line in text.split("\n"))


def priority(levelno: int) -> int:
    for level, prio in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return prio
    return 7


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, plus the current request id."""
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
    rid = fields.get("request_id") or request_id.get()
    if rid:
        fields["request_id"] = rid
    return fields


def journal_stream_matches(journal_stream: str, stream: TextIO | None = None) -> bool:
    """True when stderr is the journal stream systemd connected (JOURNAL_STREAM=dev:ino).

    A redirected stderr keeps the variable but not the device/inode, so it stays plain text."""
    if not journal_stream:
        return False
    try:
        dev, ino = (int(x) for x in journal_stream.split(":", 1))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class TextFormatter(logging.Formatter):
    """One readable line: time, level, logger, message, then key=value extras."""

    _SHOWN = ("model", "request_id", "status", "latency_ms", "vllm_pid", "state", "worker")
    # The time stamp is formatted once per second, not per line (one line per request).
    _sec = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        # Only the shown fields are looked up (none is a standard LogRecord attribute, so
        # this equals picking them from record_fields without building all of it).
        attrs = vars(record)
        sec = int(record.created)
        if sec != self._sec:
            self._sec, self._stamp = sec, time.strftime("%H:%M:%S", time.localtime(sec))
        stamp = self._stamp
        name = "vllm" if attrs.get("component") == "vllm" else record.name.removeprefix(
            "vllama.")
        rid = attrs.get("request_id") or request_id.get()
        shown = []
        for key in self._SHOWN:
            if key == "request_id" and rid:
                shown.append(f"request_id={clean(rid)}")
            elif key in attrs:
                shown.append(f"{key}={clean(attrs[key])}")
        extras = " ".join(shown)
        line = f"{stamp} {record.levelname:<7} {name}: {clean(record.getMessage())}"
        if extras:
            line += f"  [{extras}]"
        if record.exc_info:
            line += "".join(f"\n    {part}" for part in traceback_text(record).split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line (msgspec-encoded), every character outside printable ASCII
    and plain text escaped (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _json_text(record.getMessage()),
        }
        for key, value in record_fields(record).items():
            doc[key] = value if isinstance(value, int | float | bool | None) else _json_text(
                str(value))
        if record.exc_info:
            doc["exc"] = _json_text("".join(traceback.format_exception(*record.exc_info)))
        line = msgspec.json.encode(doc).decode()
        return line if _JSON_RAW.search(line) is None else _JSON_RAW.sub(_json_escape, line)


def encode_journal_entry(fields: Mapping[str, str]) -> bytes:
    """Serialize fields in journald's native datagram format.

    Values with a newline use the binary form: NAME\\n, a 64-bit little-endian length, the
    value, \\n (a multi-line traceback stays one entry)."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_key(name: str) -> str:
    """VLLAMA_<NAME>: uppercase ASCII letters, digits and underscores, no leading underscore."""
    cleaned = "".join(c if c.isalnum() else "_" for c in name.upper())
    return "VLLAMA_" + cleaned.strip("_")


class JournalHandler(logging.Handler):
    """Sends each record to journald as one datagram with PRIORITY and VLLAMA_* fields."""

    def __init__(self, identifier: str = "vllama", address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:  # large tracebacks: ask for a bigger send buffer (best effort)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
        except OSError:
            pass

    def entry(self, record: logging.LogRecord) -> dict[str, str]:
        fields = record_fields(record)
        message = clean(record.getMessage())
        if record.exc_info:
            message += "\n" + traceback_text(record)
        component = str(fields.get("component", ""))
        entry = {
            "MESSAGE": message,
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": "vllm" if component == "vllm" else self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }
        if not component:
            fields["component"] = record.name.removeprefix("vllama.").split(".")[0]
        for key, value in fields.items():
            if key == "vllm_pid":
                entry["VLLM_PID"] = clean(value)
            entry[journal_key(key)] = clean(value)
        return entry

    def emit(self, record: logging.LogRecord) -> None:
        if self.sock.fileno() < 0:  # closed at shutdown; late records (aiohttp GC) are dropped
            return
        try:
            data = encode_journal_entry(self.entry(record))
            try:
                self.sock.sendto(data, self.address)
            except OSError as exc:
                if exc.errno != 90:  # EMSGSIZE: fall back to a sealed memfd
                    raise
                self._send_memfd(data)
        except Exception:
            self.handleError(record)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("journal-entry", os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            import fcntl

            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            fds = array.array("i", [fd])
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, self.address)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()
        super().close()


class StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """logging's StreamHandler, writing the lines of one event-loop iteration with one write.
    The access log writes a line per request, and stderr is line-buffered (a system call per
    line, the larger part of a line's cost); under load many requests end in one iteration.
    A line logged with no loop running in its thread (start-up, shutdown, a worker thread) is
    written at once, after any still pending, as before."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # called under the handler's lock
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if len(self._pending) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                try:
                    self.stream.write(text)
                except Exception:  # a closed or broken stream: logging must not raise
                    return
            super().flush()


def choose_format(log_format: str, journal_stream: str, stream: TextIO | None = None) -> str:
    if log_format != "auto":
        return log_format
    return "journal" if journal_stream_matches(journal_stream, stream) else "text"


class _Fields(logging.Filter):
    """Stamps fixed fields on every record of this process (a gateway worker's number)."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


def setup(level: str = "info", log_format: str = "auto", journal_stream: str = "",
          *, stream: TextIO | None = None, journal_address: str = JOURNAL_SOCKET,
          fields: Mapping[str, Any] | None = None) -> str:
    """Configure the root logger once; returns the format chosen. `fields` go on every
    record (journald VLLAMA_<KEY>, JSON keys)."""
    chosen = choose_format(log_format, journal_stream, stream)
    handler: logging.Handler
    if chosen == "journal":
        handler = JournalHandler(address=journal_address)
    else:
        handler = StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    if fields:
        handler.addFilter(_Fields(fields))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # What the chosen output never shows is not collected per record (the optimisations the
    # logging HOWTO documents; the access log makes a record per request): thread and process
    # names, and, unless journald gets CODE_FILE/LINE/FUNC, the caller (a walk up the stack).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = _SRCFILE if chosen == "journal" else None
    # aiohttp's own access log duplicates ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return chosen
