"""`vllama pull|list|show|rm|cp|ps|stop|aliases`: thin command functions over ModelStore and
the running daemon.

Each command takes parsed values and a CliContext (streams, a lazily built store, the daemon's
URL) and returns an exit code from vllama.errors. `--json` prints machine-readable output,
`--quiet` prints nothing but errors (and, for list, only names). `add_subparsers` registers the
commands with argparse; each sets `func(args, ctx) -> int`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import msgspec

from vllama.config import client_url
from vllama.errors import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, VllamaError
from vllama.models.names import InvalidName
from vllama.models.store import ModelStore


@dataclass
class CliContext:
    store_factory: Callable[[], ModelStore]
    base_url: str = "http://127.0.0.1:11434"
    api_key: str = ""
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    _store: ModelStore | None = None

    @property
    def store(self) -> ModelStore:
        if self._store is None:
            self._store = self.store_factory()
        return self._store


def context_from_config(loaded: Any, out: IO[str] | None = None,
                        err: IO[str] | None = None) -> CliContext:
    """A CliContext from `vllama.config.load(...)`'s result (config + runtime)."""
    cfg = loaded.config

    def factory() -> ModelStore:
        return ModelStore.from_config(cfg, loaded.runtime)

    return CliContext(store_factory=factory, base_url=client_url(cfg.host, cfg.port),
                      api_key=cfg.api_key, out=out or sys.stdout, err=err or sys.stderr)


# ----------------------------------------------------------------------------- formatting


def human_bytes(n: float) -> str:
    """Ollama's format.HumanBytes (decimal units)."""
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            value = n / div
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{int(n)} B"


def human_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60}m"


def human_ago(ts: float, now: float | None = None) -> str:
    delta = (now if now is not None else time.time()) - ts
    if ts <= 0:
        return "Never"
    steps = ((60, "second", 1), (3600, "minute", 60), (86400, "hour", 3600),
             (7 * 86400, "day", 86400), (30 * 86400, "week", 7 * 86400),
             (365 * 86400, "month", 30 * 86400), (float("inf"), "year", 365 * 86400))
    if delta < 1:
        return "Less than a second ago"
    for limit, unit, div in steps:
        if delta < limit:
            count = int(delta // div)
            if count == 1:
                return f"About a{'n' if unit == 'hour' else ''} {unit} ago"
            return f"{count} {unit}s ago"
    return "Never"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, three spaces apart (Go tabwriter as the ollama CLI uses it)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows) + "\n"


def _error(ctx: CliContext, exc: VllamaError) -> int:
    print(f"Error: {exc.message}", file=ctx.err)
    return exc.exit_code


def _print_json(ctx: CliContext, obj: Any) -> None:
    ctx.out.write(msgspec.json.encode(obj).decode() + "\n")


# ----------------------------------------------------------------------------- pull


SPEED_WINDOW = 5.0


class _Bar:
    """One line redrawn in place on a terminal: total size, percent, speed and ETA over all
    files of the pull (files download in parallel, so one bar reads better than several)."""

    def __init__(self, out: IO[str], name: str) -> None:
        self.out = out
        self.name = name
        self.files: dict[str, tuple[int, int]] = {}
        self.samples: deque[tuple[float, int]] = deque()
        self.drawn = False

    def speed(self, now: float, done: int) -> float:
        """Bytes per second over the last few seconds (0 until there is half a second of data):
        a whole-pull average would be skewed by files that were already cached."""
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] > SPEED_WINDOW:
            self.samples.popleft()
        start, start_done = self.samples[0]
        return (done - start_done) / (now - start) if now - start >= 0.5 else 0.0

    def update(self, digest: str, total: int, completed: int) -> None:
        first = digest not in self.files
        self.files[digest] = (total, completed)
        total_all = sum(t for t, _ in self.files.values())
        done_all = sum(c for _, c in self.files.values())
        if first:
            self.samples.clear()  # a file that was already cached is no download speed
        speed = self.speed(time.monotonic(), done_all)
        pct = done_all * 100 // total_all if total_all else 100
        width = 25
        filled = width * pct // 100
        bar = "█" * filled + " " * (width - filled)
        if done_all >= total_all:
            rate, eta = "", ""
        elif speed > 0:
            left = (total_all - done_all) / speed
            rate, eta = f"  {human_bytes(speed)}/s", f"  {human_duration(left)}"
        else:
            rate, eta = "", "  ?"
        line = (f"pulling {self.name}: {pct:3d}% ▕{bar}▏ {human_bytes(done_all)}/"
                f"{human_bytes(total_all)}{rate}{eta}")
        self.out.write("\r" + line + "\x1b[K")
        self.out.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.drawn = False


def cmd_pull(ctx: CliContext, name: str, *, json_mode: bool = False, quiet: bool = False,
             tty: bool | None = None) -> int:
    is_tty = ctx.out.isatty() if tty is None else tty
    bar = _Bar(ctx.out, name) if is_tty and not json_mode and not quiet else None
    seen: set[str] = set()

    def show(progress: dict[str, Any]) -> None:
        if quiet:
            return
        if json_mode:
            _print_json(ctx, progress)
            return
        digest = progress.get("digest")
        if digest is not None:
            if bar is not None:
                bar.update(str(digest), int(progress.get("total") or 0),
                           int(progress.get("completed") or 0))
            elif digest not in seen:
                seen.add(str(digest))
                ctx.out.write(f"{progress['status']} {human_bytes(progress.get('total') or 0)}\n")
            return
        if bar is not None:
            bar.finish()
        ctx.out.write(f"{progress['status']}\n")
        ctx.out.flush()

    async def run() -> None:
        async for progress in ctx.store.pull(name):
            show(progress)

    try:
        asyncio.run(run())
    except InvalidName as exc:
        return _error(ctx, exc)
    except VllamaError as exc:
        if bar is not None:
            bar.finish()
        if json_mode:
            _print_json(ctx, {"error": exc.message})
        return _error(ctx, exc)
    return EXIT_OK


# ----------------------------------------------------------------------------- list / show


def cmd_list(ctx: CliContext, prefix: str = "", *, json_mode: bool = False,
             quiet: bool = False) -> int:
    models = [m for m in ctx.store.list_models() if m.name.lower().startswith(prefix.lower())]
    if json_mode:
        _print_json(ctx, {"models": [ctx.store.tag_entry(m) for m in models]})
        return EXIT_OK
    if quiet:
        for m in models:
            ctx.out.write(m.name + "\n")
        return EXIT_OK
    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    rows += [(m.name, m.digest[:12], human_bytes(m.size), human_ago(m.modified)) for m in models]
    ctx.out.write(table(rows))
    return EXIT_OK


def _show_text(body: dict[str, Any]) -> str:
    info = body.get("model_info") or {}
    arch = str(info.get("general.architecture", ""))
    details = body.get("details") or {}
    model_rows = [("architecture", arch),
                  ("parameters", details.get("parameter_size") or
                   str(info.get("general.parameter_count", ""))),
                  ("context length", str(info.get(f"{arch}.context_length", ""))),
                  ("embedding length", str(info.get(f"{arch}.embedding_length", ""))),
                  ("quantization", details.get("quantization_level", ""))]
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        ("Model", [(k, v) for k, v in model_rows if v]),
        ("Capabilities", [(c, "") for c in body.get("capabilities") or []]),
    ]
    params = [line.split(None, 1) for line in (body.get("parameters") or "").splitlines()]
    sections.append(("Parameters", [(p[0], p[1] if len(p) > 1 else "") for p in params]))
    if body.get("system"):
        sections.append(("System", [(line, "") for line in body["system"].splitlines()[:5]]))
    if body.get("license"):
        sections.append(("License", [(line, "") for line in body["license"].splitlines()[:2]]))
    out = []
    for title, rows in sections:
        if not rows:
            continue
        out.append(f"  {title}")
        width = max(len(k) for k, _ in rows)
        out += [f"    {k.ljust(width)}    {v}".rstrip() for k, v in rows]
        out.append("")
    return "\n".join(out) + "\n"


def cmd_show(ctx: CliContext, name: str, *, json_mode: bool = False, quiet: bool = False,
             field_name: str = "") -> int:
    try:
        body: dict[str, Any] = msgspec.to_builtins(ctx.store.show(name, allow_paths=True))
    except VllamaError as exc:
        return _error(ctx, exc)
    if json_mode:
        _print_json(ctx, body)
    elif field_name:
        ctx.out.write(str(body.get(field_name, "")).rstrip("\n") + "\n")
    elif not quiet:
        ctx.out.write(_show_text(body))
    return EXIT_OK


# ----------------------------------------------------------------------------- rm / cp


def cmd_rm(ctx: CliContext, names: Sequence[str], *, json_mode: bool = False,
           quiet: bool = False) -> int:
    code = EXIT_OK
    for name in names:
        try:
            freed = ctx.store.rm(name)
        except VllamaError as exc:
            code = _error(ctx, exc)
            continue
        if json_mode:
            _print_json(ctx, {"deleted": name, "freed": freed})
        elif not quiet:
            extra = f" (freed {human_bytes(freed)})" if freed else ""
            ctx.out.write(f"deleted '{name}'{extra}\n")
    return code


def cmd_cp(ctx: CliContext, source: str, destination: str, *, json_mode: bool = False,
           quiet: bool = False) -> int:
    try:
        ctx.store.cp(source, destination)
    except VllamaError as exc:
        return _error(ctx, exc)
    if json_mode:
        _print_json(ctx, {"copied": source, "to": destination})
    elif not quiet:
        ctx.out.write(f"copied '{source}' to '{destination}'\n")
    return EXIT_OK


def cmd_aliases(ctx: CliContext, *, json_mode: bool = False, quiet: bool = False) -> int:
    rows = ctx.store.aliases_table()
    if json_mode:
        _print_json(ctx, {"aliases": [{"name": n, "source": s, "origin": o}
                                      for n, s, o in rows]})
    elif quiet:
        ctx.out.write("".join(f"{n}\n" for n, _, _ in rows))
    else:
        ctx.out.write(table([("NAME", "SOURCE", "ORIGIN"), *rows]))
    return EXIT_OK


# ----------------------------------------------------------------------------- ps


def _call_daemon(ctx: CliContext, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    """GET (or POST `body` to) the running daemon; the decoded JSON reply."""
    data = msgspec.json.encode(body) if body is not None else None
    request = urllib.request.Request(ctx.base_url.rstrip("/") + path, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if ctx.api_key:
        request.add_header("Authorization", f"Bearer {ctx.api_key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _daemon_error(ctx: CliContext, exc: Exception) -> int:
    """Print why a call to the daemon failed, with what to do; the exit code."""
    if isinstance(exc, urllib.error.HTTPError):
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            message = str(exc)
        print(f"Error: {message}", file=ctx.err)
        return EXIT_NOT_FOUND if exc.code == 404 else EXIT_FAILURE
    print(f"Error: could not reach vllama at {ctx.base_url} ({exc}); is the daemon running? "
          "(systemctl status vllama)", file=ctx.err)
    return EXIT_UNAVAILABLE


def _until(expires_at: str, now: datetime | None = None) -> str:
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return ""
    current = now or datetime.now(when.tzinfo)
    seconds = (when - current).total_seconds()
    if seconds <= 0:
        return "Stopping..."
    if seconds > 20 * 365 * 86400:
        return "Forever"
    return human_duration(seconds) + " from now"


def _processor(size: int, vram: int) -> str:
    if size == 0 or vram > size:
        return "Unknown"
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    cpu = (size - vram) * 100 // size
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def cmd_ps(ctx: CliContext, *, json_mode: bool = False, quiet: bool = False) -> int:
    try:
        body = _call_daemon(ctx, "/api/ps")
    except (OSError, ValueError) as exc:
        return _daemon_error(ctx, exc)
    models = body.get("models") or []
    if json_mode:
        _print_json(ctx, {"models": models})
    elif quiet:
        ctx.out.write("".join(f"{m.get('name', '')}\n" for m in models))
    else:
        rows = [("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "STATE", "UNTIL")]
        for m in models:
            size, vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
            state = str(m.get("state") or "loaded")
            rows.append((str(m.get("name", "")), str(m.get("digest", ""))[:12],
                         human_bytes(size), _processor(size, vram),
                         str(m.get("context_length") or ""), state,
                         _until(str(m.get("expires_at", ""))) if state == "loaded" else ""))
        ctx.out.write(table(rows))
        _upstreams_table(ctx, models)
    return EXIT_OK


def _upstreams_table(ctx: CliContext, models: list[dict[str, Any]]) -> None:
    """The upstreams of models served by several (remote servers, or this machine's engine
    and remote ones), each with its state as the daemon sees it."""
    rows = [("NAME", "UPSTREAM", "STATE", "IN FLIGHT", "REASON")]
    for m in models:
        for u in m.get("upstreams") or ():
            rows.append((str(m.get("name", "")), str(u.get("upstream", "")),
                         str(u.get("state", "")), str(u.get("in_flight", 0)),
                         str(u.get("reason", ""))))
    if len(rows) > 1:
        ctx.out.write("\n" + table(rows))


def cmd_stop(ctx: CliContext, name: str, *, json_mode: bool = False, quiet: bool = False
             ) -> int:
    """Unload a model now, like `ollama stop`: a generate with keep_alive 0 and no prompt
    (the model unloads once its in-flight requests end)."""
    try:
        _call_daemon(ctx, "/api/generate", {"model": name, "keep_alive": 0})
    except (OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
            print(f'Error: couldn\'t find model "{name}" to stop', file=ctx.err)
            return EXIT_NOT_FOUND
        return _daemon_error(ctx, exc)
    if json_mode:
        _print_json(ctx, {"stopped": name})
    elif not quiet:
        ctx.out.write(f"stopped '{name}'\n")
    return EXIT_OK


# ----------------------------------------------------------------------------- argparse


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def add_subparsers(subparsers: Any) -> None:
    """Register pull, list (ls), show, rm, cp, ps and aliases on an argparse subparsers
    object. Each parser sets `func(args, ctx: CliContext) -> int`."""
    p = subparsers.add_parser("pull", help="download a model from Hugging Face")
    p.add_argument("model")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_pull(c, a.model, json_mode=a.json, quiet=a.quiet))

    p = subparsers.add_parser("list", aliases=["ls"], help="list local models")
    p.add_argument("prefix", nargs="?", default="")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_list(c, a.prefix, json_mode=a.json, quiet=a.quiet))

    p = subparsers.add_parser("show", help="show a local model's information")
    p.add_argument("model")
    group = p.add_mutually_exclusive_group()
    for flag in ("license", "modelfile", "parameters", "system", "template"):
        group.add_argument(f"--{flag}", dest="field_name", action="store_const", const=flag,
                           default="", help=f"print only the {flag}")
    p.add_argument("-v", "--verbose", action="store_true", help="accepted for ollama parity")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_show(c, a.model, json_mode=a.json, quiet=a.quiet,
                                               field_name=a.field_name))

    p = subparsers.add_parser("rm", help="remove models (or vllama aliases)")
    p.add_argument("models", nargs="+")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_rm(c, a.models, json_mode=a.json, quiet=a.quiet))

    p = subparsers.add_parser("cp", help="make an alias of a model")
    p.add_argument("source")
    p.add_argument("destination")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_cp(c, a.source, a.destination, json_mode=a.json,
                                             quiet=a.quiet))

    p = subparsers.add_parser("ps", help="models the running daemon serves")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_ps(c, json_mode=a.json, quiet=a.quiet))

    p = subparsers.add_parser("stop", help="unload a running model (like ollama stop)")
    p.add_argument("model")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_stop(c, a.model, json_mode=a.json, quiet=a.quiet))

    p = subparsers.add_parser("aliases", help="print the model name table")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_aliases(c, json_mode=a.json, quiet=a.quiet))
