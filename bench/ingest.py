"""Collector ingest rate through a real mosquitto at QoS 1, against a raw paho subscriber.

Both consumers are measured the same way: N agent batches wait at the broker in the
consumer's persistent session, then the consumer connects and the clock runs until it has
taken all N. The anchor is a paho subscriber that only counts messages (the ceiling for any
Python consumer); the collector validates, dedupes, updates state and publishes acks.

    python bench/ingest.py --messages 50000 --agents 500
    python bench/ingest.py --smoke          # 600 messages, for a quick check
    python bench/ingest.py --runs 3         # the anchor and the collector side by side, 3 times
    python bench/ingest.py --profile out.svg   # the collector under py-spy (if installed)
    python bench/ingest.py --bulk-anchor    # also: a counting subscriber on collector.mqtt's
                                            # client (the ceiling of the collector's paho side)

The collector normally holds each sender to 50 messages a second (burst 2000); the bench's
agents send faster than that, so its collector runs with ``limits: {sender_rate_per_second:
0}`` (no limit) from a config file, and says so in its output.
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

from common import free_port, mosquitto_conf, row, rss_mb, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.mqtt import BulkClient
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


def anchor_rate(port: int, n: int, client_id: str = "bench-anchor") -> float:
    c = client(client_id)
    if client_id == "bench-bulk-anchor":  # the collector's client class, only counting
        c = BulkClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                       protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        c.max_inflight_messages_set(1000)
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


COLLECTOR_CONFIG = "limits:\n  sender_rate_per_second: 0\n"


def collector_rate(port: int, n: int, state: Path, profile: str = "") -> tuple[float, float]:
    hport = free_port()
    state.mkdir(parents=True, exist_ok=True)
    config = state / "collector.yaml"
    config.write_text(COLLECTOR_CONFIG)
    argv = [sys.executable, "-m", "outpost", "collector", "run", "--config", str(config),
            "--broker", f"mqtt://127.0.0.1:{port}", "--listen", f"127.0.0.1:{hport}",
            "--state-dir", str(state)]  # fmt: skip
    if profile:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        fmt = ["-f", "raw"] if profile.endswith(".txt") else []  # collapsed stacks
        argv = [py_spy, "record", "-o", profile, "-r", "200", "--threads", *fmt, "--", *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The clock starts at the first message taken, so process start-up is not counted. When
    # the first answer already shows them all (a small run), it starts at the last answer that
    # showed none (or at the start): a lower bound on the rate.
    first: tuple[float, float] | None = None
    none_at = t0
    try:
        while True:
            try:
                url = f"http://127.0.0.1:{hport}/api/v1/collector"
                with urllib.request.urlopen(url, timeout=5) as r:
                    accepted = json.load(r)["messages"]["accepted"]
                if accepted == 0:
                    none_at = time.perf_counter()
                elif first is None:
                    first = (time.perf_counter(), accepted) if accepted < n else (none_at, 0)
                if accepted >= n:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 300:
                raise SystemExit("collector too slow")
            time.sleep(0.02)
        assert first is not None
        elapsed = max(time.perf_counter() - first[0], 1e-3)
        rss = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT if profile else signal.SIGTERM)
        proc.wait(60)
    return (n - first[1]) / elapsed, rss


def one_run(messages: int, agents: int, profile: str = "", bulk: bool = False) -> dict[str, float]:
    """Preload the broker for both consumers, then measure the anchor and the collector."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "m.conf"
        mosquitto_conf(conf, port, "max_queued_messages 0\nmax_queued_bytes 0\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            msgs = batches(messages, agents)
            size = sum(len(p) for _, p in msgs) / len(msgs)
            register_session(port, "bench-anchor")
            register_session(port, "outpost-collector")
            if bulk:
                register_session(port, "bench-bulk-anchor")
            with Progress(transient=True) as progress:
                preload(port, msgs, progress)
            anchor = anchor_rate(port, messages)
            rate, rss = collector_rate(port, messages, Path(tmp) / "collector", profile)
            bulk_rate = anchor_rate(port, messages, "bench-bulk-anchor") if bulk else 0.0
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(20)
    return {"size": size, "anchor": anchor, "rate": rate, "rss": rss, "bulk": bulk_rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--runs", type=int, default=1, help="measure both this many times")
    ap.add_argument("--smoke", action="store_true", help="600 messages from 20 agents, one run")
    ap.add_argument("--profile", default="", help="record the collector with py-spy to this file")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument(
        "--bulk-anchor",
        action="store_true",
        help="also measure a counting subscriber on the collector's client class",
    )
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the broker and collector started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.messages, args.agents, args.runs = 600, 20, 1
    runs = [
        one_run(args.messages, args.agents, args.profile, args.bulk_anchor)
        for _ in range(max(1, args.runs))
    ]
    ratios = sorted(r["rate"] / r["anchor"] for r in runs)
    rows = [
        {
            "anchor_raw_paho_msgs_per_s": round(r["anchor"]),
            "collector_msgs_per_s": round(r["rate"]),
            "ratio_collector_to_anchor": round(r["rate"] / r["anchor"], 3),
            "collector_rss_mb": round(r["rss"], 1),
            **({"bulk_anchor_msgs_per_s": round(r["bulk"])} if args.bulk_anchor else {}),
        }
        for r in runs
    ]
    result = {
        "messages": args.messages,
        "agents": args.agents,
        "bytes_per_message": round(runs[0]["size"]),
        "sender_rate_limit": "off (limits: {sender_rate_per_second: 0})",
        "runs": rows,
        "median_ratio_collector_to_anchor": round(ratios[len(ratios) // 2], 3),
    }
    rate = sorted(r["rate"] for r in runs)[len(runs) // 2]
    anchor = sorted(r["anchor"] for r in runs)[len(runs) // 2]
    result["rows"] = [
        row(
            "collector ingest, QoS 1, validated, deduped, acked",
            rate,
            "msg/s",
            anchor_name="raw paho subscriber (counts only)",
            anchor=anchor,
            ratio=ratios[len(ratios) // 2],
            target="≥ 25,000 msg/s",
            met=None if args.smoke else rate >= 25_000,
        )
    ]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"ingest: {args.messages} agent batches of {result['bytes_per_message']} bytes from "
          f"{args.agents} agents, QoS 1; collector sender rate limit off")  # fmt: skip
    print(f"{'run':>3}  {'anchor msg/s':>12}  {'collector msg/s':>15}  {'ratio':>6}  {'rss MB':>6}")
    for i, r in enumerate(rows, 1):
        print(f"{i:>3}  {r['anchor_raw_paho_msgs_per_s']:>12}  {r['collector_msgs_per_s']:>15}  "
              f"{r['ratio_collector_to_anchor']:>6.3f}  {r['collector_rss_mb']:>6.1f}")  # fmt: skip
    print(f"median ratio collector/anchor: {result['median_ratio_collector_to_anchor']:.3f}")
    if args.bulk_anchor:
        bulk = ", ".join(str(r["bulk_anchor_msgs_per_s"]) for r in rows)
        print(f"counting subscriber on the collector's client class, msg/s: {bulk}")


if __name__ == "__main__":
    main()
