"""Signed acknowledge links: round trip, expiry, tampering, garbage."""

from __future__ import annotations

import base64
import re

import pytest

from collector.alerting.links import LinkError, sign, verify
from collector.alerting.model import alert_key

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_780_000_000.0


def test_round_trip_alert_keys() -> None:
    keys = [alert_key("host_down", {"site": "s1", "host": f"h{i}"}) for i in range(3)]
    token = sign(SECRET, keys, NOW + 3600)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert verify(SECRET, token, NOW) == keys


def test_one_key_makes_a_short_token() -> None:
    token = sign(SECRET, [alert_key("disk_full", {"site": "a"})], NOW + 60)
    assert len(token) == 44


def test_round_trip_other_keys() -> None:
    keys = ["site-a/host_down", "集团-1", "ABCDEF0123456789"]
    assert verify(SECRET, sign(SECRET, keys, NOW + 10), NOW) == keys


def test_expiry() -> None:
    token = sign(SECRET, ["0123456789abcdef"], NOW + 100)
    assert verify(SECRET, token, NOW + 99.9) == ["0123456789abcdef"]
    for later in (NOW + 100, NOW + 10_000):
        with pytest.raises(LinkError) as info:
            verify(SECRET, token, later)
        assert info.value.reason == "expired"


def test_wrong_secret() -> None:
    token = sign(SECRET, ["0123456789abcdef"], NOW + 100)
    with pytest.raises(LinkError) as info:
        verify(b"another secret", token, NOW)
    assert info.value.reason == "signature"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_every_changed_byte_is_refused() -> None:
    token = sign(SECRET, ["0123456789abcdef", "fedcba9876543210"], NOW + 100)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for i in range(len(raw)):
        changed = bytearray(raw)
        changed[i] ^= 0x01
        with pytest.raises(LinkError) as info:
            verify(SECRET, _b64(bytes(changed)), NOW)
        assert info.value.reason == "signature"


def test_extended_expiry_is_refused() -> None:
    token = sign(SECRET, ["0123456789abcdef"], NOW - 10)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[1:9] = int(NOW + 10**6).to_bytes(8, "big")
    with pytest.raises(LinkError) as info:
        verify(SECRET, _b64(bytes(raw)), NOW)
    assert info.value.reason == "signature"


def test_truncated_and_extended_tokens() -> None:
    token = sign(SECRET, ["0123456789abcdef"], NOW + 100)
    for bad in (token[:-1], token[:-4], token + "A", token[4:]):
        with pytest.raises(LinkError):
            verify(SECRET, bad, NOW)


@pytest.mark.parametrize(
    "garbage", ["", "x", "not a token", "%%%", "A" * 10, "=====", "é", "A" * 9000, "ab.cd"]
)
def test_garbage(garbage: str) -> None:
    with pytest.raises(LinkError) as info:
        verify(SECRET, garbage, NOW)
    assert info.value.reason in ("malformed", "signature")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        sign(SECRET, [], NOW)
    with pytest.raises(ValueError):
        sign(b"", ["0123456789abcdef"], NOW)
    with pytest.raises(ValueError):
        sign(SECRET, ["a\nb"], NOW)
    with pytest.raises(ValueError):
        sign(SECRET, ["0123456789abcdef"], -1)
    with pytest.raises(ValueError):
        verify(b"", "AAAA", NOW)


def test_link_error_is_an_outpost_error() -> None:
    from outpost.errors import OutpostError

    assert issubclass(LinkError, OutpostError)
