"""How a `vllm serve` argv is read: one place for the spellings vLLM's parser accepts, so what
the supervisor passes and what the gateway advertises (tools, thinking, context) agree. Pure."""

from __future__ import annotations

from collections.abc import Iterable


def flag_name(arg: str) -> str | None:
    """The canonical flag an argument sets: `--a_b=1` -> `--a-b`, `--no-a-b` -> `--a-b`.

    vLLM's parser accepts underscores and boolean `--no-` forms, so both must count as the
    user having set the flag. Returns None for values (not starting with `--`).
    """
    if not arg.startswith("--") or arg == "--":
        return None
    name = arg.split("=", 1)[0].replace("_", "-")
    if name.startswith("--no-"):
        name = "--" + name[len("--no-") :]
    return name


def flag_value(args: Iterable[str], *flags: str) -> str | None:
    """The value of the last of `flags` in an argv (`--f v` or `--f=v`), "" for a bare flag,
    None when absent or switched off (`--no-f`)."""
    found: str | None = None
    items = list(args)
    for i, arg in enumerate(items):
        if flag_name(arg) not in flags:
            continue
        if arg.split("=", 1)[0].replace("_", "-").startswith("--no-"):
            found = None
        elif "=" in arg:
            found = arg.split("=", 1)[1]
        else:
            nxt = items[i + 1] if i + 1 < len(items) else ""
            found = "" if nxt.startswith("--") else nxt
    return found


def flags_set(args: Iterable[str]) -> set[str]:
    """Every canonical flag an argv sets (switched off or on)."""
    return {name for name in map(flag_name, args) if name is not None}


_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def int_value(args: Iterable[str], *flags: str) -> int | None:
    """An integer flag's value as vLLM reads it (`human_readable_int`: `8k` is 8,000, `8K`
    is 8,192, `25.6k` is 25,600); None when absent or not a number."""
    value = (flag_value(args, *flags) or "").strip()
    if not value:
        return None
    try:
        if value[-1] in _DECIMAL:
            return int(float(value[:-1]) * _DECIMAL[value[-1]])
        if value[-1] in _BINARY:
            return int(value[:-1]) * _BINARY[value[-1]]
        return int(value)
    except ValueError:
        return None
