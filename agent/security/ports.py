"""Listening sockets: which TCP/UDP ports this host serves, and which opened or closed.

``read_listeners`` is the I/O: it asks psutil (imported on first use) for the sockets that
listen (TCP in LISTEN, UDP with no remote address). ``ListeningPorts`` compares each reading
with the last one and returns ``listen_port_opened`` / ``listen_port_closed`` events; the
first check ever only records a baseline. UDP sockets bound to an ephemeral port are client
sockets (a resolver's query socket) and are ignored; TCP listeners never are. This module does
not look at established connections or at who connects.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from outpost.wire import Event

__all__ = [
    "Listener",
    "ListeningPorts",
    "parse_port_range",
    "read_ephemeral_range",
    "read_listeners",
]

logger = logging.getLogger(__name__)

PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
# Where the port range file is missing (not Linux): the IANA dynamic range.
DEFAULT_EPHEMERAL = (49152, 65535)
# At most this many listeners are remembered (a host has far fewer; this bounds the state).
MAX_LISTENERS = 4096
MAX_ATTR = 2048
STATE_VERSION = 1


class Listener(NamedTuple):
    proto: str  # "tcp" or "udp"
    address: str
    port: int
    pid: int | None
    process: str  # the process name ("" when not visible), never its command line


def _text(value: str) -> str:
    """A string safe for the wire: no lone surrogates, at most ``MAX_ATTR`` characters."""
    try:
        clean = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        clean = value.encode("utf-8", "replace").decode("utf-8")
    return clean[:MAX_ATTR]


def read_listeners() -> list[Listener]:
    """The listening sockets of the host: TCP in LISTEN and unconnected UDP, IPv4 and IPv6.

    Without enough privilege the pids (and so the process names) of other users' sockets are
    not visible: those listeners come with ``pid=None`` and ``process=""``.
    """
    import psutil

    try:
        conns = psutil.net_connections("inet")
    except psutil.AccessDenied as exc:
        raise PermissionError(
            f"listing sockets was refused ({exc}); on this platform it needs root"
        ) from None
    names: dict[int, str] = {}
    out: list[Listener] = []
    for conn in conns:
        if conn.type == socket.SOCK_STREAM:
            if conn.status != psutil.CONN_LISTEN:
                continue
            proto = "tcp"
        elif conn.type == socket.SOCK_DGRAM:
            if conn.raddr:
                continue
            proto = "udp"
        else:
            continue
        if not conn.laddr:
            continue
        pid = conn.pid
        process = ""
        if pid is not None:
            if pid not in names:
                try:
                    names[pid] = psutil.Process(pid).name()
                except psutil.Error:
                    names[pid] = ""
            process = names[pid]
        out.append(Listener(proto, str(conn.laddr.ip), int(conn.laddr.port), pid, process))
    return out


def parse_port_range(text: str) -> tuple[int, int] | None:
    """``"32768\\t60999"`` -> ``(32768, 60999)``; None when the text is not a valid range."""
    parts = text.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    low, high = int(parts[0]), int(parts[1])
    if not 0 < low <= high <= 65535:
        return None
    return low, high


def read_ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing sockets (Linux), else the IANA range."""
    try:
        text = Path(PORT_RANGE_FILE).read_text()
    except OSError:
        return DEFAULT_EPHEMERAL
    parsed = parse_port_range(text)
    if parsed is None:
        logger.warning("cannot parse %s: %r", PORT_RANGE_FILE, text[:64])
        return DEFAULT_EPHEMERAL
    return parsed


Key = tuple[str, str, int]


def _key(listener: Listener) -> Key:
    return (listener.proto, listener.address, listener.port)


def _order(listener: Listener) -> tuple[str, str, int, int, str]:
    pid = listener.pid if listener.pid is not None else -1
    return (listener.proto, listener.address, listener.port, pid, listener.process)


def _event(
    kind: str, severity: Literal["info", "warning"], listener: Listener, now: float
) -> Event:
    attrs = {
        "proto": listener.proto,
        "address": _text(listener.address),
        "port": str(listener.port),
        "process": _text(listener.process),
    }
    if listener.pid is not None:
        attrs["pid"] = str(listener.pid)
    return Event(kind, severity, int(now * 1000), "", attrs)


def _listener_from_json(item: Any) -> Listener:
    """One stored listener; raises ValueError/TypeError when it is not one."""
    proto, address, port, pid, process = item
    if proto not in ("tcp", "udp") or not isinstance(address, str):
        raise ValueError(f"bad listener {item!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"bad port in {item!r}")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        raise ValueError(f"bad pid in {item!r}")
    if not isinstance(process, str):
        raise ValueError(f"bad process in {item!r}")
    return Listener(proto, address, port, pid, process)


class ListeningPorts:
    """Reports listening ports that appeared or went away since the last check.

    ``ignore_ports`` are never reported (either protocol); ``include_udp=False`` leaves UDP out
    altogether. ``reader`` and ``ephemeral_range`` are the I/O, injectable for tests. The key of
    a listener is (proto, address, port): several processes sharing one port count once.
    """

    def __init__(
        self,
        ignore_ports: Sequence[int] = (),
        include_udp: bool = True,
        reader: Callable[[], list[Listener]] = read_listeners,
        *,
        ephemeral_range: Callable[[], tuple[int, int]] = read_ephemeral_range,
    ) -> None:
        self.ignore_ports = frozenset(ignore_ports)
        self.include_udp = include_udp
        self._reader = reader
        self._ephemeral_reader = ephemeral_range
        self._ephemeral: tuple[int, int] | None = None
        # None until the first check (or a restore) has set a baseline.
        self._known: dict[Key, Listener] | None = None

    def _wanted(self, listeners: Iterable[Listener]) -> dict[Key, Listener]:
        if self._ephemeral is None:
            self._ephemeral = self._ephemeral_reader()
        low, high = self._ephemeral
        out: dict[Key, Listener] = {}
        for item in sorted(listeners, key=_order):
            if item.port in self.ignore_ports:
                continue
            if item.proto == "udp" and (not self.include_udp or low <= item.port <= high):
                continue
            out.setdefault(_key(item), item)
        if len(out) > MAX_LISTENERS:
            logger.warning(
                "%d listening sockets; only the first %d are watched", len(out), MAX_LISTENERS
            )
            out = dict(sorted(out.items())[:MAX_LISTENERS])
        return out

    def check(self, now: float) -> list[Event]:
        """Read the listeners and report the changes; the first check ever reports none."""
        current = self._wanted(self._reader())
        known, self._known = self._known, current
        if known is None:
            logger.debug("baseline of %d listening sockets", len(current))
            return []
        events = [
            _event("listen_port_opened", "warning", current[key], now)
            for key in sorted(current.keys() - known.keys())
        ]
        events += [
            _event("listen_port_closed", "info", known[key], now)
            for key in sorted(known.keys() - current.keys())
        ]
        return events

    def state(self) -> dict[str, Any]:
        """``{"v": 1, "listeners": [[proto, address, port, pid, process], ...] | None}``."""
        listeners = None
        if self._known is not None:
            listeners = [list(item) for _, item in sorted(self._known.items())]
        return {"v": STATE_VERSION, "listeners": listeners}

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a stored state; garbage is logged and gives a fresh baseline."""
        self._known = None
        if not data:
            return
        try:
            if data.get("v") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('v')!r}")
            items = data["listeners"]
            if items is None:
                return
            if not isinstance(items, list):
                raise TypeError("listeners is not a list")
            known = {_key(lst): lst for lst in map(_listener_from_json, items)}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("stored listening ports state is damaged (%s); starting afresh", exc)
            return
        self._known = known
