"""Talking to systemd: sd_notify, the watchdog interval, journald stream detection.

sd_notify is one datagram on an AF_UNIX socket, so it is written here by hand (a path socket,
or the abstract namespace when the name starts with "@"). Every failure is ignored: not being
under systemd, or systemd having gone away, must never break the daemon. Values come in as
arguments; config.py reads the environment.
"""

from __future__ import annotations

import asyncio
import socket
import time


class Notifier:
    """sd_notify over NOTIFY_SOCKET; a no-op when `socket_path` is empty."""

    def __init__(self, socket_path: str | None) -> None:
        self._address: str | bytes | None = None
        if socket_path:
            if socket_path.startswith("@"):
                # Abstract namespace: a leading NUL instead of "@", no filesystem entry.
                self._address = b"\0" + socket_path[1:].encode()
            elif socket_path.startswith("/"):
                self._address = socket_path
            # Other forms (vsock:) are not used for services; ignore them.
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` lines as one datagram; False if it could not be sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                # Non-blocking: a receiver that stops reading (a wedged manager, a test) must
                # not stall the event loop; a dropped STATUS= or WATCHDOG=1 is harmless next
                # to a frozen gateway.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the messages vllama sends ------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *(() if status is None else (_status(status),)))

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def reloading(self) -> bool:
        """Type=notify-reload (systemd >= 253) requires MONOTONIC_USEC with RELOADING=1."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *(() if status is None else (_status(status),)))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> bool:
        """Ask for `usec` more of start/stop time (sent as heartbeats while vLLM loads)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def errno(self, number: int, status: str | None = None) -> bool:
        return self.notify(f"ERRNO={int(number)}", *(() if status is None else (_status(status),)))


def _status(text: str) -> str:
    # One datagram field is one line: a newline would start a bogus field.
    return "STATUS=" + " ".join(text.splitlines())


def _as_int(value: int | str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def watchdog_interval(
    watchdog_usec: int | str | None, watchdog_pid: int | str | None, pid: int
) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when no watchdog is ours.

    systemd sets WATCHDOG_PID to the main pid; if it names another process (we were started by
    a wrapper) the watchdog is not for us. 0/unset WATCHDOG_PID means "whoever reads it".
    """
    usec = _as_int(watchdog_usec)
    if usec is None or usec <= 0:
        return None
    owner = _as_int(watchdog_pid)
    if owner not in (None, 0, pid):
        return None
    return usec / 2 / 1_000_000


async def watchdog_loop(notifier: Notifier, interval: float) -> None:
    """Ping from the event loop, so a stalled loop stops pinging and systemd restarts us.
    Runs until cancelled."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
