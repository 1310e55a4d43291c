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
