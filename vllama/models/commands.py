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

from vllama.config import Config, ModelConfig, client_url
from vllama.errors import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    BadRequest,
    NotFound,
    VllamaError,
)
from vllama.gpu import GpuSnapshot, import_nvml, read_snapshot
from vllama.models import facts
from vllama.models.facts import ModelFiles
from vllama.models.names import InvalidName, display_name, repo_id_of
from vllama.models.store import LocalModel, ModelStore
from vllama.scheduler.capacity import Capacity, read_meminfo
from vllama.scheduler.fit import FitAt, FitReport, assess, fit_devices, largest, verdict_text
from vllama.scheduler.placement import gib
from vllama.supervisor.hardware import hardware_info


def read_gpus() -> GpuSnapshot:
    """NVML as it reads now (no GPU: a snapshot saying why)."""
    return read_snapshot(import_nvml())


@dataclass
class CliContext:
    """What the commands need: the store, the daemon's address, the config (`fit` reads its
    vllm_args, engine_overhead, memory_budget) and the machine (NVML and /proc/meminfo,
    injectable so tests can stand in GPUs the machine does not have)."""

    store_factory: Callable[[], ModelStore]
    base_url: str = "http://127.0.0.1:11434"
    api_key: str = ""
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    config: Config = field(default_factory=Config)
    gpu_snapshot: Callable[[], GpuSnapshot] = read_gpus
    meminfo: Callable[[], tuple[int, int]] = read_meminfo
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
                      api_key=cfg.api_key, out=out or sys.stdout, err=err or sys.stderr,
                      config=cfg)


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
             quiet: bool = False, fit: bool = False) -> int:
    models = [m for m in ctx.store.list_models() if m.name.lower().startswith(prefix.lower())]
    if fit and not quiet:
        return _list_fit(ctx, models, json_mode=json_mode)
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


# ----------------------------------------------------------------------------- fit


def _planner(ctx: CliContext) -> Capacity:
    """The scheduler's planner over this machine as it reads now."""
    snapshot = ctx.gpu_snapshot()
    _, available = ctx.meminfo()
    hw = hardware_info(snapshot, available)
    return Capacity(ctx.config, ctx.store, hw, gpu_snapshot=lambda: snapshot,
                    meminfo=ctx.meminfo)


def _fit_inputs(ctx: CliContext, name: str
                ) -> tuple[str, str, ModelFiles, ModelConfig]:
    """(shown name, where its facts came from, its files' facts, the model config its engine
    would run with) for a name: a model on this machine, else a repo's metadata on the hub."""
    store = ctx.store
    found = store.find(name, allow_paths=True)
    if found is not None and found.path is not None:
        where = "directory" if found.source.startswith("/") else "cache"
        return found.name, where, found.files, found.model
    if found is not None:
        repo = repo_id_of(found.model.source) if found.model.source else None
        if repo is None:
            where = found.model.upstream or "a remote upstream"
            raise BadRequest(f"{found.name} is served by {where}; vllama cannot tell what it "
                             "needs there")
        model = found.model
    else:
        resolved = store.resolve(name, allow_paths=True)
        repo = repo_id_of(resolved.source) if resolved is not None else None
        if repo is None:
            raise NotFound(f"model '{name}' not found: give a model `vllama list` shows, a "
                           "Hugging Face repo id (org/name) or a model directory")
        model = ModelConfig(name=repo, source=repo)
    from vllama.models.hub import hub_weights

    config, weights = hub_weights(repo, endpoint=store.endpoint, token=store.token)
    return display_name(repo), "hub", ModelFiles(config=config, weights=weights), model


def fit_report(ctx: CliContext, name: str, context: int | None = None) -> FitReport:
    """`vllama fit`'s answer for a model: its need at its default context (and at `context`)
    against the machine, by the scheduler's own arithmetic."""
    shown, where, files, model = _fit_inputs(ctx, name)
    planner = _planner(ctx)
    devices = planner.devices()
    need = planner.need_for(files, model)
    problems = list(files.weights.problems)
    if not files.config:
        problems.append("no config.json: the KV cache is not counted")
    at_context = None
    if context is not None:
        at_need = planner.need_for(files, model, ("--max-model-len", str(context)))
        at_context = assess(at_need, devices)
        native = facts.native_context_length(files.config)
        if native and context > native:
            problems.append(f"{context} tokens is more than the model's own context "
                            f"({native}); vLLM refuses that unless "
                            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1")
    return FitReport(
        model=shown, source=where,  # type: ignore[arg-type]
        parameters=files.parameter_count, parameter_source=files.parameters_from,
        quantization=facts.quantization_level(files.config, files.weights),
        max_context=need.max_context, devices=fit_devices(devices),
        default=assess(need, devices), largest_context=largest(need, devices),
        at_context=at_context, problems=tuple(problems))


def render_fit(report: FitReport) -> str:
    """The report for a terminal."""
    counted = {"headers": " (safetensors headers)", "estimate": " (estimated from "
               "config.json)", "none": ""}[report.parameter_source]
    params = f"{report.parameters:,}{counted}" if report.parameters else "unknown"
    if report.quantization:
        params += f", {report.quantization}"
    out = [f"model        {report.model} ({report.source})", f"parameters   {params}",
           f"context      {report.max_context} tokens (the model's own)", ""]
    devices = [("DEVICE", "FREE", "TOTAL")]
    devices += [(f"GPU {d.index} {d.name}".rstrip() if d.kind == "gpu" else "host memory",
                 gib(d.free_bytes), gib(d.total_bytes)) for d in report.devices]
    out.append(table(devices))
    rows = [("CONTEXT", "WEIGHTS", "KV CACHE", "OVERHEAD", "NEEDS", "VERDICT")]
    ats = [at for at in (report.default, report.at_context) if at is not None]
    for at in ats:
        needs = (f"{gib(at.per_device_bytes)} x {at.tensor_parallel}"
                 if at.tensor_parallel > 1 else gib(at.total_bytes))
        rows.append((str(at.context), gib(at.weights_bytes), gib(at.kv_cache_bytes),
                     gib(at.overhead_bytes), needs, verdict_text(at)))
    out.append(table(rows))
    out += [f"at {at.context} tokens: {at.why}" for at in ats if at.verdict == "does_not_fit"]
    out.append("largest context that fits now: " + (
        f"{report.largest_context} tokens" if report.largest_context
        else "none (not even the weights fit)"))
    out += [f"note: {p}" for p in report.problems]
    return "\n".join(out) + "\n"


def cmd_fit(ctx: CliContext, name: str, *, context: int | None = None,
            json_mode: bool = False, quiet: bool = False) -> int:
    """Exit 0 when the model fits (at `context` if given), 1 when it does not."""
    try:
        report = fit_report(ctx, name, context)
    except VllamaError as exc:
        if json_mode:
            _print_json(ctx, {"error": exc.message})
        return _error(ctx, exc)
    if json_mode:
        _print_json(ctx, report)
    elif not quiet:
        ctx.out.write(render_fit(report))
    at = report.at_context or report.default
    return EXIT_OK if at.verdict != "does_not_fit" else EXIT_FAILURE


def _list_fit(ctx: CliContext, models: Sequence[LocalModel], *, json_mode: bool) -> int:
    """`vllama list --fit`: each local model's need at its default context and where it
    would run (remote upstreams: unknown)."""
    planner = _planner(ctx)
    devices = planner.devices()
    fits: list[tuple[LocalModel, FitAt | None, int]] = []
    for m in models:
        if m.path is None:
            fits.append((m, None, 0))
            continue
        need = planner.need_for(m.files, m.model)
        fits.append((m, assess(need, devices), largest(need, devices)))
    if json_mode:
        entries = [{**msgspec.to_builtins(ctx.store.tag_entry(m)),
                    "fit": msgspec.to_builtins(at) if at is not None else None,
                    "largest_context": best} for m, at, best in fits]
        _print_json(ctx, {"models": entries})
        return EXIT_OK
    rows = [("NAME", "SIZE", "CONTEXT", "NEEDS", "FITS", "LARGEST CONTEXT")]
    for m, at, best in fits:
        if at is None:
            rows.append((m.name, human_bytes(m.size), "", "", "unknown (remote)", ""))
            continue
        rows.append((m.name, human_bytes(m.size), str(at.context), gib(at.total_bytes),
                     verdict_text(at), str(best) if best else "none"))
    ctx.out.write(table(rows))
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
        ctx.store.cp(source, destination, allow_paths=True)
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def add_subparsers(subparsers: Any) -> None:
    """Register pull, list (ls), fit, show, rm, cp, ps and aliases on an argparse subparsers
    object. Each parser sets `func(args, ctx: CliContext) -> int`."""
    p = subparsers.add_parser("pull", help="download a model from Hugging Face")
    p.add_argument("model")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_pull(c, a.model, json_mode=a.json, quiet=a.quiet))

    p = subparsers.add_parser("list", aliases=["ls"], help="list local models")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--fit", action="store_true",
                   help="with the memory each needs and whether it fits this machine")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_list(c, a.prefix, json_mode=a.json, quiet=a.quiet,
                                               fit=a.fit))

    p = subparsers.add_parser(
        "fit", help="the memory a model needs and whether it fits this machine's GPUs",
        description="Weights + KV cache + overhead at the model's default context (and at "
        "--context N), against each GPU's free memory (or host memory without one), by the "
        "scheduler's own arithmetic. MODEL: a local model, or a Hugging Face repo id (only "
        "its metadata is read). Exits 1 when it does not fit.")
    p.add_argument("model")
    p.add_argument("--context", type=_positive, metavar="N",
                   help="also at this context length (tokens)")
    _common(p)
    p.set_defaults(func=lambda a, c: cmd_fit(c, a.model, context=a.context, json_mode=a.json,
                                              quiet=a.quiet))

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
