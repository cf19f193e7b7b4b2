"""Tests for agent/probes/icmp.py: checksums, echo packets built and parsed (with and without
the IP header a raw socket returns), replies matched to their requests, round-trip statistics.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any

import pytest

from agent.probes.common import ProbeError
from agent.probes.icmp import (
    EchoReply,
    IcmpSocket,
    checksum,
    echo_request,
    echo_result,
    parse_echo_reply,
)


def _reply(ident: int, seq: int, payload: bytes = b"ping") -> bytes:
    body = struct.pack("!BBHHH", 0, 0, 0, ident, seq) + payload
    return struct.pack("!BBHHH", 0, 0, checksum(body), ident, seq) + payload


def _ip(packet: bytes, source: str, options: bytes = b"", proto: int = 1) -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(packet), 1, 0, 64, proto, 0,
        socket.inet_aton(source), socket.inet_aton("10.0.0.2"),
    )  # fmt: skip
    return header + options + packet


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words sum to 0x2ddf0, folded 0xddf2, complemented 0x220d.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_checksum_pads_odd_lengths() -> None:
    assert checksum(b"\x01") == checksum(b"\x01\x00")


def test_echo_request_layout_and_checksum() -> None:
    packet = echo_request(0x1234, 7, b"abcd")
    assert packet[:2] == b"\x08\x00"
    assert struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert packet[8:] == b"abcd"
    assert checksum(packet) == 0


def test_parse_reply_from_ping_socket() -> None:
    assert parse_echo_reply(_reply(0xBEEF, 3), ip_header=False) == EchoReply(0xBEEF, 3, None)


def test_parse_reply_from_raw_socket_skips_ip_header() -> None:
    got = parse_echo_reply(_ip(_reply(42, 9), "192.0.2.7"), ip_header=True)
    assert got == EchoReply(42, 9, "192.0.2.7")


def test_parse_reply_with_ip_options() -> None:
    got = parse_echo_reply(_ip(_reply(1, 2), "10.1.1.1", options=b"\x01" * 8), ip_header=True)
    assert got == EchoReply(1, 2, "10.1.1.1")


@pytest.mark.parametrize(
    "packet",
    [
        echo_request(1, 1),  # our own request, seen on loopback
        _reply(1, 1)[:7],  # too short
        _reply(1, 1)[:-1] + b"X",  # bad checksum
        bytes([3, 1]) + _reply(1, 1)[2:],  # destination unreachable
        b"",
    ],
)
def test_parse_ignores_what_is_not_an_echo_reply(packet: bytes) -> None:
    assert parse_echo_reply(packet, ip_header=False) is None


def test_parse_raw_ignores_other_protocols_and_versions() -> None:
    assert parse_echo_reply(_ip(_reply(1, 1), "10.0.0.1", proto=17), ip_header=True) is None
    v6 = bytes([0x60]) + _ip(_reply(1, 1), "10.0.0.1")[1:]
    assert parse_echo_reply(v6, ip_header=True) is None
    assert parse_echo_reply(b"\x45" + b"\x00" * 10, ip_header=True) is None


class _FakeSock:
    """Hands out queued (packet, address) pairs, then "would block"."""

    def __init__(self, packets: list[tuple[bytes, str]]) -> None:
        self.packets = packets

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.packets:
            raise BlockingIOError
        packet, addr = self.packets.pop(0)
        return packet, (addr, 0)


def test_replies_match_identifier_sequence_and_address() -> None:
    async def run() -> list[bool]:
        loop = asyncio.get_running_loop()
        sock = _FakeSock(
            [
                (_ip(_reply(0x9999, 5), "10.0.0.1"), "10.0.0.1"),  # another program's ping
                (_ip(_reply(0x1111, 5), "10.0.0.9"), "10.0.0.9"),  # another target
                (_ip(_reply(0x1111, 6), "10.0.0.1"), "10.0.0.1"),  # another sequence
                (b"garbage", "10.0.0.1"),
                (_ip(_reply(0x1111, 5), "10.0.0.1"), "10.0.0.1"),  # ours
            ]
        )
        icmp = IcmpSocket(sock, raw=True, ident=0x1111)  # type: ignore[arg-type]
        ours: asyncio.Future[float] = loop.create_future()
        other: asyncio.Future[float] = loop.create_future()
        icmp._pending[("10.0.0.1", 0x1111, 5)] = ours
        icmp._pending[("10.0.0.1", 0x1111, 7)] = other
        icmp._on_readable()
        return [ours.done(), other.done()]

    assert asyncio.run(run()) == [True, False]


def test_echo_result_statistics() -> None:
    got = echo_result([0.010, 0.014, 0.011], sent=3)
    assert got.success and got.loss == 0.0
    assert (got.rtt_min, got.rtt_max) == (0.010, 0.014)
    assert got.rtt_avg == pytest.approx(0.035 / 3)
    assert got.jitter == pytest.approx((0.004 + 0.003) / 2)


def test_echo_result_with_loss() -> None:
    one = echo_result([0.02], sent=4)
    assert one.success and one.loss == 0.75 and one.jitter is None
    none = echo_result([], sent=3)
    assert not none.success and none.loss == 1.0 and none.rtt_avg is None


def test_icmp_open_names_the_sysctl_when_refused() -> None:
    def refuse(*args: Any) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    with pytest.raises(ProbeError, match=r"net\.ipv4\.ping_group_range"):
        IcmpSocket.open(factory=refuse)
