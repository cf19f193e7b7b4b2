"""HTTP(S) GET: status code, time to first byte, and the days a TLS certificate has left.

The probe sends one ``GET`` with ``Connection: close``, reads the status line and the headers,
and closes without reading the body. URL parsing, the request, the status line and the
certificate date are pure functions; ``http_probe`` does the I/O on asyncio streams.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from agent.probes.common import ProbeError, ProbeResult

__all__ = [
    "HttpUrl",
    "build_request",
    "cert_days_left",
    "http_probe",
    "parse_status_line",
    "parse_url",
    "status_ok",
    "tls_context",
]

USER_AGENT = "outpost-agent"
MAX_HEAD_BYTES = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? ([1-5]\d\d)(?:[ \t][^\r\n]*)?\r?\n?\Z")
_SAFE_TARGET = "/%:@!$&'()*+,;=-._~?"


class HttpUrl(NamedTuple):
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent on the request line
    host_header: str


def parse_url(url: str) -> HttpUrl:
    """Split an ``http://`` or ``https://`` URL; ``ValueError`` with the reason otherwise."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("url must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("url must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise ValueError("url has no host")
    try:
        port = parts.port
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"bad url: {exc}") from None
    default = 443 if parts.scheme == "https" else 80
    port = port or default
    target = quote(parts.path or "/", safe=_SAFE_TARGET)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE_TARGET)
    host_header = f"[{host}]" if ":" in host else host
    if port != default:
        host_header += f":{port}"
    return HttpUrl(parts.scheme, host, port, target, host_header)


def build_request(url: HttpUrl) -> bytes:
    return (
        f"GET {url.target} HTTP/1.1\r\n"
        f"Host: {url.host_header}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


def parse_status_line(line: bytes) -> int:
    """The status code of ``HTTP/1.1 200 OK``; ``ProbeError`` when it is not a status line."""
    match = _STATUS_LINE.match(line)
    if match is None:
        raise ProbeError("not an HTTP response")
    return int(match.group(1))


def status_ok(status: int, expect: list[int]) -> bool:
    """A status in ``expect``, or any 2xx/3xx when ``expect`` is empty."""
    return status in expect if expect else 200 <= status <= 399


def cert_days_left(cert: Any, now: float) -> float | None:
    """Days from ``now`` until the certificate's ``notAfter`` (negative once it expired);
    None without a verified certificate (``getpeercert()`` is empty then)."""
    not_after = cert.get("notAfter") if isinstance(cert, dict) else None
    if not isinstance(not_after, str):
        return None
    try:
        return (ssl.cert_time_to_seconds(not_after) - now) / 86400
    except ValueError:
        return None


def tls_context(verify: bool) -> ssl.SSLContext:
    """The system's CAs and hostname checks, or (``verify=False``) no checks at all."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def http_probe(
    url: HttpUrl, expect: list[int], context: ssl.SSLContext | None, now: float
) -> ProbeResult:
    """GET ``url`` (TLS with ``context`` for https). ``ttfb`` runs from the start of the probe
    (name lookup, connect and TLS handshake included) to the first byte of the response."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        url.host,
        url.port,
        ssl=context,
        server_hostname=url.host if context is not None else None,
        limit=MAX_HEAD_BYTES,
    )
    try:
        writer.write(build_request(url))
        await writer.drain()
        first = await reader.read(1)
        if not first:
            raise ProbeError("closed without a response")
        ttfb = time.perf_counter() - started
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:  # closed early: judge the status line
            head = first + exc.partial
        except asyncio.LimitOverrunError:
            raise ProbeError("response headers too long") from None
        cert = writer.get_extra_info("peercert") if context is not None else None
    finally:
        writer.transport.abort()  # no body, no TLS close_notify: nothing left to wait for
    status = parse_status_line(head.split(b"\n", 1)[0] + b"\n")
    ok = status_ok(status, expect)
    return ProbeResult(
        success=ok,
        error="" if ok else f"status {status}",
        http_status=status,
        ttfb=ttfb,
        cert_days_left=cert_days_left(cert, now),
    )
