"""Go look-alikes for the texts Ollama's clients see: `encoding/json` decoder errors,
`strconv.Quote`, `encoding/base64` error offsets, `%#v` values.

Everything here runs only on the error path (or on small values), so clarity beats speed; the
scanner still skips string bodies with a regex so a large malformed body costs little.
"""

from __future__ import annotations

import binascii
import math
import re
from decimal import Decimal
from typing import Any

import msgspec

_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(s: str) -> str:
    """Go's strconv.Quote (`%q` on a string): double quotes, Go escapes for the rest."""
    out = ['"']
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x80:
                out.append(f"\\x{cp:02x}")
            elif cp <= 0xFFFF:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def go_quote_char(c: int) -> str:
    """encoding/json's quoteChar for a byte, as used in `invalid character ...`."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    q = go_quote(chr(c))
    return "'" + q[1:-1] + "'"


def go_float(f: float) -> str:
    """Go's `%v` for a float64: shortest digits, exponent form outside [1e-4, 1e6)."""
    if math.isnan(f):
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"
    d = Decimal(repr(f))
    sign, digits, _ = d.as_tuple()
    exp = d.adjusted()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    neg = "-" if sign else ""
    # strconv.FormatFloat(f, 'g', -1, 64): exponent form when exp < -4 or exp >= 6
    if exp < -4 or exp >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    fixed = format(abs(d), "f")
    if "." in fixed:
        fixed = fixed.rstrip("0").rstrip(".")
    return neg + fixed


def go_value(v: Any) -> str:
    """Go's `%#v` for a value decoded from JSON (used in /api/show `parameters`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return go_quote(v)
    if v is None:
        return "<nil>"
    return go_quote(msgspec.json.encode(v).decode())


# ---------------------------------------------------------------------------------------------
# encoding/json syntax errors (json.Decoder semantics: one value, trailing bytes ignored)

_WS = b" \t\r\n"
_STRING_BODY = re.compile(rb'[^"\\\x00-\x1f]*')
_DIGITS = re.compile(rb"[0-9]*")
_HEX = b"0123456789abcdefABCDEF"


class GoSyntaxError(Exception):
    pass


# How deep JSON may nest. Go allows 10,000; here both msgspec and this scanner recurse on the C
# and Python stacks, whose limit (1,000 frames) a 2 KB body could otherwise exhaust. Real
# requests (JSON Schemas in `format`, tool parameters) stay far below this.
MAX_DEPTH = 256
# A JSON string (skipped whole, escapes included) or a bracket.
_NESTING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _too_deep(c: int) -> GoSyntaxError:
    return GoSyntaxError(f"invalid character {go_quote_char(c)} exceeded max depth")


def go_depth_error(data: bytes) -> str | None:
    """Go's text for JSON nested deeper than MAX_DEPTH, else None. Cheap for ordinary bodies:
    the brackets are counted in C, and walked only when there are more than MAX_DEPTH."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return None
    depth = 0
    for match in _NESTING.finditer(data):
        c = match.group()[0]
        if c in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                return str(_too_deep(c))
        elif c != 0x22:
            depth -= 1
    return None


class _Scanner:
    def __init__(self, data: bytes) -> None:
        self.d = data
        self.n = len(data)
        self.depth = 0

    def err(self, i: int, ctx: str) -> GoSyntaxError:
        if i >= self.n:
            return GoSyntaxError("unexpected EOF")
        return GoSyntaxError(f"invalid character {go_quote_char(self.d[i])} {ctx}")

    def ws(self, i: int) -> int:
        d, n = self.d, self.n
        while i < n and d[i] in _WS:
            i += 1
        return i

    def value(self, i: int) -> int:
        d, n = self.d, self.n
        i = self.ws(i)
        if i >= n:
            raise GoSyntaxError("unexpected EOF")
        c = d[i]
        if c in b"{[":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _too_deep(c)
            end = self.obj(i + 1) if c == 0x7B else self.arr(i + 1)
            self.depth -= 1
            return end
        if c == 0x22:
            return self.string(i + 1)
        if c == 0x2D or 0x30 <= c <= 0x39:
            return self.number(i)
        for lit in (b"true", b"false", b"null"):
            if c == lit[0]:
                for k in range(1, len(lit)):
                    if i + k >= n:
                        raise GoSyntaxError("unexpected EOF")
                    if d[i + k] != lit[k]:
                        raise self.err(
                            i + k,
                            f"in literal {lit.decode()} (expecting {go_quote_char(lit[k])})",
                        )
                return i + len(lit)
        raise self.err(i, "looking for beginning of value")

    def obj(self, i: int) -> int:
        d, n = self.d, self.n
        i = self.ws(i)
        if i < n and d[i] == 0x7D:
            return i + 1
        while True:
            i = self.ws(i)
            if i >= n or d[i] != 0x22:
                raise self.err(i, "looking for beginning of object key string")
            i = self.string(i + 1)
            i = self.ws(i)
            if i >= n or d[i] != 0x3A:
                raise self.err(i, "after object key")
            i = self.value(i + 1)
            i = self.ws(i)
            if i < n and d[i] == 0x2C:
                i += 1
                continue
            if i < n and d[i] == 0x7D:
                return i + 1
            raise self.err(i, "after object key:value pair")

    def arr(self, i: int) -> int:
        d, n = self.d, self.n
        i = self.ws(i)
        if i < n and d[i] == 0x5D:
            return i + 1
        while True:
            i = self.value(i)
            i = self.ws(i)
            if i < n and d[i] == 0x2C:
                i += 1
                continue
            if i < n and d[i] == 0x5D:
                return i + 1
            raise self.err(i, "after array element")

    def string(self, i: int) -> int:
        d, n = self.d, self.n
        while True:
            m = _STRING_BODY.match(d, i)
            i = m.end() if m else i
            if i >= n:
                raise GoSyntaxError("unexpected EOF")
            c = d[i]
            if c == 0x22:
                return i + 1
            if c == 0x5C:
                i += 1
                if i >= n:
                    raise GoSyntaxError("unexpected EOF")
                e = d[i]
                if e in b'"\\/bfnrt':
                    i += 1
                    continue
                if e == 0x75:  # u
                    for k in range(1, 5):
                        if i + k >= n:
                            raise GoSyntaxError("unexpected EOF")
                        if d[i + k] not in _HEX:
                            raise self.err(i + k, "in \\u hexadecimal character escape")
                    i += 5
                    continue
                raise self.err(i, "in string escape code")
            raise self.err(i, "in string literal")

    def number(self, i: int) -> int:
        d, n = self.d, self.n
        if d[i] == 0x2D:
            i += 1
            if i >= n:
                raise GoSyntaxError("unexpected EOF")
            if not 0x30 <= d[i] <= 0x39:
                raise self.err(i, "in numeric literal")
        if d[i] == 0x30:
            i += 1
        else:
            i = _DIGITS.match(d, i).end()  # type: ignore[union-attr]
        if i < n and d[i] == 0x2E:
            i += 1
            if i >= n:
                raise GoSyntaxError("unexpected EOF")
            if not 0x30 <= d[i] <= 0x39:
                raise self.err(i, "after decimal point in numeric literal")
            i = _DIGITS.match(d, i).end()  # type: ignore[union-attr]
        if i < n and d[i] in b"eE":
            i += 1
            if i < n and d[i] in b"+-":
                i += 1
            if i >= n:
                raise GoSyntaxError("unexpected EOF")
            if not 0x30 <= d[i] <= 0x39:
                raise self.err(i, "in exponent of numeric literal")
            i = _DIGITS.match(d, i).end()  # type: ignore[union-attr]
        return i


def go_scan(data: bytes) -> int:
    """Scan the first JSON value like json.Decoder; return the offset just past it.

    Raises GoSyntaxError with Go's text. Callers check for an all-whitespace body first
    (Go's io.EOF, which Ollama reports as `missing request body`).
    """
    return _Scanner(data).value(0)


def is_blank(data: bytes) -> bool:
    return not data.strip(_WS)


# ---------------------------------------------------------------------------------------------
# encoding/json type errors, rebuilt from msgspec's ValidationError

_MSGSPEC_ERR = re.compile(
    r"Expected `(?P<exp>[^`]*)`, got `(?P<got>[^`]*)`(?: - at `(?P<path>[^`]*)`)?"
)
# `.field`, `[index]`, or msgspec's `[...]` for a map key (value unknown, hence the marker)
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[(\.\.\.)\]")
_GOT = {"int": "number", "float": "number", "str": "string", "bool": "bool", "array": "array",
        "object": "object", "null": "null"}

# Go type names where the Python annotation does not say it (named Go types).
GO_FIELD_TYPES: dict[tuple[str, str], str] = {
    ("GenerateRequest", "images"): "[]api.ImageData",
    ("Message", "images"): "[]api.ImageData",
    ("ChatRequest", "tools"): "api.Tools",
    ("GenerateRequest", "keep_alive"): "api.Duration",
    ("ChatRequest", "keep_alive"): "api.Duration",
    ("EmbedRequest", "keep_alive"): "api.Duration",
    ("EmbeddingsRequest", "keep_alive"): "api.Duration",
    ("ToolCallFunction", "arguments"): "api.ToolCallFunctionArguments",
}


def _go_type(info: Any, owner: str | None = None, field: str | None = None) -> str:
    from msgspec import inspect as mi

    if owner is not None and field is not None and (owner, field) in GO_FIELD_TYPES:
        return GO_FIELD_TYPES[(owner, field)]
    if isinstance(info, mi.UnionType):
        rest = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return _go_type(rest[0]) if len(rest) == 1 else "interface {}"
    if isinstance(info, mi.StrType):
        return "string"
    if isinstance(info, mi.BoolType):
        return "bool"
    if isinstance(info, mi.IntType):
        return "int"
    if isinstance(info, mi.FloatType):
        return "float64"
    if isinstance(info, mi.ListType):
        return "[]" + _go_type(info.item_type)
    if isinstance(info, mi.DictType):
        return "map[string]" + _go_type(info.value_type)
    if isinstance(info, mi.StructType):
        return "api." + info.cls.__name__
    return "interface {}"


def _unwrap(info: Any) -> Any:
    from msgspec import inspect as mi

    if isinstance(info, mi.UnionType):
        rest = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return info


def go_type_error(cls: type, err: msgspec.ValidationError, body: bytes) -> str:
    """Turn msgspec's `Expected X, got Y - at $.a[0].b` into Go's UnmarshalTypeError text."""
    from msgspec import inspect as mi

    m = _MSGSPEC_ERR.search(str(err))
    if m is None:
        return str(err)
    got = _GOT.get(m.group("got"), m.group("got"))
    path = m.group("path")
    if not path:
        return f"json: cannot unmarshal {got} into Go value of type api.{cls.__name__}"
    info: Any = mi.type_info(cls)
    struct_name = cls.__name__
    fields: list[str] = []
    gotype = "interface {}"
    value: Any = msgspec.UNSET
    parts = [(a or c, b) for a, b, c in _PATH_PART.findall(path[1:])]
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        value = msgspec.UNSET
    for key, idx in parts:
        info = _unwrap(info)
        if idx:
            if isinstance(value, list):
                value = value[int(idx)] if int(idx) < len(value) else msgspec.UNSET
            if isinstance(info, mi.ListType):
                gotype = gotype[2:] if gotype.startswith("[]") else _go_type(info.item_type)
                info = info.item_type
            continue
        value = value.get(key, msgspec.UNSET) if isinstance(value, dict) else msgspec.UNSET
        if isinstance(info, mi.DictType):
            # Go does not add map keys to the field path; the type is the element's
            gotype = _go_type(info.value_type)
            info = info.value_type
            continue
        if isinstance(info, mi.StructType):
            struct_name = info.cls.__name__
            f = next((f for f in info.fields if f.encode_name == key), None)
            fields.append(key)
            if f is None:
                break
            gotype = _go_type(f.type, struct_name, key)
            info = f.type
        else:
            break
    if got == "number" and isinstance(value, float) and gotype == "int":
        got = f"number {value!r}"  # Go prints the literal; repr matches the usual ones
    return (f"json: cannot unmarshal {got} into Go struct field "
            f"{struct_name}.{'.'.join(fields)} of type {gotype}")


# ---------------------------------------------------------------------------------------------
# encoding/base64 (StdEncoding) errors

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def go_b64_error_offset(s: str) -> int | None:
    """Offset Go's base64.StdEncoding.Decode reports for `s`, or None if Go accepts it."""
    try:
        binascii.a2b_base64(s, strict_mode=True)
        return None
    except (binascii.Error, ValueError):
        pass
    src = s.encode("utf-8", "surrogatepass")
    n = len(src)
    si = 0
    while True:
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return None
                return si - j
            c = src[si]
            si += 1
            if c in _B64_ALPHABET:
                j += 1
                continue
            if c in (0x0A, 0x0D):
                continue
            if c != 0x3D:  # '='
                return si - 1
            if j in (0, 1):
                return si - 1
            if j == 2:
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    return n
                if src[si] != 0x3D:
                    return si - 1
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            if si < n:
                return si
            return None
        # a full quantum: continue with the next one
