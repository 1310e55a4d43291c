"""Logging outputs: journald native datagrams on a real socket, JSON lines, text."""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from vllama import log


def parse_entry(data: bytes) -> dict[str, str]:
    """Decode journald's native format (both the KEY=value and the binary form)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            fields[key.decode()] = value.decode()
            pos = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            fields[line.decode()] = data[nl + 9:nl + 9 + size].decode()
            pos = nl + 9 + size + 1
    return fields


@pytest.fixture
def journal_socket() -> Iterator[tuple[socket.socket, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "journal.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield sock, path
        finally:
            sock.close()


def test_journal_handler_sends_fields(journal_socket: tuple[socket.socket, str]) -> None:
    sock, path = journal_socket
    handler = log.JournalHandler(address=path)
    logger = logging.getLogger("vllama.test.journal")
    logger.addHandler(handler)
    logger.propagate = False
    token = log.request_id.set("req-42")
    try:
        logger.warning("engine %s restarted", "tiny",
                       extra={"component": "supervisor", "model": "tiny", "restarts": 2})
        entry = parse_entry(sock.recv(65536))
        assert entry["MESSAGE"] == "engine tiny restarted"
        assert entry["PRIORITY"] == "4"
        assert entry["SYSLOG_IDENTIFIER"] == "vllama"
        assert entry["VLLAMA_COMPONENT"] == "supervisor"
        assert entry["VLLAMA_MODEL"] == "tiny"
        assert entry["VLLAMA_RESTARTS"] == "2"
        assert entry["VLLAMA_REQUEST_ID"] == "req-42"
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed\nbadly", extra={"component": "vllm", "vllm_pid": 7})
        entry = parse_entry(sock.recv(65536))
        # the message's own line break is escaped; the traceback keeps its lines
        assert entry["MESSAGE"].startswith("failed\\nbadly\nTraceback")
        assert "ValueError: boom" in entry["MESSAGE"]
        assert entry["PRIORITY"] == "3"
        assert entry["SYSLOG_IDENTIFIER"] == "vllm"
        assert entry["VLLM_PID"] == "7"
    finally:
        log.request_id.reset(token)
        logger.removeHandler(handler)
        handler.close()


def test_journal_stream_detection(tmp_path: Path) -> None:
    with (tmp_path / "err").open("w") as stream:
        st = os.fstat(stream.fileno())
        assert log.journal_stream_matches(f"{st.st_dev}:{st.st_ino}", stream)
        assert not log.journal_stream_matches(f"{st.st_dev}:{st.st_ino + 1}", stream)
        assert not log.journal_stream_matches("", stream)
        assert not log.journal_stream_matches("garbage", stream)
        assert log.choose_format("auto", f"{st.st_dev}:{st.st_ino}", stream) == "journal"
        assert log.choose_format("auto", "1:1", stream) == "text"
        assert log.choose_format("json", f"{st.st_dev}:{st.st_ino}", stream) == "json"


def test_json_lines_carry_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.JsonFormatter())
    logger = logging.getLogger("vllama.test.json")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.info("hello", extra={"model": "m", "status": 200})
    finally:
        logger.removeHandler(handler)
    doc = msgspec.json.decode(stream.getvalue().strip())
    assert doc["msg"] == "hello"
    assert doc["level"] == "info"
    assert doc["model"] == "m"
    assert doc["status"] == 200


def test_text_format_is_one_line() -> None:
    record = logging.makeLogRecord({"name": "vllama.gateway", "levelno": logging.INFO,
                                    "levelname": "INFO", "msg": "GET / 200",
                                    "model": "tiny", "status": 200})
    line = log.TextFormatter().format(record)
    assert "INFO" in line and "gateway: GET / 200" in line and "model=tiny" in line
    assert "\n" not in line


def test_priority_mapping() -> None:
    assert [log.priority(lv) for lv in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


def test_journal_key_sanitized() -> None:
    assert log.journal_key("latency-ms") == "VLLAMA_LATENCY_MS"


FORGED = "GET /x\n12:00:00 INFO    access: GET /admin 200\r\x1b[2J\u2028\x85\udcff"


def log_to(formatter: logging.Formatter, *args: object, **extra: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("vllama.test.escape")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.info(*args, extra=extra)
        try:
            raise ValueError("bad\n12:00:00 INFO    forged")
        except ValueError:
            logger.exception("failed %s", "\x1b[31m")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_text_escapes_control_characters_in_every_field() -> None:
    out = log_to(log.TextFormatter(), "%s", FORGED, model="a\nb", status="\r2")
    lines = out.splitlines()
    assert lines[0].endswith("GET /x\\n12:00:00 INFO    access: GET /admin 200\\r\\e[2J"
                             "\\u2028\\x85\\xff  [model=a\\nb status=\\r2]")
    assert lines[1].endswith("ERROR   test.escape: failed \\e[31m")
    # every line but the two records' own starts with whitespace: a traceback cannot forge one
    assert all(line.startswith("    ") for line in lines[2:]), lines
    assert "    12:00:00 INFO    forged" in lines
    assert not any(c in out for c in "\r\x1b\u2028\x85")


def test_json_keeps_values_exact_and_the_line_ascii_safe() -> None:
    out = log_to(log.JsonFormatter(), "%s", FORGED, model="a\nb", status=200)
    first, second = out.splitlines()
    assert all(c == "\n" or " " <= c < "\x7f" for c in out), out
    doc = msgspec.json.decode(first)
    assert doc["msg"] == FORGED[:-1] + "\\xff"  # only the undecodable byte cannot stay
    assert doc["model"] == "a\nb" and doc["status"] == 200
    exc = msgspec.json.decode(second)["exc"]
    assert exc.endswith("ValueError: bad\n12:00:00 INFO    forged\n")


def test_journal_fields_are_escaped(journal_socket: tuple[socket.socket, str]) -> None:
    sock, path = journal_socket
    handler = log.JournalHandler(address=path)
    logger = logging.getLogger("vllama.test.journal-escape")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("%s", FORGED, extra={"model": "a\nb\x1b"})
        entry = parse_entry(sock.recv(65536))
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert entry["MESSAGE"] == log.clean(FORGED)
    assert "\n" not in entry["MESSAGE"] and "\x1b" not in entry["MESSAGE"]
    assert entry["VLLAMA_MODEL"] == "a\\nb\\e"


class _CountingStream(io.StringIO):
    """Counts the writes a handler makes (each one a system call on a real stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def counted() -> Iterator[tuple[logging.Logger, _CountingStream]]:
    """A logger writing text through vllama's StreamHandler into a stream that counts writes."""
    stream = _CountingStream()
    handler = log.StreamHandler(stream)
    handler.setFormatter(log.TextFormatter())
    logger = logging.getLogger("vllama.test.flush")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_text_lines_logged_in_one_loop_iteration_are_written_once_after_it(
        counted: tuple[logging.Logger, _CountingStream]) -> None:
    import asyncio

    logger, stream = counted

    async def burst() -> tuple[int, str]:
        for i in range(50):
            logger.info("request %d", i)
        seen = (stream.writes, stream.getvalue())  # nothing written within the iteration
        await asyncio.sleep(0)  # the loop runs its callbacks: one write for the 50 lines
        return seen

    assert asyncio.run(burst()) == (0, "")
    assert stream.writes == 1
    text = stream.getvalue()
    assert text.count("\n") == 50 and "request 0" in text and "request 49" in text
    assert text.index("request 0") < text.index("request 49")
    logger.info("no loop running")  # start-up, shutdown, threads: written at once
    assert stream.writes == 2 and stream.getvalue().endswith("no loop running\n")


def test_a_line_logged_as_the_loop_ends_is_written_once(
        counted: tuple[logging.Logger, _CountingStream]) -> None:
    import asyncio

    logger, stream = counted

    async def last_words() -> None:
        logger.info("stopping")
        asyncio.get_running_loop().stop()  # the loop may stop before its callback runs

    loop = asyncio.new_event_loop()
    loop.run_until_complete(last_words())
    loop.close()
    logger.handlers[0].flush()  # what logging.shutdown() does at exit
    assert stream.getvalue().count("stopping\n") == 1


def test_journald_keeps_the_caller_that_text_and_json_do_not_collect(
        journal_socket: tuple[socket.socket, str]) -> None:
    sock, path = journal_socket
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        log.setup("info", "text", stream=io.StringIO())  # the caller is not collected...
        records: list[logging.LogRecord] = []

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        capture = Capture()
        root.addHandler(capture)
        logging.getLogger("vllama.test").info("text")
        root.removeHandler(capture)
        [record] = records
        assert (record.pathname, record.lineno, record.funcName) == ("(unknown file)", 0,
                                                                     "(unknown function)")
        assert record.threadName is None and record.processName is None  # nor names
        log.setup("info", "journal", journal_address=path)  # ...until journald wants it
        logging.getLogger("vllama.test").info("where from")
        entry = parse_entry(sock.recv(65536))
        assert entry["MESSAGE"] == "where from"
        assert entry["CODE_FILE"] == __file__
        assert entry["CODE_FUNC"].startswith("test_journald_keeps_the_caller")
        assert int(entry["CODE_LINE"]) > 0
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
