"""collector/remote_write.py against real endpoints: Debian's Prometheus with its remote-write
receiver and an out-of-order window takes the samples of a simulated outage (30 to 60 minutes
ago) into series it also scrapes now, and answers queries for them with their exact values; a
port nobody listens on makes the forwarder retry without blocking ``offer`` and keep at most its
queue bound; a loopback HTTP server that answers 503 or 400 shows what is retried and what is
dropped."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import yaml
from harness import Procs, free_port, wait_for
from prometheus import Prometheus, available
from reliability import record

from collector.remote_write import ForwarderStats, LateSampleForwarder, RemoteWriteConfig
from outpost.wire import Sample

pytestmark = [pytest.mark.integration]

OUTAGE_MINUTES = range(60, 29, -1)  # one batch a minute, from 60 to 30 minutes ago
HOSTS = ("h1", "h2")


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET: a fixed exposition (the scrape target); POST: the next scripted status."""

    def do_GET(self) -> None:
        body = self.server.exposition.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        with server.lock:  # type: ignore[attr-defined]
            script: list[int] = server.script  # type: ignore[attr-defined]
            status = script.pop(0) if script else 200
            server.posts.append((status, dict(self.headers)))  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class LoopbackServer(http.server.ThreadingHTTPServer):
    def __init__(self, exposition: str = "", script: list[int] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.exposition = exposition
        self.script = list(script or [])
        self.posts: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def serve() -> Iterator[list[LoopbackServer]]:
    servers: list[LoopbackServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def _start(servers: list[LoopbackServer], server: LoopbackServer) -> LoopbackServer:
    servers.append(server)
    threading.Thread(target=server.serve_forever, name="loopback-http", daemon=True).start()
    return server


class RemoteWritePrometheus(Prometheus):
    """Prometheus with its remote-write receiver on and a 2 h out-of-order window."""

    def __init__(self, procs: Procs, root: Path, targets: list[str]) -> None:
        super().__init__(procs, root, targets, rule_files=[])
        self.config["storage"] = {"tsdb": {"out_of_order_time_window": "2h"}}
        self.args = ["--web.enable-remote-write-receiver"]


def _config(url: str, **kw: object) -> RemoteWriteConfig:
    base = {"url": url, "retry_min_seconds": 0.05, "retry_max_seconds": 0.2, "timeout_seconds": 5}
    return msgspec.convert({**base, **kw}, RemoteWriteConfig)


def _value(host: str, minute: int) -> float:
    return 1000.0 * (1 + HOSTS.index(host)) + minute + 0.25


@pytest.mark.skipif(not available(), reason="no prometheus (scripts/install --test)")
def test_outage_samples_fill_the_scraped_series(
    procs: Procs, tmp_path: Path, serve: list[LoopbackServer]
) -> None:
    exposition = "".join(
        f'node_load1{{site="s1",host="{h}"}} 0.5\nnode_network_receive_bytes_total'
        f'{{site="s1",host="{h}",device="eth0"}} 123\n'
        for h in HOSTS
    )
    target = _start(serve, LoopbackServer(exposition))
    prom = RemoteWritePrometheus(procs, tmp_path / "prometheus", [target.address]).start()
    wait_for("the target up", prom.targets_up, 30)
    wait_for("recent samples", lambda: len(prom.query("node_load1")) == 2, 30)

    labels = {"job": "outpost", "instance": target.address}
    fwd = LateSampleForwarder(
        _config(f"{prom.base}/api/v1/write", labels=labels, max_samples_per_request=25)
    ).start()
    now = time.time()
    base_ms = int(now // 60 * 60 * 1000)  # whole minutes, so query steps land on samples
    try:
        # A batch that is not late is left to the scrape.
        assert fwd.offer("s1", "h1", int(now * 1000), [Sample("node_load1", 9.0)], now, 15) == 0
        queued = 0
        for minute in OUTAGE_MINUTES:
            ts = base_ms - minute * 60_000
            for host in HOSTS:
                samples = [
                    Sample("node_load1", _value(host, minute)),
                    Sample(
                        "node_network_receive_bytes_total",
                        _value(host, minute) * 1e6,
                        labels={"device": "eth0"},
                    ),
                ]
                queued += fwd.offer("s1", host, ts, samples, now, 15)
        sent = len(OUTAGE_MINUTES) * len(HOSTS) * 2
        assert queued == sent
        wait_for("everything sent", lambda: fwd.stats().sent == sent, 60)
    finally:
        fwd.stop()
    assert fwd.stats() == ForwarderStats(sent=sent)

    start = (base_ms - 60 * 60_000) / 1000
    end = (base_ms - 30 * 60_000) / 1000
    for host in HOSTS:
        for name, scale in (("node_load1", 1.0), ("node_network_receive_bytes_total", 1e6)):
            expr = f'{name}{{site="s1",host="{host}",job="outpost"}}'
            data = prom.api("query_range", query=expr, start=str(start), end=str(end), step="60")
            assert len(data["result"]) == 1, data  # the scraped series itself, no second one
            assert data["result"][0]["metric"]["instance"] == target.address
            got = [(float(t), float(v)) for t, v in data["result"][0]["values"]]
            want = [(start + i * 60, _value(host, 60 - i) * scale) for i in range(31)]
            assert got == want
        # And the series still has its scraped present.
        rows = prom.query(f'node_load1{{host="{host}"}}')
        assert [float(r["value"][1]) for r in rows] == [0.5]
    record("remote-write-outage-backfill", sent=sent, arrived=sent, duplicates=0, lost=0)


def test_endpoint_down_retries_without_blocking_and_keeps_the_queue_bound() -> None:
    port = free_port()  # nobody listens: connection refused
    fwd = LateSampleForwarder(
        _config(
            f"http://127.0.0.1:{port}/api/v1/write", queue_samples=50, max_samples_per_request=20
        )
    )
    now = time.time()
    old = int((now - 3600) * 1000)

    def offer(first: int, n: int) -> int:
        batch = [Sample("m", float(i), labels={"i": str(i)}) for i in range(first, first + n)]
        return fwd.offer("s1", "h1", old, batch, now)

    try:
        assert offer(0, 80) == 50  # before the worker runs: 30 do not fit
        fwd.start()
        wait_for("3 retries", lambda: fwd.stats().retries >= 3, 30)
        # The worker holds one request of 20 and retries it; 30 wait; room for 20 more.
        assert fwd.stats() == ForwarderStats(dropped=30, retries=fwd.stats().retries, queued=30)
        assert offer(80, 30) == 20
        assert fwd.stats().queued == 50
    finally:
        fwd.stop()
    stats = fwd.stats()
    assert (stats.sent, stats.failed, stats.dropped, stats.queued) == (0, 0, 110, 0)
    record(
        "remote-write-endpoint-down",
        sent=110,
        arrived=0,
        duplicates=0,
        lost=0,
        dropped=110,
        note=f"queue bound 50: 40 refused at offer, 70 dropped at stop; {stats.retries} retries",
    )


def test_5xx_is_retried_and_400_is_dropped(serve: list[LoopbackServer]) -> None:
    server = _start(serve, LoopbackServer(script=[503, 502, 200, 400]))
    fwd = LateSampleForwarder(
        _config(f"http://{server.address}/api/v1/write", max_samples_per_request=5)
    ).start()
    now = time.time()
    old = int((now - 3600) * 1000)
    try:
        fwd.offer(
            "s1", "h1", old, [Sample("m", float(i), labels={"i": str(i)}) for i in range(5)], now
        )
        wait_for("first request sent", lambda: fwd.stats().sent == 5, 30)
        fwd.offer("s1", "h1", old, [Sample("n", 1.0), Sample("n2", 2.0)], now)
        wait_for("second request refused", lambda: fwd.stats().failed == 2, 30)
    finally:
        fwd.stop()
    assert fwd.stats() == ForwarderStats(sent=5, failed=2, retries=2)
    assert [status for status, _ in server.posts] == [503, 502, 200, 400]
    headers = server.posts[0][1]
    assert headers["Content-Encoding"] == "snappy"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    record(
        "remote-write-5xx-400",
        sent=7,
        arrived=5,
        duplicates=0,
        lost=0,
        dropped=2,
        note="503 and 502 retried; 400 dropped without retry",
    )


@pytest.mark.skipif(not available(), reason="no prometheus (scripts/install --test)")
def test_a_collectors_late_batches_fill_the_gap_in_prometheus(procs: Procs, tmp_path: Path) -> None:
    """End to end: an agent's backlog after an outage (batches collected 60 to 30 minutes ago)
    reaches a real collector through mosquitto after its current batch; the collector forwards
    the late samples, and Prometheus, which scrapes the collector, answers for the outage."""
    import paho.mqtt.client as mqtt
    from harness import Collector, Mosquitto

    from outpost import wire

    broker = Mosquitto(procs, tmp_path / "broker").start()
    port = free_port()
    prom = RemoteWritePrometheus(procs, tmp_path / "prometheus", [f"127.0.0.1:{port}"])
    config = tmp_path / "collector.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "remote_write": {
                    "url": f"{prom.base}/api/v1/write",
                    "retry_min_seconds": 0.1,
                    "labels": {"job": "outpost", "instance": f"127.0.0.1:{port}"},
                }
            }
        )
    )
    collector = Collector(procs, broker, tmp_path, "--config", str(config))
    collector.port = port
    collector.start()
    prom.start()
    now = time.time()
    base_ms = int(now // 60 * 60 * 1000)
    minutes = list(OUTAGE_MINUTES)
    current = len(minutes) + 1

    def batch(seq: int, ts: int, value: float) -> bytes:
        return wire.encode(
            wire.Batch(
                v=1, site="s1", host="h1", agent_id="agent-1", boot_id="b", seq=seq, ts=ts,
                outbox_low=1, interval=15.0, samples=[wire.Sample("outpost_load1", value)],
            )
        )  # fmt: skip

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        topic = wire.topic("outpost", "s1", "h1", wire.METRICS)
        # Current data first, then the backlog in order, as an agent sends them.
        infos = [pub.publish(topic, batch(current, int(now * 1000), 0.5), qos=1)]
        for seq, minute in enumerate(minutes, start=1):
            infos.append(pub.publish(topic, batch(seq, base_ms - minute * 60_000, minute), qos=1))
        for info in infos:
            info.wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()
    h = wait_for(
        "every seq applied",
        lambda: (x := collector.hosts().get(("s1", "h1"))) and x["settled_upto"] == current and x,
        30,
    )
    assert h["lost"] == 0
    sent = len(minutes)
    wait_for(
        "the late samples sent",
        lambda: collector.value("outpost_remote_write_samples_total", result="sent") == sent,
        60,
    )
    wait_for("the collector scraped", prom.targets_up, 30)
    start = (base_ms - 60 * 60_000) / 1000
    end = (base_ms - 30 * 60_000) / 1000
    expr = 'outpost_load1{site="s1",host="h1"}'

    def outage() -> list[tuple[float, float]] | None:
        data = prom.api("query_range", query=expr, start=str(start), end=str(end), step="60")
        if len(data["result"]) != 1:
            return None
        return [(float(t), float(v)) for t, v in data["result"][0]["values"]]

    got = wait_for("the outage in Prometheus", outage, 30)
    assert got == [(start + i * 60, float(60 - i)) for i in range(31)]
    assert collector.value("outpost_remote_write_samples_total", result="dropped") == 0
    record(
        "remote-write-collector-backfill", sent=sent, arrived=len(got), duplicates=0, lost=0,
        note="a backlog of 31 one-minute batches (60 to 30 min old) through mosquitto and a "
        "real collector; Prometheus answers for every minute of the outage",
    )  # fmt: skip
