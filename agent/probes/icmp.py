"""ICMP echo (ping), IPv4 only.

One socket serves every ICMP target of a cycle: an unprivileged datagram ping socket when the
kernel allows it (``net.ipv4.ping_group_range``), else a raw socket (root or CAP_NET_RAW).
Replies are matched to requests by (source address, identifier, sequence), so replies to other
programs' pings and to other targets are ignored. Building and parsing packets are pure
functions; ``IcmpSocket`` does the I/O. IPv6 (ICMPv6) is not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

from agent.probes.common import ProbeError, ProbeResult, short_error

__all__ = [
    "PERMISSION_HELP",
    "EchoReply",
    "IcmpPermissionError",
    "IcmpSocket",
    "checksum",
    "echo_request",
    "echo_result",
    "parse_echo_reply",
]

logger = logging.getLogger(__name__)

ECHO_REPLY = 0
ECHO_REQUEST = 8
PAYLOAD = b"outpost-agent-probe\x00" + bytes(range(12))  # 32 bytes
_HEADER = struct.Struct("!BBHHH")
_RECV_BATCH = 64

PERMISSION_HELP = (
    "ICMP probes are not permitted: this user's group is outside net.ipv4.ping_group_range "
    "and raw sockets need root (or CAP_NET_RAW); allow it with e.g. "
    "`sysctl -w net.ipv4.ping_group_range='0 2147483647'`"
)


class IcmpPermissionError(ProbeError):
    """Neither an unprivileged ping socket nor a raw socket may be opened."""


class EchoReply(NamedTuple):
    ident: int
    seq: int
    source: str | None  # from the IP header, when the packet had one


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``; 0 over a packet that carries a good one."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    """An ICMP echo request with its checksum filled in."""
    body = _HEADER.pack(ECHO_REQUEST, 0, 0, ident, seq) + payload
    return _HEADER.pack(ECHO_REQUEST, 0, checksum(body), ident, seq) + payload


def parse_echo_reply(packet: bytes, ip_header: bool) -> EchoReply | None:
    """The identifier and sequence of an echo reply; None for anything else (requests, errors,
    other protocols, bad checksums, short packets). A raw socket's packets start with the IPv4
    header (``ip_header=True``); a ping socket's start with the ICMP header."""
    source = None
    if ip_header:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl or packet[9] != socket.IPPROTO_ICMP:
            return None
        source = socket.inet_ntoa(packet[12:16])
        packet = packet[ihl:]
    if len(packet) < _HEADER.size:
        return None
    kind, code, _, ident, seq = _HEADER.unpack_from(packet)
    if kind != ECHO_REPLY or code != 0 or checksum(packet) != 0:
        return None
    return EchoReply(ident, seq, source)


def echo_result(rtts: list[float], sent: int) -> ProbeResult:
    """Round-trip statistics from the replies' RTTs, in the order the requests were sent.

    Jitter is the mean absolute difference of consecutive RTTs (needs two replies); loss is
    the share of the ``sent`` requests that got no reply in time."""
    loss = 1.0 - len(rtts) / sent if sent else 1.0
    if not rtts:
        return ProbeResult(success=False, loss=loss, error="no reply")
    jitter = None
    if len(rtts) > 1:
        jitter = sum(abs(b - a) for a, b in itertools.pairwise(rtts)) / (len(rtts) - 1)
    return ProbeResult(
        success=True,
        rtt_min=min(rtts),
        rtt_avg=sum(rtts) / len(rtts),
        rtt_max=max(rtts),
        jitter=jitter,
        loss=loss,
    )


_Key = tuple[str, int, int]  # source address, identifier, sequence


class IcmpSocket:
    """One ICMP socket shared by all pings of a cycle; call ``close`` when the cycle ends."""

    def __init__(self, sock: socket.socket, raw: bool, ident: int) -> None:
        self.sock = sock
        self.raw = raw
        self.ident = ident
        self._seq = random.getrandbits(16)
        self._pending: dict[_Key, asyncio.Future[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(cls, factory: Callable[..., socket.socket] = socket.socket) -> IcmpSocket:
        """A ping socket if permitted, else a raw socket; ``IcmpPermissionError`` if neither.
        ``factory`` makes the sockets (``socket.socket``; tests pass one that refuses)."""
        denied = (errno.EACCES, errno.EPERM)
        try:
            sock = factory(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        except OSError as exc:
            if exc.errno not in denied and exc.errno != errno.EPROTONOSUPPORT:
                raise ProbeError(f"cannot open an ICMP socket: {exc}") from None
        else:
            try:
                sock.setblocking(False)
                sock.bind(("0.0.0.0", 0))
                ident = sock.getsockname()[1]  # the kernel puts this in every request
            except OSError:
                sock.close()
                raise
            return cls(sock, raw=False, ident=ident)
        try:
            sock = factory(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError as exc:
            if exc.errno in denied:
                raise IcmpPermissionError(PERMISSION_HELP) from None
            raise ProbeError(f"cannot open an ICMP socket: {exc}") from None
        sock.setblocking(False)
        return cls(sock, raw=True, ident=random.getrandbits(16))

    def start(self) -> None:
        """Start reading replies on the running loop."""
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._pending.clear()

    def _on_readable(self) -> None:
        for _ in range(_RECV_BATCH):
            try:
                packet, addr = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on a ping socket
                logger.debug("icmp: receive failed: %r", exc)
                return
            at = time.perf_counter()
            reply = parse_echo_reply(packet, ip_header=self.raw)
            if reply is None:
                continue
            future = self._pending.get((addr[0], reply.ident, reply.seq))
            if future is not None and not future.done():
                future.set_result(at)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def ping(self, address: str, count: int, interval: float, timeout: float) -> ProbeResult:
        """Send ``count`` echo requests to an IPv4 ``address``, ``interval`` seconds apart, and
        wait ``timeout`` seconds for each reply: at most ``(count - 1) * interval + timeout``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent: list[tuple[asyncio.Future[float], float]] = []
        keys: list[_Key] = []
        error = ""
        try:
            for i in range(count):
                delay = start + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                seq = self._next_seq()
                key = (address, self.ident, seq)
                future: asyncio.Future[float] = loop.create_future()
                self._pending[key] = future
                keys.append(key)
                at = time.perf_counter()
                try:
                    self.sock.sendto(echo_request(self.ident, seq), (address, 0))
                except OSError as exc:  # a full buffer or no route: this one is lost
                    error = short_error(exc)
                    continue
                sent.append((future, at))
            if sent:
                remaining = timeout - (time.perf_counter() - sent[-1][1])
                if remaining > 0:
                    await asyncio.wait([f for f, _ in sent], timeout=remaining)
        finally:
            for key in keys:
                self._pending.pop(key, None)
        rtts = [f.result() - at for f, at in sent if f.done() and f.result() - at <= timeout]
        result = echo_result(rtts, count)
        if not result.success and error:
            result.error = error
        return result
