"""10,000 generated malformed requests across every route, on raw sockets against the gateway
as the daemon serves it (with the fake vLLM behind it): bad JSON, deep nesting, wrong types,
huge fields, bad UTF-8, wrong methods, bad headers and request lines, cross-site origins and
foreign hosts, half-sent heads and bodies. Every answer is an answer: no 5xx, no error
without Ollama's (or OpenAI's) JSON error body, no connection reset or dropped request.

The generator is seeded, so a failure names a case that reproduces."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from tests.fake_vllm import FakeScript, make_app
from tests.live_gateway import Live, exchange, live_gateway
from vllama.config import Config, ModelConfig

CASES = 10_000
SEED = 20_261_205
CONCURRENCY = 32
MAX_BODY = 128 * 1024

FIELDS = ("model", "name", "prompt", "messages", "stream", "options", "format", "keep_alive",
          "images", "think", "tools", "input", "source", "destination", "from", "files",
          "suffix", "system", "template", "context", "raw", "truncate", "top_logprobs",
          "logprobs", "max_tokens", "temperature", "parameters", "quantize", "insecure")
WRONG: tuple[Any, ...] = (1, -1, 0, 1.5, 2**70, True, False, None, "", "x", "yes", [],
                          {}, [1, "a", None], {"a": 1}, "\u0000", [[[]]], {"role": 7},
                          [{"role": 1, "content": []}], "-5m", "nonsense duration")
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\x80",
            b"\xf8\x88\x80\x80\x80")


@dataclass
class Case:
    kind: str
    method: str
    path: str
    raw: bytes | list[bytes]


def request(method: str, path: str, body: bytes = b"", *, headers: tuple[bytes, ...] = (),
            host: bytes = b"localhost", length: bool = True, close: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host, *headers]
    if close:
        lines.append(b"Connection: close")
    if length and (body or method in ("POST", "PUT", "PATCH", "DELETE")):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def valid_body(rng: random.Random) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": rng.choice(["fake", "nope", "a/b", "x:latest"])}
    for name in rng.sample(FIELDS, rng.randint(0, 3)):
        doc[name] = rng.choice(["hi", 1, True, ["a"], {"k": "v"}])
    return doc


def bad_json(rng: random.Random) -> bytes:
    text = msgspec.json.encode(valid_body(rng))
    choice = rng.randrange(8)
    if choice == 0:
        return text[:rng.randrange(len(text))]
    if choice == 1:
        i = rng.randrange(len(text))
        return text[:i] + bytes([rng.randrange(256)]) + text[i:]
    if choice == 2:
        return text.replace(b'"', b"'")
    if choice == 3:
        return text + rng.choice([b"}", b",", b"garbage", b"\x00"])
    if choice == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    if choice == 5:
        return rng.choice([b"", b"   \n", b"null", b"[]", b'"x"', b"1", b"true", b"{}"])
    if choice == 6:
        return rng.choice([b'{"model": NaN}', b'{"model": 1e999}', b"{/* c */}",
                           b'{"model":"a",}', b'{"a":01}', b'{"a":-}', b'{"\\x": 1}'])
    return b'{"model":"fake","prompt":"' + b"\\u" + rng.choice([b"12", b"zzzz", b"d800"]) + \
        b'"}'


def deep_json(rng: random.Random) -> bytes:
    depth = rng.randint(257, 6000)
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    inner = opener * depth + (b"1" + closer * depth if rng.random() < 0.7 else b"")
    field = rng.choice(FIELDS)
    return inner if rng.random() < 0.3 else b'{"model":"fake","' + field.encode() + b'":' + \
        inner + b"}"


def wrong_types(rng: random.Random) -> bytes:
    doc = valid_body(rng)
    for name in rng.sample(FIELDS, rng.randint(1, 4)):
        doc[name] = rng.choice(WRONG)
    return msgspec.json.encode(doc)


def huge_field(rng: random.Random) -> bytes:
    size = rng.choice([10_000, 60_000, 120_000, 300_000])
    doc = valid_body(rng)
    name = rng.choice(FIELDS)
    doc[name] = "x" * size if rng.random() < 0.6 else list(range(size // 6))
    return msgspec.json.encode(doc)


def bad_utf8(rng: random.Random) -> bytes:
    text = msgspec.json.encode({"model": "fake", "prompt": "hello", "system": "s"})
    i = rng.randrange(len(text))
    return text[:i] + rng.choice(BAD_UTF8) + text[i:]


BODIES: dict[str, Callable[[random.Random], bytes]] = {
    "bad-json": bad_json, "deep": deep_json, "wrong-types": wrong_types,
    "huge": huge_field, "bad-utf8": bad_utf8,
}


def bad_headers(rng: random.Random, method: str, path: str) -> bytes:
    body = msgspec.json.encode(valid_body(rng)) if method != "GET" else b""
    bad = rng.choice([
        (b"no colon here",), (b"Bad Name: x",), (b"X\x00Y: 1",), (b": empty name",),
        (b"Authorization: Bearer \xff\xfe",), (b"Origin: http://\xffevil",),
        (b"X-Request-Id: \xc3\x28\x00",), (b"Content-Type: \xff/\xfe",),
        (b"User-Agent: " + bytes(range(1, 32)),), (b"Expect: tea",),
        (b"Content-Encoding: gzip",), (b"Content-Encoding: br, zstd, whatever",),
        (b"Transfer-Encoding: gzip",), (b"X-Long: " + b"a" * 70_000,),
        tuple(f"X-H{i}: {i}".encode() for i in range(200)), (b"X-Fold: a", b" folded"),
        (b"Origin: https://evil.example",), (b"Origin: null",),
        (b"Accept-Encoding: \xff",), (b"Cookie: " + b"c=1; " * 2000,),
    ])
    return request(method, path, body, headers=bad)


def bad_length(rng: random.Random, method: str, path: str) -> bytes:
    body = msgspec.json.encode(valid_body(rng))
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: localhost", b"Connection: close"]
    head += rng.choice([
        [b"Content-Length: abc"], [b"Content-Length: -1"], [b"Content-Length: 1e3"],
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Content-Length: 99999999999999999999999"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
    ])
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(rng: random.Random, method: str, path: str) -> bytes:
    body = msgspec.json.encode(valid_body(rng))
    chunks = rng.choice([
        hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n",  # valid
        b"zz\r\n" + body + b"\r\n0\r\n\r\n",
        hex(len(body) + 5)[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n",
        b"3\r\n{}x\r\n0\r\n\r\n",
        b"fffffffffffffffffff\r\n",
    ])
    return request(method, path, headers=(b"Transfer-Encoding: chunked",), length=False) + \
        chunks


def bad_request_line(rng: random.Random, method: str, path: str) -> bytes:
    return rng.choice([
        f"{method} {path} HTTP/9.9\r\nHost: localhost\r\n\r\n".encode(),
        f"{method} {path} HTTP/1.1x\r\nHost: localhost\r\n\r\n".encode(),
        f"{method} {path}\r\nHost: localhost\r\n\r\n".encode(),
        f"{method}  {path}  HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
        request(method, path.lstrip("/")),
        request(method, "http://evil.example" + path),
        request(method, path + "%00"), request(method, path + "%0A%0DX: y"),
        request(method, path + "%ZZ"), request(method, path + "/../../etc/passwd"),
        request(method, "/" + "a" * 9000),
        request(method, path.encode().decode() + "\x01"),
        request(method, "*"), request(method, "//api//tags"),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS hello
        b"\r\n\r\n", b"GET\r\n\r\n",
        request(method, path, host=b"evil.example:11434"),
        request(method, path, host=b"\xff\xfe"),
    ])


def wrong_method(rng: random.Random, routes: list[tuple[str, str]]) -> tuple[str, bytes]:
    method, path = rng.choice(routes)
    other = rng.choice([m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                    "TRACE", "FOO", "get") if m != method])
    return other, request(other, path.replace("{model}", "fake"),
                          b"{}" if other in ("POST", "PUT", "PATCH") else b"")


def generate(routes: list[tuple[str, str]], rng: random.Random) -> list[Case]:
    body_routes = [(m, p) for m, p in routes if m in ("POST", "DELETE")]
    cases: list[Case] = []
    for _ in range(CASES):
        roll = rng.random()
        method, path = rng.choice(body_routes)
        if roll < 0.55:
            kind = rng.choice(list(BODIES))
            cases.append(Case(kind, method, path, request(method, path, BODIES[kind](rng))))
        elif roll < 0.65:
            other, raw = wrong_method(rng, routes)
            cases.append(Case("wrong-method", other, path, raw))
        elif roll < 0.80:
            cases.append(Case("bad-headers", method, path, bad_headers(rng, method, path)))
        elif roll < 0.85:
            cases.append(Case("bad-length", method, path, bad_length(rng, method, path)))
        elif roll < 0.90:
            cases.append(Case("chunked", method, path, chunked(rng, method, path)))
        elif roll < 0.97:
            cases.append(Case("request-line", method, path,
                              bad_request_line(rng, method, path)))
        elif roll < 0.985:
            unknown = rng.choice(["/api/nope", "/v1/nope", "/api", "/api/tags/x", "/v2/x"])
            cases.append(Case("unknown-path", method, unknown, request(method, unknown, b"{}")))
        elif roll < 0.993:  # a body that never comes in full: the body clock answers
            raw = request(method, path, b'{"model":"fake"', close=False)
            raw = raw.replace(b"Content-Length: 15", b"Content-Length: 500")
            cases.append(Case("short-body", method, path, raw))
        else:  # a head that never ends: the head clock answers
            cases.append(Case("short-head", method, path,
                              f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nX-".encode()))
    return cases


def shown(raw: bytes | list[bytes]) -> bytes:
    return (raw if isinstance(raw, bytes) else b"".join(raw))[:160]


@dataclass
class Outcome:
    case: Case
    status: int = 0
    problem: str = ""


def judge(case: Case, status: int, content_type: str, body: bytes) -> str:
    if status >= 500:
        return f"status {status}"
    if status < 400 or case.method == "HEAD":
        return ""
    if not content_type.startswith("application/json"):
        return f"{status} with content type {content_type!r}"
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return f"{status} with a body that is not JSON: {body[:80]!r}"
    err = doc.get("error") if isinstance(doc, dict) else None
    if not (isinstance(err, str) and err) and not (isinstance(err, dict) and err.get("message")):
        return f"{status} without an error text: {body[:80]!r}"
    return ""


async def run_case(port: int, case: Case, gate: asyncio.Semaphore) -> Outcome:
    async with gate:
        try:
            reply = await exchange(port, case.raw, head_only=case.method == "HEAD")
        except ConnectionResetError:
            return Outcome(case, problem="connection reset")
        except (asyncio.IncompleteReadError, BrokenPipeError) as exc:
            return Outcome(case, problem=f"no answer ({type(exc).__name__})")
    return Outcome(case, reply.status,
                   judge(case, reply.status, reply.headers.get("content-type", ""), reply.body))


@pytest.fixture
async def gateway(aiohttp_server: Any) -> Any:
    fake = await aiohttp_server(make_app(FakeScript(served_names=["fake"])))
    cfg = Config(models=(ModelConfig(name="fake", upstream=str(fake.make_url("/v1"))),),
                 max_body_bytes=MAX_BODY, client_header_timeout=2.0, client_body_timeout=1.0)
    async with live_gateway(cfg) as live:
        yield live


async def test_ten_thousand_malformed_requests(gateway: Live) -> None:
    routes = sorted({(r.method, r.resource.canonical) for r in gateway.app.router.routes()
                     if r.resource is not None and r.method != "HEAD"})
    cases = generate(routes, random.Random(SEED))
    gate = asyncio.Semaphore(CONCURRENCY)
    outcomes = await asyncio.gather(*(run_case(gateway.port, c, gate) for c in cases))
    bad = [o for o in outcomes if o.problem]
    statuses = Counter(o.status for o in outcomes)
    kinds = Counter(o.case.kind for o in outcomes)
    report = "\n".join(f"{o.case.kind} {o.case.method} {o.case.path}: {o.problem}; "
                       f"request {shown(o.case.raw)!r}" for o in bad[:15])
    problems = Counter(o.problem.split(":")[0] for o in bad)
    assert not bad, f"{len(bad)} of {len(cases)} bad ({problems})\n{report}"
    # The run covered what it claims (so a generator bug cannot make it pass vacuously).
    assert len(outcomes) == CASES
    assert all(kinds[k] > 100 for k in (*BODIES, "wrong-method", "bad-headers")), kinds
    assert {400, 403, 404, 405, 408, 413} <= set(statuses), statuses
