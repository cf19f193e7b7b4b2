"""Collector ingest rate through a real mosquitto at QoS 1, against a raw paho subscriber.

Both consumers are measured the same way: N agent batches wait at the broker in the
consumer's persistent session, then the consumer connects and the clock runs until it has
taken all N. The anchor is a paho subscriber that only counts messages (the ceiling for any
Python consumer); the collector validates, dedupes, updates state and publishes acks.

    python bench/ingest.py --messages 50000 --agents 500
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, mosquitto_conf, rss_mb, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outpost import wire


def client(client_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
    c.max_inflight_messages_set(1000)
    return c


def connect(c: mqtt.Client, port: int) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)


def register_session(port: int, client_id: str) -> None:
    """Create the consumer's persistent session and subscription, then leave."""
    c = client(client_id)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    connect(c, port)
    c.loop_start()
    c.subscribe([(f"outpost/v1/+/+/{k}", 1) for k in ("status", "metrics", "events")])
    done.wait(5)
    c.disconnect()
    c.loop_stop()


def batches(n: int, agents: int) -> list[tuple[str, bytes]]:
    out = []
    now = int(time.time() * 1000)
    rx = "outpost_network_receive_bytes_total"
    samples = [wire.Sample(rx, float(i), {"interface": f"eth{i}"}) for i in range(20)]
    samples += [wire.Sample(f"outpost_load{i}", 0.5) for i in (1, 5, 15)]
    for i in range(n):
        a = i % agents
        seq = i // agents + 1
        site, host = f"site-{a // 10}", f"host-{a}"
        b = wire.Batch(v=1, site=site, host=host, agent_id=f"agent-{a}", boot_id="b", seq=seq,
                       ts=now + seq, outbox_low=seq, interval=10.0, samples=samples)  # fmt: skip
        out.append((wire.topic("outpost", site, host, "metrics"), wire.encode(b)))
    return out


def preload(port: int, msgs: list[tuple[str, bytes]], progress: Progress) -> None:
    task = progress.add_task("publishing", total=len(msgs))
    c = client("bench-publisher")
    acked = [0]
    done = threading.Event()

    def on_publish(*args: object) -> None:
        acked[0] += 1
        if acked[0] == len(msgs):
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    for i, (topic, payload) in enumerate(msgs):
        c.publish(topic, payload, qos=1)
        if i % 1000 == 0:
            while i - acked[0] > 5000:
                time.sleep(0.001)
            progress.update(task, completed=acked[0])
    done.wait(120)
    progress.update(task, completed=acked[0])
    c.disconnect()
    c.loop_stop()


def anchor_rate(port: int, n: int) -> float:
    c = client("bench-anchor")
    got = [0]
    first = [0.0]
    done = threading.Event()

    def on_message(*args: object) -> None:
        if got[0] == 0:
            first[0] = time.perf_counter()
        got[0] += 1
        if got[0] >= n:
            done.set()

    c.on_message = on_message
    t0 = time.perf_counter()
    connect(c, port)
    c.loop_start()
    if not done.wait(300):
        raise SystemExit(f"anchor got only {got[0]} of {n}")
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return n / elapsed


def collector_rate(port: int, n: int, state: Path) -> tuple[float, float]:
    hport = free_port()
    argv = [sys.executable, "-m", "outpost", "collector", "run", "--broker",
            f"mqtt://127.0.0.1:{port}", "--listen", f"127.0.0.1:{hport}",
            "--state-dir", str(state)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The clock starts at the first message taken, so process start-up is not counted.
    first: tuple[float, float] | None = None
    try:
        while True:
            try:
                url = f"http://127.0.0.1:{hport}/api/v1/collector"
                with urllib.request.urlopen(url, timeout=5) as r:
                    accepted = json.load(r)["messages"]["accepted"]
                if first is None and accepted > 0:
                    first = (time.perf_counter(), accepted)
                if accepted >= n:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 300:
                raise SystemExit("collector too slow")
            time.sleep(0.05)
        assert first is not None
        elapsed = time.perf_counter() - first[0]
        rss = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    return (n - first[1]) / elapsed, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--agents", type=int, default=500)
    args = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "m.conf"
        mosquitto_conf(conf, port, "max_queued_messages 0\nmax_queued_bytes 0\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            msgs = batches(args.messages, args.agents)
            size = sum(len(p) for _, p in msgs) / len(msgs)
            register_session(port, "bench-anchor")
            register_session(port, "outpost-collector")
            with Progress(transient=True) as progress:
                preload(port, msgs, progress)
            anchor = anchor_rate(port, args.messages)
            rate, rss = collector_rate(port, args.messages, Path(tmp) / "collector")
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(20)
    result = {
        "messages": args.messages,
        "agents": args.agents,
        "bytes_per_message": round(size),
        "anchor_raw_paho_msgs_per_s": round(anchor),
        "collector_msgs_per_s": round(rate),
        "ratio_collector_to_anchor": round(rate / anchor, 3),
        "collector_rss_mb": round(rss, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
