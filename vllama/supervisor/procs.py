"""Process-group plumbing: spawn helpers, group scans and group kills.

vLLM is several processes (API server, EngineCore, workers, resource_tracker). A SIGKILL of the
API server alone leaves the rest alive holding memory (measured), so each child starts its own
session and every stop or exit ends with the whole group gone, checked in /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now: bind port 0 and let the kernel choose."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn that asks the kernel to send `sig` to the child when we die.

    libc is loaded here, before the fork, so the child only makes the syscall. The signal is
    tied to the *thread* that forked, which is the event loop thread for asyncio subprocesses.
    If we died between fork and prctl the signal would never come, so the child checks that
    its parent is still the one that forked it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


async def wait_exited(pid: int, poll: float = 0.2) -> None:
    """Return once process `pid` (our child) has exited.

    Not `Process.wait()`: that also waits for the stdout/stderr pipes to close, and a
    grandchild that outlives the leader (vLLM's EngineCore) holds them open; we must notice
    the leader's exit to kill that grandchild. A pidfd becomes readable at exit (Linux 5.3+);
    without pidfd support, poll.
    """
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already exited and reaped
    except OSError:  # pidfd unsupported (old kernel, seccomp)
        while _alive(pid):  # noqa: ASYNC110 - no event exists for this without pidfd
            await asyncio.sleep(poll)
        return
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        loop.add_reader(fd, on_exit)
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    parsed = _stat_fields(stat)
    return parsed is not None and parsed[0] not in ("Z", "X")


def _stat_fields(stat: str) -> tuple[str, int] | None:
    # comm (field 2) may contain spaces and parentheses: split after the last ")".
    _, sep, rest = stat.rpartition(")")
    if not sep:
        return None
    fields = rest.split()
    if len(fields) < 3:
        return None
    return fields[0], int(fields[2])  # state, pgrp


def group_members(pgid: int, proc_root: str = "/proc") -> list[int]:
    """Live (non-zombie) pids whose process group is `pgid`.

    Zombies hold no memory and are reaped by whoever their parent is, so they do not count.
    """
    members: list[int] = []
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(proc_root, entry, "stat").read_text()
        except OSError:  # exited while we looked
            continue
        parsed = _stat_fields(stat)
        if parsed is not None and parsed[1] == pgid and parsed[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


async def wait_group_gone(pgid: int, within: float, poll: float = 0.05) -> list[int]:
    """Wait up to `within` s until no live member remains; the members still alive then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        members = group_members(pgid)
        if not members or loop.time() >= deadline:
            return members
        await asyncio.sleep(poll)


async def kill_group(pgid: int, grace: float, kill_wait: float = 5.0) -> list[int]:
    """SIGTERM the group, wait up to `grace`, SIGKILL what is left, wait again.

    Returns the pids that survived even SIGKILL (uninterruptible sleep on a dead GPU, say);
    normally empty.
    """
    if not group_members(pgid):
        return []
    signal_group(pgid, signal.SIGTERM)
    left = await wait_group_gone(pgid, grace)
    if left:
        signal_group(pgid, signal.SIGKILL)
        left = await wait_group_gone(pgid, kill_wait)
    return left


async def kill_group_hard(pgid: int, kill_wait: float = 5.0) -> list[int]:
    """SIGKILL the group at once and wait until it is gone: for a group whose leader crashed
    or that is wedged, there is nothing to drain (and a stopped process ignores SIGTERM)."""
    if not group_members(pgid):
        return []
    signal_group(pgid, signal.SIGKILL)
    return await wait_group_gone(pgid, kill_wait)


def kill_group_now(pgid: int) -> None:
    """Last resort when there is no time to wait (cancelled while shutting down)."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


# ---- who listens on a port --------------------------------------------------------------

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
# Local addresses a connection to 127.0.0.1:port can reach: the address itself, the IPv4
# wildcard, and IPv6 sockets that are dual-stack (the wildcard) or IPv4-mapped.
_REACHES_LOOPBACK = frozenset({
    ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("0.0.0.0"),
    ipaddress.ip_address("::"), ipaddress.ip_address("::ffff:127.0.0.1"),
})

PortOwner = Literal["none", "group", "foreign"]


def _proc_net_address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp(6) prints each 32-bit word of the address in host (little-endian) order."""
    raw = bytes.fromhex(hexaddr)
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


def loopback_listeners(port: int, proc_root: str = "/proc") -> set[int]:
    """Socket inodes of every LISTEN socket a connection to 127.0.0.1:`port` could reach."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(proc_root, "net", table).read_text().splitlines()[1:]
        except OSError:  # no IPv6 in this kernel or namespace
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            addr, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            try:
                if _proc_net_address(addr) not in _REACHES_LOOPBACK:
                    continue
            except ValueError:
                continue
            inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pids: Iterable[int], proc_root: str = "/proc") -> set[int]:
    """Inodes of the sockets these processes hold open (their /proc/<pid>/fd links)."""
    inodes: set[int] = set()
    for pid in pids:
        fd_dir = Path(proc_root, str(pid), "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited while we looked
            continue
        for fd in fds:
            try:
                link = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def port_owner(port: int, pgid: int, proc_root: str = "/proc") -> PortOwner:
    """Who answers a connection to 127.0.0.1:`port`: nobody yet ("none"), only processes of
    group `pgid` ("group"), or at least one process outside it ("foreign": a squatter that
    would receive the engine key and the prompts)."""
    listening = loopback_listeners(port, proc_root)
    if not listening:
        return "none"
    ours = socket_inodes(group_members(pgid, proc_root), proc_root)
    return "group" if listening <= ours else "foreign"
