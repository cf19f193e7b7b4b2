"""Two collectors sharded by site on one broker, against one collector taking the whole fleet.

The same N agent batches wait at the broker, once for one collector that owns every site and
once for two collectors that own half of the sites each (``shard.sites``); the clock runs from
the first message taken to the last. On one machine the two shards share its cores with the
broker, so the figure says what sharding costs or gains here; on two machines each shard has
a machine of its own.

    python bench/shards.py --messages 40000 --agents 500
    python bench/shards.py --smoke
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

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, mosquitto_conf, row, wait_port
from ingest import batches, client, connect, preload


def register(port: int, client_id: str, sites: list[str] | None) -> None:
    """The consumer's persistent session, subscribed as the collector (or its shard) will be."""
    c = client(client_id)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    connect(c, port)
    c.loop_start()
    kinds = ("status", "metrics", "events")
    c.subscribe([(f"outpost/v1/{s}/+/{k}", 1) for s in (sites or ["+"]) for k in kinds])
    done.wait(5)
    c.disconnect()
    c.loop_stop()


def start(
    port: int, root: Path, name: str, sites: list[str] | None
) -> tuple[subprocess.Popen[bytes], int]:
    root.mkdir(parents=True)
    config = root / "collector.yaml"
    text = "limits:\n  sender_rate_per_second: 0\n"
    if sites:
        text += f"shard:\n  name: {name}\n  sites: [{', '.join(sites)}]\n"
    config.write_text(text)
    hport = free_port()
    argv = [sys.executable, "-m", "outpost", "collector", "run", "--config", str(config),
            "--broker", f"mqtt://127.0.0.1:{port}", "--listen", f"127.0.0.1:{hport}",
            "--state-dir", str(root)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), hport


def accepted(hport: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{hport}/api/v1/collector", timeout=5) as r:
            return int(json.load(r)["messages"]["accepted"])
    except OSError:
        return None


def measure(port: int, root: Path, shards: list[list[str] | None], n: int) -> float:
    """Start one collector per shard at once; messages per second taken by all of them."""
    procs = [start(port, root / f"c{i}", f"shard-{i}", s) for i, s in enumerate(shards)]
    t0 = time.perf_counter()
    first: float | None = None
    try:
        while True:
            counts = [accepted(h) for _, h in procs]
            total = sum(c or 0 for c in counts)
            if first is None and total > 0:
                first = time.perf_counter()
            if total >= n:
                break
            if time.perf_counter() - t0 > 300:
                raise SystemExit(f"collectors took only {total} of {n}")
            time.sleep(0.02)
        assert first is not None
        return n / max(time.perf_counter() - first, 1e-3)
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            proc.wait(60)


def one_run(messages: int, agents: int) -> dict[str, float]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    msgs = batches(messages, agents)
    sites = sorted({topic.split("/")[2] for topic, _ in msgs})
    halves = [sites[0::2], sites[1::2]]
    out: dict[str, float] = {}
    for label, shards in (("one", [None]), ("two", halves)):
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            conf = Path(tmp) / "m.conf"
            mosquitto_conf(conf, port, "max_queued_messages 0\nmax_queued_bytes 0\n")
            broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
            try:
                wait_port(port)
                for i, s in enumerate(shards):
                    register(port, f"outpost-collector-shard-{i}" if s else "outpost-collector", s)
                with Progress(transient=True) as progress:
                    preload(port, msgs, progress)
                out[label] = measure(port, Path(tmp), shards, messages)
            finally:
                broker.send_signal(signal.SIGTERM)
                broker.wait(20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--smoke", action="store_true", help="600 messages from 20 agents")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args()
    if args.smoke:
        args.messages, args.agents = 600, 20
    r = one_run(args.messages, args.agents)
    result = {
        "messages": args.messages,
        "one_collector_msg_per_s": round(r["one"]),
        "two_shards_msg_per_s": round(r["two"]),
        "ratio_two_to_one": round(r["two"] / r["one"], 3),
    }
    result["rows"] = [
        row(
            "two shards on one broker, total",
            r["two"],
            "msg/s",
            anchor_name="one collector, every site",
            anchor=r["one"],
            target="report the total rate",
            met=None,
        )
    ]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'what':<34}{'msg/s':>10}")
    print(f"{'one collector, every site':<34}{result['one_collector_msg_per_s']:>10}")
    print(f"{'two shards, half the sites each':<34}{result['two_shards_msg_per_s']:>10}")
    print(f"{'ratio (two / one)':<34}{result['ratio_two_to_one']:>10}")


if __name__ == "__main__":
    main()
