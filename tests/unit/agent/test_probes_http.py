"""Tests for agent/probes/http.py: URLs, the request, status lines, certificate dates."""

from __future__ import annotations

import pytest

from agent.probes.common import ProbeError
from agent.probes.http import (
    build_request,
    cert_days_left,
    parse_status_line,
    parse_url,
    status_ok,
)


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 404 Not Found\r\n", 404),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 503 Service Unavailable", 503),
        (b"HTTP/2 301 Moved\n", 301),
    ],
)
def test_parse_status_line(line: bytes, status: int) -> None:
    assert parse_status_line(line) == status


@pytest.mark.parametrize(
    "line",
    [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 99 Low\r\n", b"HTTP/1.1 2000\r\n", b"", b"200 OK"],
)
def test_parse_status_line_refuses_others(line: bytes) -> None:
    with pytest.raises(ProbeError, match="not an HTTP response"):
        parse_status_line(line)


def test_parse_url_defaults_and_host_header() -> None:
    url = parse_url("https://Example.org")
    assert (url.scheme, url.host, url.port, url.target, url.host_header) == (
        "https", "example.org", 443, "/", "example.org",
    )  # fmt: skip
    url = parse_url("http://10.0.0.5:8080/status?x=1")
    assert (url.port, url.target, url.host_header) == (8080, "/status?x=1", "10.0.0.5:8080")
    url = parse_url("http://[fe80::1]:81/")
    assert (url.host, url.host_header) == ("fe80::1", "[fe80::1]:81")


@pytest.mark.parametrize(
    "url", ["ftp://x/", "http://", "http://user:pw@host/", "http://a b/", "camera.local", ""]
)
def test_parse_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_build_request_sends_the_required_headers() -> None:
    request = build_request(parse_url("http://cam-1.local:8000/snapshot"))
    assert request.startswith(b"GET /snapshot HTTP/1.1\r\n")
    assert b"\r\nHost: cam-1.local:8000\r\n" in request
    assert b"\r\nUser-Agent: outpost-agent\r\n" in request
    assert b"\r\nConnection: close\r\n" in request
    assert request.endswith(b"\r\n\r\n")


def test_status_ok() -> None:
    assert status_ok(200, []) and status_ok(302, []) and not status_ok(404, [])
    assert status_ok(401, [401, 403]) and not status_ok(200, [401])


def test_cert_days_left() -> None:
    not_after = "Jan  2 00:00:00 2030 GMT"
    now = 1_893_456_000.0  # 2030-01-01 00:00:00 UTC
    assert cert_days_left({"notAfter": not_after}, now) == pytest.approx(1.0)
    assert cert_days_left({}, now) is None  # unverified: getpeercert() is empty
    assert cert_days_left(None, now) is None
    assert cert_days_left({"notAfter": "soon"}, now) is None
