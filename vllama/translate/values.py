"""Validation of Ollama's loosely typed top-level fields and of `options`, with Ollama's exact
texts and statuses (reference §5, §6.1, §6.2, §6.5, §6.7)."""

from __future__ import annotations

import math
import re
import time
from typing import Any

import msgspec

from vllama.errors import BadRequest, VllamaError
from vllama.translate.gojson import go_quote

# ---------------------------------------------------------------------------------------------
# keep_alive (api.Duration)

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DUR_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_MAX_NS = (1 << 63) - 1


def _time_quote(s: str) -> str:
    # Go's time.quote: like strconv.Quote for the ASCII cases that matter
    return go_quote(s)


def parse_go_duration(s: str) -> int:
    """Go time.ParseDuration; returns nanoseconds or raises BadRequest with Go's text."""
    orig = s
    invalid = BadRequest(f"time: invalid duration {_time_quote(orig)}")
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        m = _DUR_PART.match(s)
        if m is None:  # pragma: no cover - the pattern always matches
            raise invalid
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            # no digits at all (".s" or a letter first)
            raise invalid
        if not unit:
            raise BadRequest(f"time: missing unit in duration {_time_quote(orig)}")
        mult = _UNIT_NS.get(unit)
        if mult is None:
            raise BadRequest(f"time: unknown unit {_time_quote(unit)} in duration "
                             f"{_time_quote(orig)}")
        value = int(whole or "0") * mult
        if frac:
            value += int(int(frac) * mult / (10 ** len(frac)))
        total += value
        if total > _MAX_NS + (1 if neg else 0):
            raise invalid
        s = s[m.end():]
    return -total if neg else total


def parse_keep_alive(raw: Any) -> float | None:
    """keep_alive in seconds: None = unset, math.inf = forever (any negative value).

    A number is seconds; a string is a Go duration; anything else is Go's `Unsupported type`.
    """
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise BadRequest("Unsupported type: 'bool'")
    if isinstance(raw, (int, float)):
        return math.inf if raw < 0 else float(raw)
    if isinstance(raw, str):
        ns = parse_go_duration(raw)
        return math.inf if ns < 0 else ns / 1e9
    if isinstance(raw, list):
        raise BadRequest("Unsupported type: '[]interface {}'")
    if isinstance(raw, dict):
        raise BadRequest("Unsupported type: 'map[string]interface {}'")
    raise BadRequest(f"Unsupported type: '{type(raw).__name__}'")


# ---------------------------------------------------------------------------------------------
# think (api.ThinkValue)

THINK_LEVELS = ("high", "medium", "low", "max")


def parse_think(raw: Any) -> bool | str | None:
    """None (unset), a bool, or a level string ("high", "medium", "low", "max")."""
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        if raw not in THINK_LEVELS:
            raise BadRequest(f'invalid think value: {go_quote(raw)} (must be "high", "medium", '
                             '"low", "max", true, or false)')
        return raw
    raise BadRequest('think must be a boolean or string ("high", "medium", "low", "max", true, '
                     "or false)")


# ---------------------------------------------------------------------------------------------
# format


def parse_format(raw: msgspec.Raw | bytes | str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Ollama `format` -> vLLM `response_format`, or None when unset.

    Accepts the raw JSON bytes (as decoded into the request Structs) or an already decoded
    value. "json" -> json_object; an object -> json_schema named "schema" (Ollama's own name).
    """
    if raw is None:
        return None
    if isinstance(raw, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": raw}}
    if isinstance(raw, str):
        if raw == "":
            return None
        if raw == "json":
            return {"type": "json_object"}
        text = msgspec.json.encode(raw)
    else:
        text = bytes(raw).strip()
    if text in (b"", b"null", b'""'):
        return None
    if text == b'"json"':
        return {"type": "json_object"}
    if text[:1] == b"{":
        schema = msgspec.Raw(text) if isinstance(raw, msgspec.Raw) else msgspec.json.decode(text)
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
    shown = go_quote(text.decode("utf-8", "replace"))
    raise BadRequest(f'invalid format: {shown}; expected "json" or a valid JSON Schema object')


# ---------------------------------------------------------------------------------------------
# options (api.Options.FromMap)

INT, FLOAT, BOOL, STRS = "integer", "float32", "boolean", "strings"

# Every option Ollama knows, with its Go kind. Unknown keys are ignored, like Ollama.
OPTION_KINDS: dict[str, str] = {
    # Runner
    "num_ctx": INT,
    "num_batch": INT,
    "num_gpu": INT,
    "main_gpu": INT,
    "use_mmap": BOOL,
    "num_thread": INT,
    # Options
    "num_keep": INT,
    "seed": INT,
    "num_predict": INT,
    "top_k": INT,
    "top_p": FLOAT,
    "min_p": FLOAT,
    "typical_p": FLOAT,
    "repeat_last_n": INT,
    "temperature": FLOAT,
    "repeat_penalty": FLOAT,
    "presence_penalty": FLOAT,
    "frequency_penalty": FLOAT,
    "stop": STRS,
    "draft_num_predict": INT,
}


def _option_error(key: str, what: str) -> VllamaError:
    # Raised from Ollama's scheduler path, hence 500 rather than 400.
    return VllamaError(f"option {go_quote(key)} must be {what}", status=500)


def decode_options(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Validate and coerce `options` like Ollama: unknown keys and nulls dropped, ints
    truncated, wrong types -> 500 `option "k" must be of type ...`. A bare string `stop` is
    accepted as a one-element list (a leniency; Ollama would fail)."""
    out: dict[str, Any] = {}
    if not raw:
        return out
    for key, val in raw.items():
        kind = OPTION_KINDS.get(key)
        if kind is None or val is None:
            continue
        if kind == INT:
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                raise _option_error(key, "of type integer")
            out[key] = int(val)
        elif kind == FLOAT:
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                raise _option_error(key, "of type float32")
            out[key] = float(val)
        elif kind == BOOL:
            if not isinstance(val, bool):
                raise _option_error(key, "of type boolean")
            out[key] = val
        else:  # stop
            if isinstance(val, str):
                out[key] = [val]
                continue
            if not isinstance(val, list):
                raise _option_error(key, "of type array")
            for item in val:
                if not isinstance(item, str):
                    raise _option_error(key, "an array of strings")
            out[key] = val
    return out


def check_top_logprobs(n: int | None) -> None:
    if n is not None and not 0 <= n <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")


# ---------------------------------------------------------------------------------------------
# timestamps and clocks


def rfc3339_utc(ns: int) -> str:
    """`created_at`: RFC 3339 in UTC with `Z`, fraction to the nanosecond, zeros trimmed."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


def rfc3339_local(ns: int) -> str:
    """`modified_at`/`expires_at`: RFC 3339 with the local offset, like Go's time.Time."""
    secs, frac = divmod(ns, 1_000_000_000)
    lt = time.localtime(secs)
    off = lt.tm_gmtoff or 0
    base = time.strftime("%Y-%m-%dT%H:%M:%S", lt)
    if frac:
        base = f"{base}.{frac:09d}".rstrip("0")
    if off == 0:
        return base + "Z"
    sign = "+" if off > 0 else "-"
    off = abs(off)
    return f"{base}{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"


class CreatedAt:
    """A `created_at` formatter that reuses the seconds prefix: per-chunk cost matters when
    relaying tens of thousands of chunks a second."""

    __slots__ = ("_prefix", "_sec")

    def __init__(self) -> None:
        self._sec = ""
        self._prefix = ""

    def __call__(self, ns: int) -> str:
        # string slicing is cheaper than divmod + format on this path
        s = str(ns)
        if len(s) <= 9:
            return rfc3339_utc(ns)
        sec = s[:-9]
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(int(sec)))
        return (self._prefix + s[-9:]).rstrip("0").rstrip(".") + "Z"
