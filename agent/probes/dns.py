"""DNS: one query over UDP to a given server, and whether it answers with records.

``build_query`` and ``parse_response`` are pure (RFC 1035 wire format, name compression
included); ``dns_probe`` sends and receives. Success is rcode NOERROR with at least one answer of
the type asked for (a CNAME alone does not count). There is no retry over TCP: a truncated
reply without answers fails.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from typing import NamedTuple

from agent.probes.common import ProbeError, ProbeResult, resolve

__all__ = [
    "RECORD_TYPES",
    "DnsFormatError",
    "DnsResponse",
    "build_query",
    "dns_probe",
    "encode_name",
    "parse_response",
]

RECORD_TYPES = {"A": 1, "AAAA": 28}
CLASS_IN = 1
RCODES = {1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp", 5: "refused"}
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QUESTION = struct.Struct("!HH")
_MAX_JUMPS = 32


class DnsFormatError(ProbeError):
    """A reply that is not a well-formed answer to our query."""


class DnsResponse(NamedTuple):
    rcode: int
    answers: int  # records of the type asked for
    truncated: bool


def encode_name(name: str) -> bytes:
    """A domain name in wire format; ``ValueError`` when it cannot be one."""
    text = name.rstrip(".")
    if not text:
        raise ValueError("empty domain name")
    try:
        labels = [label.encode("idna") for label in text.split(".")]
    except UnicodeError as exc:
        raise ValueError(f"bad domain name {name!r}: {exc}") from None
    out = b""
    for label in labels:
        if not 1 <= len(label) <= 63:
            raise ValueError(f"bad domain name {name!r}: labels are 1 to 63 characters")
        out += bytes([len(label)]) + label
    if len(out) + 1 > 255:
        raise ValueError(f"bad domain name {name!r}: longer than 255 bytes")
    return out + b"\x00"


def build_query(qid: int, name: str, record: str) -> bytes:
    """A recursive query (RD set) for ``record`` (``A`` or ``AAAA``) of ``name``."""
    header = _HEADER.pack(qid, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + _QUESTION.pack(RECORD_TYPES[record], CLASS_IN)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(data):
            raise DnsFormatError("truncated name")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsFormatError("truncated name")
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise DnsFormatError("name compression loop")
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length & 0xC0:
            raise DnsFormatError("bad label type")
        offset += 1
        if length == 0:
            break
        if offset + length > len(data):
            raise DnsFormatError("truncated name")
        labels.append(data[offset : offset + length].decode("ascii", "replace").lower())
        offset += length
    return ".".join(labels), (end if end >= 0 else offset)


def parse_response(data: bytes, qid: int, name: str, record: str) -> DnsResponse:
    """Check that ``data`` answers our query and count its answers of type ``record``.

    ``DnsFormatError`` for anything else: too short, another id, not a response, another
    question, or records that run past the end."""
    if len(data) < _HEADER.size:
        raise DnsFormatError("short reply")
    rid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    if rid != qid:
        raise DnsFormatError("reply to another query")
    if not flags & 0x8000:
        raise DnsFormatError("not a reply")
    rcode = flags & 0x000F
    truncated = bool(flags & 0x0200)
    qtype = RECORD_TYPES[record]
    asked, _ = _read_name(encode_name(name), 0)
    offset = _HEADER.size
    for index in range(qdcount):
        qname, offset = _read_name(data, offset)
        if offset + _QUESTION.size > len(data):
            raise DnsFormatError("truncated question")
        rtype, _ = _QUESTION.unpack_from(data, offset)
        offset += _QUESTION.size
        if index == 0 and (qname != asked or rtype != qtype):
            raise DnsFormatError("reply to another question")
    answers = 0
    for _ in range(ancount):
        try:
            _, offset = _read_name(data, offset)
        except DnsFormatError:
            if truncated:
                break
            raise
        if offset + _RR.size > len(data):
            if truncated:
                break
            raise DnsFormatError("truncated record")
        rtype, rclass, _, rdlength = _RR.unpack_from(data, offset)
        offset += _RR.size + rdlength
        if offset > len(data):
            if truncated:
                break
            raise DnsFormatError("truncated record")
        answers += rtype == qtype and rclass == CLASS_IN
    return DnsResponse(rcode, answers, truncated)


async def dns_probe(server: str, port: int, query: str, record: str) -> ProbeResult:
    """Ask ``server:port`` over UDP for ``record`` of ``query``; wait for the matching reply
    (replies with another id are ignored). Raises ``OSError`` or ``ProbeError`` on failure."""
    family, sockaddr = await resolve(server, port)
    qid = random.getrandbits(16)
    packet = build_query(qid, query, record)
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(sockaddr)  # only the server's replies; its ICMP errors raise "refused"
        await loop.sock_sendall(sock, packet)
        while True:
            data = await loop.sock_recv(sock, 65535)
            if len(data) >= 2 and data[:2] == packet[:2]:
                break
    finally:
        sock.close()
    reply = parse_response(data, qid, query, record)
    result = ProbeResult(success=False, dns_answers=reply.answers)
    if reply.rcode != 0:
        result.error = RCODES.get(reply.rcode, f"rcode {reply.rcode}")
    elif reply.answers == 0:
        result.error = "truncated, no answers" if reply.truncated else f"no {record} answer"
    else:
        result.success = True
    return result
