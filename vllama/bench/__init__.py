"""`vllama bench`: load-test any Ollama-API or OpenAI-API endpoint, optionally against another.

Kept light: the CLI imports this module for every command, so aiohttp and the driver are
imported only when `bench` actually runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from vllama.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

EPILOG = """\
A is URL, B is --compare URL2. With --compare, each level runs A then B, then B then A, ...
for --rounds rounds, and a B/A row gives rates as ratios B/A and latencies as B minus A (ms).
Exit status: 0 when every request succeeded, 1 when any failed, 2 for bad arguments.
examples:
  vllama bench http://127.0.0.1:11434 --model tiny -c 1,8,32 -n 200
  vllama bench http://127.0.0.1:8000/v1 --api openai --model tiny \\
      --compare http://127.0.0.1:11434 --compare-api ollama -c 1,8,32 --rounds 2 --json
"""


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be integers >= 1")
    return levels


def add_subparsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="load-test an Ollama or OpenAI endpoint (optionally against another)",
        description="Send N requests at each concurrency level to an Ollama-API or OpenAI-API\n"
        "endpoint and report requests/s, output tokens/s, TTFT, inter-token latency,\n"
        "end-to-end latency (p50/p90/p99) and errors.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="target A: a base URL (http://host:port, .../v1) or a full "
                   "endpoint URL")
    p.add_argument("--model", required=True, help="model name to request")
    p.add_argument("--api", choices=("ollama", "openai"), default="ollama",
                   help="wire API of URL (default ollama)")
    p.add_argument("--endpoint", choices=("chat", "generate", "completions"), default="chat",
                   help="chat (both APIs), generate (Ollama) or completions (OpenAI)")
    p.add_argument("-n", "--requests", type=int, default=100,
                   help="requests per level, per target and round (default 100)")
    p.add_argument("-c", "--concurrency", type=_levels, default=[1, 8, 32],
                   help="comma-separated concurrency levels (default 1,8,32)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="stream the replies (default) or not")
    p.add_argument("--prompt-tokens", type=int, default=32,
                   help="prompt length in words, about one token each (default 32)")
    p.add_argument("--max-tokens", type=int, default=128,
                   help="output length: num_predict / max_tokens (default 128)")
    p.add_argument("--compare", metavar="URL2", help="target B, run interleaved with A")
    p.add_argument("--compare-api", choices=("ollama", "openai"),
                   help="wire API of URL2 (default: --api)")
    p.add_argument("--compare-endpoint", choices=("chat", "generate", "completions"),
                   help="endpoint of URL2 (default: --endpoint)")
    p.add_argument("--compare-model", help="model name at URL2 (default: --model)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds per level; with --compare use 2+ (default 1)")
    p.add_argument("--warmup", type=int, default=0,
                   help="unmeasured requests per target before the first level")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="total seconds allowed per request (default 300)")
    p.add_argument("--api-key", default="", help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_bench)


def _check(args: argparse.Namespace) -> str | None:
    if args.requests < 1:
        return "-n must be at least 1"
    if args.rounds < 1:
        return "--rounds must be at least 1"
    if args.warmup < 0 or args.max_tokens < 1 or args.prompt_tokens < 1:
        return "--warmup must be >= 0, --max-tokens and --prompt-tokens >= 1"
    if args.timeout <= 0:
        return "--timeout must be positive"
    for api, endpoint in ((args.api, args.endpoint),
                          (args.compare_api or args.api, args.compare_endpoint or args.endpoint)):
        if (api, endpoint) in (("ollama", "completions"), ("openai", "generate")):
            return f"--api {api} has no {endpoint} endpoint"
    return None


def cmd_bench(args: argparse.Namespace, extra: Sequence[str], out: TextIO) -> int:
    import asyncio
    import sys

    from vllama.bench import report
    from vllama.bench.driver import Plan, Target, progress_stream, run_plan
    from vllama.bench.protocol import make_prompt

    problem = _check(args)
    if problem is None and extra:
        problem = f"unexpected arguments after --: {' '.join(extra)}"
    if problem is not None:
        print(f"vllama bench: {problem}", file=sys.stderr)
        return EXIT_USAGE
    prompt = make_prompt(args.prompt_tokens)
    common: dict[str, Any] = {"prompt": prompt, "max_tokens": args.max_tokens,
                              "stream": args.stream, "api_key": args.api_key}
    targets = [Target.build("A", args.url, api=args.api, endpoint=args.endpoint,
                            model=args.model, **common)]
    if args.compare:
        targets.append(Target.build(
            "B", args.compare, api=args.compare_api or args.api,
            endpoint=args.compare_endpoint or args.endpoint,
            model=args.compare_model or args.model, **common))
    plan = Plan(targets=targets, levels=args.concurrency, requests=args.requests,
                rounds=args.rounds, warmup=args.warmup, timeout=args.timeout)
    results = asyncio.run(run_plan(plan, progress_to=progress_stream(args.progress)))
    if args.json:
        out.write(report.as_json(plan, results, model=args.model, stream=args.stream,
                                 max_tokens=args.max_tokens,
                                 prompt_tokens=args.prompt_tokens).decode() + "\n")
    else:
        out.write(report.text(plan, results, model=args.model, stream=args.stream))
    failed = any(s.errors for r in results for s in r.stats.values())
    return EXIT_FAILURE if failed else EXIT_OK
