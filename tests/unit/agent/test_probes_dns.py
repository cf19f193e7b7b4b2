"""Tests for agent/probes/dns.py: queries built by hand-checked bytes, and replies parsed,
NXDOMAIN, truncated and garbage ones included."""

from __future__ import annotations

import struct

import pytest

from agent.probes.dns import DnsFormatError, build_query, encode_name, parse_response


def _rr(name: bytes, rtype: int, rdata: bytes) -> bytes:
    return name + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata


def _response(
    qid: int, name: str, qtype: int = 1, rcode: int = 0, answers: list[bytes] | None = None,
    flags: int = 0x8180, qname: str | None = None,
) -> bytes:  # fmt: skip
    answers = answers or []
    header = struct.pack("!HHHHHH", qid, flags | rcode, 1, len(answers), 0, 0)
    question = encode_name(qname or name) + struct.pack("!HH", qtype, 1)
    return header + question + b"".join(answers)


POINTER = b"\xc0\x0c"  # compression: the name at offset 12 (the question's)


def test_build_query() -> None:
    packet = build_query(0xABCD, "www.Example.org.", "AAAA")
    assert packet[:12] == struct.pack("!HHHHHH", 0xABCD, 0x0100, 1, 0, 0, 0)
    assert packet[12:] == b"\x03www\x07Example\x03org\x00" + struct.pack("!HH", 28, 1)


@pytest.mark.parametrize("name", ["", ".", "a..b", "x" * 64 + ".com", ("a" * 60 + ".") * 5])
def test_encode_name_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        encode_name(name)


def test_parse_counts_answers_of_the_asked_type() -> None:
    cname = _rr(POINTER, 5, b"\x03cdn\x00")
    a1 = _rr(POINTER, 1, bytes([10, 0, 0, 1]))
    a2 = _rr(b"\x03cdn\x00", 1, bytes([10, 0, 0, 2]))
    data = _response(7, "example.org", answers=[cname, a1, a2])
    got = parse_response(data, 7, "example.org", "A")
    assert (got.rcode, got.answers, got.truncated) == (0, 2, False)


def test_parse_aaaa_query_ignores_a_records() -> None:
    data = _response(7, "example.org", qtype=28, answers=[_rr(POINTER, 1, b"\x7f\x00\x00\x01")])
    assert parse_response(data, 7, "example.org", "AAAA").answers == 0


def test_parse_nxdomain() -> None:
    got = parse_response(_response(9, "nope.test", rcode=3), 9, "nope.test", "A")
    assert (got.rcode, got.answers) == (3, 0)


def test_parse_question_is_case_insensitive() -> None:
    data = _response(1, "x", qname="EXAMPLE.org", answers=[_rr(POINTER, 1, b"\x01\x02\x03\x04")])
    assert parse_response(data, 1, "example.ORG.", "A").answers == 1


def test_parse_truncated_flag_keeps_what_arrived() -> None:
    whole = _response(5, "a.test", flags=0x8380, answers=[_rr(POINTER, 1, b"\x01\x02\x03\x04")] * 2)
    got = parse_response(whole[:-6], 5, "a.test", "A")
    assert got.truncated and got.answers == 1


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "short"),
        (b"\x00\x07\x81", "short"),
        (b"\xff" * 40, "another query"),
        (_response(8, "a.test"), "another query"),
        (_response(7, "a.test", flags=0x0100), "not a reply"),
        (_response(7, "b.test"), "another question"),
        (_response(7, "a.test", qtype=28), "another question"),
        (_response(7, "a.test")[:-3], "truncated"),
        (_response(7, "a.test", answers=[_rr(POINTER, 1, b"\x01\x02\x03\x04")])[:-2], "trunc"),
        # the answer's name (at offset 24) points at itself
        (_response(7, "a.test", answers=[_rr(b"\xc0\x18", 1, b"\x01\x02\x03\x04")]), "loop"),
        (_response(7, "a.test", answers=[b"\x80"]), "label type"),
    ],
)
def test_parse_refuses_garbage(data: bytes, why: str) -> None:
    with pytest.raises(DnsFormatError, match=why):
        parse_response(data, 7, "a.test", "A")
