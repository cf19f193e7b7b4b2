"""Telling systemd how a service is doing, without libsystemd: the ``sd_notify`` protocol.

A notification is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that variable
(not run by systemd, or not ``Type=notify``) every call is a no-op returning False.

- ``READY=1`` when the service does its job (the agent: outbox open, publisher started; the
  collector: listening), ``STOPPING=1`` on shutdown, ``STATUS=...`` a line for
  ``systemctl status``.
- ``RELOADING=1`` with ``MONOTONIC_USEC`` (what ``Type=notify-reload``, systemd 253+, wants),
  then ``READY=1``, around a reload on SIGHUP.
- ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` (``WatchdogSec=``). :class:`Watchdog` paces
  the pings, but the caller decides when to ask: from its main loop once the loop has made
  progress (never from a free-running thread), so a hung loop stops the pings and systemd
  restarts the process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = [
    "StatusLine",
    "Watchdog",
    "notify",
    "ready",
    "reloading",
    "stopping",
    "watchdog_interval",
]

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names: a path, or ``@x`` for abstract ``\\0x``."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    return None  # vsock (``vsock:CID:PORT``) and relative paths are not for us


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``KEY=value`` lines) to systemd; True when the datagram went out.

    False, quietly, when ``$NOTIFY_SOCKET`` is unset; False with a debug line when the socket
    cannot be reached (systemd gone, or the name is not a socket).
    """
    name = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not name:
        return False
    address = _address(name)
    if address is None:
        log.debug("NOTIFY_SOCKET=%r is not a path or an abstract socket; not notifying", name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.debug("cannot notify systemd at %s: %s", name, exc)
        return False
    return True


def _status(text: str) -> str:
    return "\nSTATUS=" + text.replace("\n", " ") if text else ""


def ready(status: str = "", env: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (after a start or a reload), with a status line."""
    return notify("READY=1" + _status(status), env)


def reloading(env: Mapping[str, str] | None = None) -> bool:
    """``RELOADING=1`` with the CLOCK_MONOTONIC time in microseconds, as systemd 253+ asks."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when there is none.

    None also when ``$WATCHDOG_PID`` is set to another process's id (the variables were
    inherited from a parent systemd watches), or when either variable is not a positive
    number.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """Paces ``WATCHDOG=1``: :meth:`ping` sends one when half the timeout has passed since the
    last. Call it when the loop has shown progress; when nothing calls it, nothing is sent.

    ``timeout`` None (no watchdog asked for) makes every call a no-op.
    """

    def __init__(
        self,
        timeout: float | None,
        send: Callable[[str], bool] = notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every = timeout / 2 if timeout else None
        self._send = send
        self._clock = clock
        self._next = clock()  # the first ping goes out at the first chance
        self.sent = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Watchdog:
        return cls(watchdog_interval(env), lambda state: notify(state, env))

    @property
    def enabled(self) -> bool:
        return self.every is not None

    def remaining(self, default: float = 1.0) -> float:
        """Seconds until the next ping is due (``default`` without a watchdog): how long a
        loop may sleep before it should come round again."""
        if self.every is None:
            return default
        return max(0.0, self._next - self._clock())

    def ping(self) -> bool:
        """Send ``WATCHDOG=1`` if one is due; True when one was sent."""
        if self.every is None:
            return False
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.every
        self._send("WATCHDOG=1")
        self.sent += 1
        return True


class StatusLine:
    """``STATUS=...`` sent when the text changes, at most every ``min_gap`` seconds; the
    latest text goes out at the first call after the gap."""

    def __init__(
        self,
        min_gap: float = 5.0,
        send: Callable[[str], bool] = notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_gap = min_gap
        self._send = send
        self._clock = clock
        self._shown = ""
        self._at: float | None = None

    def update(self, text: str) -> bool:
        """Show ``text`` if it is new and the gap has passed; True when it was sent."""
        now = self._clock()
        if text == self._shown or (self._at is not None and now - self._at < self.min_gap):
            return False
        self.shown(text, now)
        self._send("STATUS=" + text.replace("\n", " "))
        return True

    def shown(self, text: str, now: float | None = None) -> None:
        """Note that ``text`` went out some other way (with ``READY=1``)."""
        self._shown = text
        self._at = self._clock() if now is None else now
