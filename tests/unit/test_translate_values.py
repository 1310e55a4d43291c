"""keep_alive, think, format, options, timestamps (reference §5, §6)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from vllama.errors import BadRequest, VllamaError
from vllama.translate import (
    CreatedAt,
    decode_options,
    parse_format,
    parse_go_duration,
    parse_keep_alive,
    parse_think,
    rfc3339_utc,
)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (None, None), (0, 0.0), (0.0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0), (1.5, 1.5),
        (-1, math.inf), (-0.5, math.inf), ("5m", 300.0), ("5m0s", 300.0), ("1h30m", 5400.0),
        ("0.5h", 1800.0), (".5s", 0.5), ("1.5s", 1.5), ("-1m", math.inf), ("+10s", 10.0),
        ("100ms", 0.1), ("1us", 1e-6), ("1µs", 1e-6), ("1ns", 1e-9), ("2h45m30.5s", 9930.5),
    ],
)
def test_keep_alive_ok(raw: Any, seconds: float | None) -> None:
    got = parse_keep_alive(raw)
    if seconds is None or math.isinf(seconds):
        assert got == seconds
    else:
        assert got == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("1h1", 'time: missing unit in duration "1h1"'),
        ("abc", 'time: invalid duration "abc"'),
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        ("10x", 'time: unknown unit "x" in duration "10x"'),
        ("99999999999h", 'time: invalid duration "99999999999h"'),
        (True, "Unsupported type: 'bool'"),
        (False, "Unsupported type: 'bool'"),
        ([1], "Unsupported type: '[]interface {}'"),
        ({"a": 1}, "Unsupported type: 'map[string]interface {}'"),
    ],
)
def test_keep_alive_errors(raw: Any, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_keep_alive(raw)
    assert exc.value.message == message


def test_go_duration_nanoseconds() -> None:
    assert parse_go_duration("1h2m3s4ms5us6ns") == 3_723_004_005_006
    assert parse_go_duration("-1.5s") == -1_500_000_000


@pytest.mark.parametrize("raw", [None, True, False, "high", "medium", "low", "max"])
def test_think_ok(raw: Any) -> None:
    assert parse_think(raw) == raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("on",
         'invalid think value: "on" (must be "high", "medium", "low", "max", true, or false)'),
        ("", 'invalid think value: "" (must be "high", "medium", "low", "max", true, or false)'),
        (1, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
        ([], 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    ],
)
def test_think_errors(raw: Any, message: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_think(raw)
    assert exc.value.message == message


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (msgspec.Raw(b"null"), None),
        (msgspec.Raw(b'""'), None),
        ("", None),
        (msgspec.Raw(b'"json"'), {"type": "json_object"}),
        ("json", {"type": "json_object"}),
        (SCHEMA, {"type": "json_schema", "json_schema": {"name": "schema", "schema": SCHEMA}}),
        (b'{"type":"object"}',
         {"type": "json_schema", "json_schema": {"name": "schema", "schema": {"type": "object"}}}),
    ],
)
def test_format_ok(raw: Any, expected: Any) -> None:
    assert parse_format(raw) == expected


def test_format_schema_kept_raw() -> None:
    raw = msgspec.Raw(b'{"type":"object","properties":{}}')
    got = parse_format(raw)
    assert got is not None
    assert msgspec.json.encode(got) == (
        b'{"type":"json_schema","json_schema":{"name":"schema",'
        b'"schema":{"type":"object","properties":{}}}}')


@pytest.mark.parametrize(
    ("raw", "shown"),
    [(msgspec.Raw(b'"yaml"'), '"\\"yaml\\""'), (msgspec.Raw(b"5"), '"5"'),
     (msgspec.Raw(b"[1]"), '"[1]"'), ("yaml", '"\\"yaml\\""')],
)
def test_format_errors(raw: Any, shown: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_format(raw)
    assert exc.value.message == (
        f'invalid format: {shown}; expected "json" or a valid JSON Schema object')


def test_options_coercion() -> None:
    got = decode_options({
        "num_predict": 2.7, "temperature": 1, "top_k": 40, "stop": ["a", "b"], "seed": None,
        "mirostat": None, "tfs_z": "whatever", "use_mmap": True, "unknown": [1],
        "repeat_penalty": 1.1, "num_ctx": 4096.0,
    })
    assert got == {"num_predict": 2, "temperature": 1.0, "top_k": 40, "stop": ["a", "b"],
                   "use_mmap": True, "repeat_penalty": 1.1, "num_ctx": 4096}
    assert isinstance(got["temperature"], float)
    assert decode_options(None) == {}
    assert decode_options({"stop": "x"}) == {"stop": ["x"]}  # leniency
    assert decode_options({"num_predict": -2.5}) == {"num_predict": -2}


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"num_predict": "10"}, 'option "num_predict" must be of type integer'),
        ({"num_predict": True}, 'option "num_predict" must be of type integer'),
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"top_p": False}, 'option "top_p" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": 5}, 'option "stop" must be of type array'),
        ({"stop": ["a", 1]}, 'option "stop" must be an array of strings'),
    ],
)
def test_options_errors_are_500(opts: dict[str, Any], message: str) -> None:
    with pytest.raises(VllamaError) as exc:
        decode_options(opts)
    assert exc.value.message == message
    assert exc.value.status == 500


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1732269600_000000000, "2024-11-22T10:00:00Z"),
        (1732269600_101000000, "2024-11-22T10:00:00.101Z"),
        (1732269600_196249000, "2024-11-22T10:00:00.196249Z"),
        (1732269600_000000001, "2024-11-22T10:00:00.000000001Z"),
    ],
)
def test_created_at(ns: int, text: str) -> None:
    assert rfc3339_utc(ns) == text
    fmt = CreatedAt()
    assert fmt(ns) == text
    assert fmt(ns + 1_000_000_000).startswith("2024-11-22T10:00:01")
