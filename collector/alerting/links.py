"""Signed, expiring acknowledge links: the token in ``/ack/<token>``.

``sign`` packs the alert keys and the expiry into a short URL-safe token with an HMAC-SHA256
tag; ``verify`` gives the keys back, or raises ``LinkError`` when the token is expired,
tampered with or not a token at all. Pure: the secret and the time are passed in. Making the
full URL, keeping the secret and acting on the acknowledgement are the collector's.

Token layout (base64url without padding) of ``version | expires | keys | tag``:

- ``version`` one byte: 1 when every key is 16 lower-case hex digits (``model.alert_key``),
  packed as 8 bytes each; 2 for any other keys, as UTF-8 joined by newlines;
- ``expires`` 8 bytes, big-endian whole seconds since the epoch;
- ``tag`` the first 16 bytes of HMAC-SHA256(secret, ``b"outpost-ack\\0"`` + the rest).

One alert makes a 44-character token, so a link still fits in a text message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct

from outpost.errors import OutpostError

__all__ = ["LinkError", "sign", "verify"]

_CONTEXT = b"outpost-ack\0"
_TAG_BYTES = 16
_HEX_KEY = re.compile(r"[0-9a-f]{16}")
_PACKED = 1
_TEXT = 2
_MAX_TOKEN = 8192


class LinkError(OutpostError):
    """An acknowledge link that cannot be used. ``reason`` is ``expired``, ``signature`` or
    ``malformed``, for the page that answers the click."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _tag(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + body, hashlib.sha256).digest()[:_TAG_BYTES]


def sign(secret: bytes, alert_keys: list[str], expires: float) -> str:
    """A URL-safe token naming ``alert_keys``, valid until ``expires`` (seconds since epoch)."""
    if not secret:
        raise ValueError("the link secret is empty")
    if not alert_keys:
        raise ValueError("an acknowledge link needs at least one alert key")
    if not 0 <= expires < 2**63:
        raise ValueError(f"expiry {expires!r} is out of range")
    if all(_HEX_KEY.fullmatch(key) for key in alert_keys):
        version, packed = _PACKED, b"".join(bytes.fromhex(key) for key in alert_keys)
    else:
        if any(not key or "\n" in key for key in alert_keys):
            raise ValueError("alert keys must be non-empty and have no newline")
        version, packed = _TEXT, "\n".join(alert_keys).encode("utf-8")
    body = struct.pack(">BQ", version, int(expires)) + packed
    raw = body + _tag(secret, body)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify(secret: bytes, token: str, now: float) -> list[str]:
    """The alert keys of a token made by ``sign`` with the same secret; raises ``LinkError``."""
    if not secret:
        raise ValueError("the link secret is empty")
    if not token or len(token) > _MAX_TOKEN or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise LinkError("malformed", "not an acknowledge link")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise LinkError("malformed", "not an acknowledge link") from None
    if len(raw) < 9 + _TAG_BYTES + 1:
        raise LinkError("malformed", "the acknowledge link is too short")
    body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(secret, body)):
        raise LinkError("signature", "the acknowledge link is not valid (bad signature)")
    version, expires = struct.unpack(">BQ", body[:9])
    packed = body[9:]
    if version == _PACKED and len(packed) % 8 == 0:
        keys = [packed[i : i + 8].hex() for i in range(0, len(packed), 8)]
    elif version == _TEXT:
        try:
            keys = packed.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            raise LinkError("malformed", "the acknowledge link is damaged") from None
    else:
        raise LinkError("malformed", "the acknowledge link has an unknown format")
    if now >= expires:
        raise LinkError("expired", "the acknowledge link has expired")
    return keys
