"""The `vllama` command. Thin: parse arguments, load config, call the real code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

import msgspec

from vllama import __version__, config
from vllama.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, VllamaError


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway and its engines (what systemd runs)",
                       description="Serve models over the Ollama API. Extra arguments after "
                       "`--` go to `vllm serve`.")
    p.add_argument("--model", help="serve this model (HF repo id, local dir, or upstream URL) "
                   "instead of the configured ones")
    p.add_argument("--name", help="the name clients use for --model (default: its id)")
    p.add_argument("--host", help="bind address, Ollama syntax (HOST, HOST:PORT)")
    p.add_argument("--port", type=int, help="bind port (default 11434)")
    p.add_argument("--config", help="config file (default: $VLLAMA_CONFIG, the user config "
                   "dir, /etc/vllama/config.toml)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("auto", "text", "json", "journal"))
    p.add_argument("--vllm-command", help="engine command (default: vllm on PATH)")
    p.add_argument("--workers", type=int, help="gateway processes on the port (default: by "
                   "CPU count; 1: one process)")
    p.set_defaults(func=cmd_serve)
    w = sub.add_parser("worker")  # started by `vllama serve` itself: not listed in --help
    w.add_argument("--control", required=True)
    w.add_argument("--worker", type=int, required=True)
    w.add_argument("--log-level", default="info")
    w.add_argument("--log-format", default="auto")
    w.set_defaults(func=cmd_worker)


def _config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="print the effective config and where each value came "
                       "from")
    p.add_argument("--config", help="config file to read")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--example", action="store_true", help="print a commented example file")
    p.add_argument("--markdown", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllama", description="Ollama's API and ease with vLLM's throughput.")
    parser.add_argument("--version", action="version", version=f"vllama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    _config_parser(sub)
    v = sub.add_parser("version", help="print the version")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_version)
    for module_name, extend in _extensions():
        before = set(sub.choices)
        extend(sub)
        if module_name == "vllama.models.commands":
            added = {id(p): p for n, p in sub.choices.items() if n not in before}
            for model_parser in added.values():  # aliases (ls) share one parser
                _adapt_model_command(model_parser)
    return parser


def _adapt_model_command(parser: argparse.ArgumentParser) -> None:
    """The model commands take a context (store, daemon address) built from the config."""
    if not any("--config" in a.option_strings for a in parser._actions):
        parser.add_argument("--config", help="config file (for models_dir and the daemon's "
                            "address)")
    inner = parser.get_default("func")

    def run(args: argparse.Namespace, extra: Sequence[str], out: TextIO) -> int:
        from vllama.models.commands import context_from_config

        loaded = config.load(config.CliOverrides(config=args.config))
        code: int = inner(args, context_from_config(loaded, out))
        return code

    parser.set_defaults(func=run)


def _extensions() -> list[tuple[str, Callable[[Any], None]]]:
    """Subcommands owned by other packages (models, run, bench), registered if present."""
    found: list[tuple[str, Callable[[Any], None]]] = []
    for module_name in ("vllama.models.commands", "vllama.chat", "vllama.bench"):
        try:
            module = __import__(module_name, fromlist=["add_subparsers"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        found.append((module_name, module.add_subparsers))
    return found


def _cli_overrides(args: argparse.Namespace, extra: Sequence[str]) -> config.CliOverrides:
    return config.CliOverrides(
        config=getattr(args, "config", None), host=getattr(args, "host", None),
        port=getattr(args, "port", None), model=getattr(args, "model", None),
        name=getattr(args, "name", None), extra_vllm_args=tuple(extra),
        log_level=getattr(args, "log_level", None), log_format=getattr(args, "log_format", None),
        vllm_command=getattr(args, "vllm_command", None), workers=getattr(args, "workers", None))


def cmd_serve(args: argparse.Namespace, extra: Sequence[str], out: TextIO) -> int:
    from vllama import daemon, log

    cli = _cli_overrides(args, extra)
    loaded = config.load(cli)
    log.setup(loaded.config.log_level, loaded.config.log_format, loaded.runtime.journal_stream)
    try:
        return run_loop(daemon.serve(loaded, cli=cli))
    except KeyboardInterrupt:
        return EXIT_OK


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon's (or a worker's) loop on uvloop when it is installed (less CPU per
    request, measured in docs/performance.md), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def cmd_worker(args: argparse.Namespace, extra: Sequence[str], out: TextIO) -> int:
    """A gateway worker of `vllama serve` (vllama.workers): it gets its config from the main
    process over the control socket, never from files or the environment."""
    from vllama import log
    from vllama.workers.worker import run

    log.setup(args.log_level, args.log_format, config.runtime().journal_stream,
              fields={"worker": args.worker})
    try:
        return run_loop(run(args.control, args.worker))
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_config(args: argparse.Namespace, extra: Sequence[str], out: TextIO) -> int:
    if args.example:
        out.write(config.example_toml())
        return EXIT_OK
    if args.markdown:
        out.write(config.markdown_table())
        return EXIT_OK
    loaded = config.load(_cli_overrides(args, extra))
    if args.json:
        out.write(msgspec.json.format(msgspec.json.encode(config.as_json(loaded))).decode()
                  + "\n")
    else:
        out.write(config.as_text(loaded))
    return EXIT_OK


def cmd_version(args: argparse.Namespace, extra: Sequence[str], out: TextIO) -> int:
    if args.json:
        out.write(msgspec.json.encode({"version": __version__}).decode() + "\n")
    else:
        out.write(f"vllama {__version__}\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    extra: list[str] = []
    if "--" in argv:  # everything after `--` is for `vllm serve`
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(out)
        return EXIT_OK
    try:
        code: int = args.func(args, extra, out)
        return code
    except ConfigError as exc:
        print(f"vllama: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except VllamaError as exc:
        print(f"vllama: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
