"""The probes source against real servers on loopback: TCP listeners and closed ports, an HTTP
server in a thread (fast, failing and too slow paths), HTTPS with a certificate made for the
test, a tiny DNS server, ICMP to 127.0.0.1, and one cycle of 1,000 TCP targets."""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness import free_port

from agent.probes.icmp import IcmpPermissionError, IcmpSocket
from agent.sources.probes import ProbesConfig, ProbesSource
from outpost.wire import Sample

KNOWN_NAME = "probe.outpost.test"


def _config(targets: list[dict[str, Any]], **keys: Any) -> ProbesConfig:
    return msgspec.convert({"targets": targets, **keys}, ProbesConfig)


def _values(samples: list[Sample], name: str) -> dict[str, float]:
    return {s.labels["target"]: s.value for s in samples if s.name == name}


# --- servers --------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    release: threading.Event

    def do_GET(self) -> None:
        if self.path == "/slow":
            self.release.wait(10)
        status = 500 if self.path == "/error" else 200
        body = b"hello\n" * 1000
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the probe hangs up after the headers: a broken pipe here is expected


@pytest.fixture
def web() -> Iterator[_Server]:
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def tls_web(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server with a self-signed certificate for 127.0.0.1, valid for 30 days."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=outpost-test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = type("Handler", (_Handler,), {"release": threading.Event()})
    server = _Server(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()
    thread.join(10)


def _dns_answer(query: bytes) -> bytes:
    """NOERROR with one A record 127.0.0.1 for KNOWN_NAME, NXDOMAIN for anything else."""
    qid = query[:2]
    end = query.index(b"\x00", 12) + 5  # the question: name, type, class
    question = query[12:end]
    labels, offset = [], 12
    while query[offset]:
        labels.append(query[offset + 1 : offset + 1 + query[offset]].decode())
        offset += 1 + query[offset]
    if ".".join(labels).lower() != KNOWN_NAME:
        return qid + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
    return qid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + answer


@pytest.fixture
def dns_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            sock.sendto(_dns_answer(query), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(5)
    sock.close()


@pytest.fixture
def listeners() -> Iterator[list[int]]:
    socks = []
    for _ in range(4):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4096)
        socks.append(s)
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


# --- tests ----------------------------------------------------------------------------------


def test_every_kind_in_one_cycle(
    web: _Server, dns_port: int, listeners: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    base = f"http://127.0.0.1:{web.server_address[1]}"
    targets: list[dict[str, Any]] = [
        {"name": "tcp-open", "kind": "tcp", "address": "127.0.0.1", "port": listeners[0]},
        {"name": "tcp-closed", "kind": "tcp", "address": "127.0.0.1", "port": free_port()},
        {"name": "web-ok", "kind": "http", "url": f"{base}/ok", "role": "county-dc"},
        {"name": "web-error", "kind": "http", "url": f"{base}/error"},
        {"name": "web-error-expected", "kind": "http", "url": f"{base}/error",
         "expect_status": [500]},
        {"name": "dns-ok", "kind": "dns", "server": "127.0.0.1", "server_port": dns_port,
         "query": KNOWN_NAME},
        {"name": "dns-nx", "kind": "dns", "server": "127.0.0.1", "server_port": dns_port,
         "query": "missing.outpost.test"},
        {"name": "dns-closed", "kind": "dns", "server": "127.0.0.1", "server_port": free_port(),
         "query": KNOWN_NAME},
        {"name": "ping-lo", "kind": "icmp", "address": "127.0.0.1", "role": "gateway"},
    ]  # fmt: skip
    # Three slow ones: together they would take 3 s one after the other.
    targets += [
        {"name": f"web-slow-{i}", "kind": "http", "url": f"{base}/slow", "timeout_seconds": 1.0}
        for i in range(3)
    ]
    source = ProbesSource(_config(targets, timeout_seconds=2.0))
    started = time.perf_counter()
    with caplog.at_level(logging.DEBUG, logger="agent.sources.probes"):
        samples = source.collect(time.time()).samples
    elapsed = time.perf_counter() - started

    assert 0.9 < elapsed < 1.9, elapsed  # about the largest timeout, not the sum
    ok = _values(samples, "outpost_probe_success")
    duration = _values(samples, "outpost_probe_duration_seconds")
    assert set(ok) == {t["name"] for t in targets}

    assert ok["tcp-open"] == 1.0 and ok["tcp-closed"] == 0.0
    loss = _values(samples, "outpost_probe_loss_ratio")
    assert (loss["tcp-open"], loss["tcp-closed"]) == (0.0, 1.0)
    assert 0 < _values(samples, "outpost_probe_rtt_avg_seconds")["tcp-open"] < 0.5

    status = _values(samples, "outpost_probe_http_status_code")
    assert (ok["web-ok"], status["web-ok"]) == (1.0, 200.0)
    assert (ok["web-error"], status["web-error"]) == (0.0, 500.0)
    assert ok["web-error-expected"] == 1.0
    assert 0 < _values(samples, "outpost_probe_http_ttfb_seconds")["web-ok"] < duration["web-ok"]
    for i in range(3):
        name = f"web-slow-{i}"
        assert ok[name] == 0.0 and 0.9 < duration[name] < 1.5
        assert name not in status

    answers = _values(samples, "outpost_probe_dns_answers")
    assert (ok["dns-ok"], answers["dns-ok"]) == (1.0, 1.0)
    assert (ok["dns-nx"], answers["dns-nx"]) == (0.0, 0.0)
    assert ok["dns-closed"] == 0.0 and "dns-closed" not in answers

    try:
        IcmpSocket.open().sock.close()
    except IcmpPermissionError:
        assert ok["ping-lo"] == 0.0
        assert any("net.ipv4.ping_group_range" in r.getMessage() for r in caplog.records)
    else:
        assert ok["ping-lo"] == 1.0 and loss["ping-lo"] == 0.0
        rtt = _values(samples, "outpost_probe_rtt_max_seconds")["ping-lo"]
        assert 0 < rtt < 0.5
        assert "ping-lo" in _values(samples, "outpost_probe_jitter_seconds")

    roles = {s.labels["target"]: s.labels["role"] for s in samples if s.labels}
    assert [roles[t] for t in ("web-ok", "ping-lo", "tcp-open")] == ["county-dc", "gateway", "none"]
    totals = {s.name: s.value for s in samples if not s.labels}
    failed = sum(1 for value in ok.values() if value == 0.0)
    assert totals == {"outpost_probes_targets": 12.0, "outpost_probes_failed": float(failed)}
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "tcp-closed (tcp) failed" in reasons and "refused" in reasons
    assert "timeout" in reasons


def test_https_certificate_days_left(
    tls_web: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert = tls_web
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test's certificate
    url = f"https://127.0.0.1:{port}/ok"
    source = ProbesSource(
        _config(
            [
                {"name": "verified", "kind": "http", "url": url},
                {"name": "unverified", "kind": "http", "url": url, "verify_tls": False},
            ]
        )
    )
    samples = source.collect(time.time()).samples
    assert _values(samples, "outpost_probe_success") == {"verified": 1.0, "unverified": 1.0}
    days = _values(samples, "outpost_probe_tls_cert_days_left")
    assert list(days) == ["verified"]  # no verified certificate, no date
    assert 29 < days["verified"] <= 30


def test_https_untrusted_certificate_fails(tls_web: tuple[int, Path]) -> None:
    port, _ = tls_web
    url = f"https://127.0.0.1:{port}/ok"
    source = ProbesSource(_config([{"name": "web", "kind": "http", "url": url}]))
    samples = source.collect(time.time()).samples
    assert _values(samples, "outpost_probe_success") == {"web": 0.0}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_thousand_tcp_targets_in_one_cycle(listeners: list[int]) -> None:
    closed = [free_port() for _ in range(10)]
    targets = []
    for i in range(1000):
        port = listeners[i % len(listeners)] if i % 2 == 0 else closed[i % len(closed)]
        targets.append({"name": f"t{i:04d}", "kind": "tcp", "address": "127.0.0.1", "port": port})
    concurrency = 128
    source = ProbesSource(_config(targets, concurrency=concurrency))

    baseline, peak, done = _open_fds(), 0, threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _open_fds())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        samples = source.collect(time.time()).samples
    finally:
        done.set()
        watcher.join(5)
    elapsed = time.perf_counter() - started

    assert elapsed < 5, elapsed
    ok = _values(samples, "outpost_probe_success")
    assert len(ok) == 1000
    assert sum(ok.values()) == 500
    assert all(ok[f"t{i:04d}"] == (1.0 if i % 2 == 0 else 0.0) for i in range(1000))
    totals = {s.name: s.value for s in samples if not s.labels}
    assert totals == {"outpost_probes_targets": 1000.0, "outpost_probes_failed": 500.0}
    assert peak - baseline <= concurrency + 16, (baseline, peak)
