"""Outpost's collector beside a peer: mqtt-exporter, a generic MQTT-to-Prometheus exporter from
PyPI, taking the same stream of agent batches through the same mosquitto.

    python bench/peer.py                    # 30,000 batches from 500 agents, 3 runs
    python bench/peer.py --messages 50000 --runs 1
    python bench/peer.py --smoke            # 600 batches from 20 agents, one run
    python bench/peer.py --json             # {"rows": [...], ...details} for bench/run.py

mqtt-exporter runs from its own venv, build/peer-venv (``scripts/install --test`` creates it with
a pinned version; ``--peer-venv`` points elsewhere): it pins paho-mqtt and prometheus-client to
versions other than Outpost's, so it cannot share Outpost's venv.

The stream is bench/ingest.py's: N batches of 23 samples (20 with an ``interface`` label) from
``--agents`` agents, each on its agent's ``outpost/v1/<site>/<host>/metrics`` topic, published
at QoS 1. Both consumers are measured the way bench/ingest.py measures the collector: all N
wait at the broker for the consumer, then the consumer takes them, and its clock runs from the
first message it is seen to have taken until it has taken all N (neither start-up nor
publishing is counted). They run one after the other, never together, on one broker loaded
once. The collector's count is read every 20 ms, as bench/ingest.py does; mqtt-exporter's every
100 ms: one reading makes it render its counter's 500 series (about 4 ms of its one thread), so
at 20 ms the readings took some 10% of its rate, at 100 ms it is at its plateau (the same as at
500 ms), and its drain of 30,000 (some 8 s) is timed to about 1%.

- The collector: its persistent session (QoS 1 subscriptions to outpost/v1/+/+/status,
  metrics and events) is made before the batches are published, so the broker queues them
  there; then ``python -m outpost collector run`` starts. Its count is ``messages.accepted``
  of /api/v1/collector. Its per-sender rate limit is off (``limits: {sender_rate_per_second:
  0}``): the bench's agents send far faster than the default 50 msg/s each.
- mqtt-exporter connects with a clean session and subscribes at QoS 0, and neither can be
  configured, so the broker keeps nothing for it while it is away. So it is started first,
  subscribed to the same three filters (MQTT_TOPIC) and to a probe topic, seen to take a
  probe, and paused with SIGSTOP; the batches are then published (the broker queues them on
  its live connection: the bench's mosquitto has no queue limit) and it is resumed with
  SIGCONT when its turn comes. Its count is the sum of its ``mqtt_message_total`` counter
  (one series per topic; the probe's left out), read from
  ``/metrics?name[]=mqtt_message_total`` so a poll does not render its other series.

What differs beyond the software: mqtt-exporter takes QoS 0 (it sends no PUBACK), and it does
not validate, dedupe, keep per-host state or ack the agents. It flattens each batch's JSON:
numbers become gauges named by their path (``mqtt_samples_0_value``, ``mqtt_seq``, ...; the
list index stands for the sample, whose name and labels, being strings, are dropped) with a
``topic`` label per agent. The output reports how many series and metric names it made and
how many error lines it logged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, mosquitto_conf, row, rss_mb, stop, wait_port
from ingest import COLLECTOR_CONFIG, batches, client, preload, register_session

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / "build" / "peer-venv"
FILTERS = [f"outpost/v1/+/+/{kind}" for kind in ("status", "metrics", "events")]
PROBE_TOPIC = "bench/peer/probe"
PROBE_LABEL = PROBE_TOPIC.replace("/", "_")  # how mqtt-exporter names a topic in its labels
POLL = 0.02  # seconds between two readings of the collector's count, as in bench/ingest.py
PEER_POLL = 0.1  # and of mqtt-exporter's, which costs it more (see above)
STALL = 60.0  # seconds without progress before a consumer is declared stuck


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: bytes = r.read()
    return body


def peer_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d: m.version(d) for d in ('mqtt-exporter', 'paho-mqtt', "
        "'prometheus-client')}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"mqtt-exporter is not installed for {python}: {out.stderr.strip()}")
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


def exporter_counts(hport: int) -> dict[str, float]:
    """mqtt-exporter's ``mqtt_message_total`` by topic label."""
    text = get(f"http://127.0.0.1:{hport}/metrics?name%5B%5D=mqtt_message_total").decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("mqtt_message_total{"):
            labels, value = line.rsplit(" ", 1)
            topic = labels.split('topic="', 1)[1].split('"', 1)[0]
            counts[topic] = float(value)
    return counts


def exporter_taken(hport: int) -> int:
    return round(sum(v for k, v in exporter_counts(hport).items() if k != PROBE_LABEL))


def exporter_series(hport: int) -> tuple[int, int]:
    """How many series and metric names mqtt-exporter made from the batches (its own message
    counter and the probe's series left out)."""
    names: set[str] = set()
    series = 0
    for line in get(f"http://127.0.0.1:{hport}/metrics").decode().splitlines():
        if not line.startswith("mqtt_") or line.startswith("mqtt_message_"):
            continue
        if f'topic="{PROBE_LABEL}"' in line:
            continue
        names.add(line.split("{", 1)[0].split(" ", 1)[0])
        series += 1
    return series, len(names)


def start_exporter(
    python: Path, port: int, hport: int, log: Path, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """Start mqtt-exporter on the broker, wait until it takes a probe, then pause it."""
    env = {
        **os.environ,
        "MQTT_ADDRESS": "127.0.0.1",
        "MQTT_PORT": str(port),
        "MQTT_TOPIC": ",".join([*FILTERS, PROBE_TOPIC]),
        "MQTT_CLIENT_ID": "bench-peer",
        "MQTT_KEEPALIVE": "600",  # it stays paused while the batches are published
        "PROMETHEUS_ADDRESS": "127.0.0.1",
        "PROMETHEUS_PORT": str(hport),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "mqtt_exporter"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    procs.append(proc)
    probe = client("bench-peer-probe")
    probe.connect("127.0.0.1", port)
    probe.loop_start()
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"mqtt-exporter exited with {proc.returncode}: see {log}")
            if time.monotonic() > deadline:
                raise SystemExit("mqtt-exporter did not take a probe within 60 s")
            probe.publish(PROBE_TOPIC, b'{"probe": 1}', qos=1)
            time.sleep(0.1)
            try:
                if exporter_counts(hport).get(PROBE_LABEL):
                    break
            except OSError:
                pass
    finally:
        probe.disconnect()
        probe.loop_stop()
    if exporter_taken(hport) != 0:
        raise SystemExit("mqtt-exporter counted messages before the stream was published")
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def drain(
    count: Callable[[], int], n: int, interval: float, progress: Progress, what: str
) -> tuple[float, int]:
    """Poll a consumer's count until it reaches ``n``; its rate and the last count.

    The clock starts at the first reading that shows messages taken (those it shows are not
    counted), so process start-up is not measured. When the first such reading already shows
    all of them (a small run), it starts at the last reading that showed none: a lower bound
    on the rate. This is bench/ingest.py's rule.
    """
    task = progress.add_task(what, total=n)
    t0 = time.perf_counter()
    none_at, changed, last = t0, t0, -1
    first: tuple[float, int] | None = None
    while True:
        now = time.perf_counter()
        try:
            got = count()
        except OSError:
            got = -1
        if got == 0:
            none_at = now
        elif got > 0 and first is None:
            first = (now, got) if got < n else (none_at, 0)
        if got != last:
            changed, last = now, got
            progress.update(task, completed=max(got, 0))
        if got >= n:
            break
        if now - changed > STALL:
            raise SystemExit(f"{what}: stuck at {max(last, 0)} of {n} messages")
        time.sleep(interval)
    progress.remove_task(task)
    assert first is not None
    return (n - first[1]) / max(now - first[0], 1e-3), got


def collector_count(hport: int) -> int:
    body = json.loads(get(f"http://127.0.0.1:{hport}/api/v1/collector"))
    return int(body["messages"]["accepted"])


def one_run(
    messages: int, agents: int, peer_python: Path, progress: Progress, log: Path
) -> dict[str, Any]:
    """One broker, the stream published once for both consumers, then each drains it."""
    procs: list[subprocess.Popen[bytes]] = []
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            port = free_port()
            conf = mosquitto_conf(
                Path(tmp) / "m.conf", port, "max_queued_messages 0\nmax_queued_bytes 0\n"
            )
            procs.append(subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL))
            wait_port(port)
            msgs = batches(messages, agents)
            size = sum(len(p) for _, p in msgs) / len(msgs)
            register_session(port, "outpost-collector")
            ehport = free_port()
            exporter = start_exporter(peer_python, port, ehport, log, procs)
            preload(port, msgs, progress)

            os.kill(exporter.pid, signal.SIGCONT)
            peer_rate, _ = drain(
                lambda: exporter_taken(ehport), messages, PEER_POLL, progress, "mqtt-exporter"
            )
            peer_rss = rss_mb(exporter.pid)
            peer_took = exporter_taken(ehport)
            series, names = exporter_series(ehport)
            stop(exporter)

            chport = free_port()
            state = Path(tmp) / "collector"
            state.mkdir()
            (state / "collector.yaml").write_text(COLLECTOR_CONFIG)
            argv = [sys.executable, "-m", "outpost", "collector", "run",
                    "--config", str(state / "collector.yaml"),
                    "--broker", f"mqtt://127.0.0.1:{port}", "--listen", f"127.0.0.1:{chport}",
                    "--state-dir", str(state)]  # fmt: skip
            collector = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(collector)
            rate, _ = drain(lambda: collector_count(chport), messages, POLL, progress, "collector")
            rss = rss_mb(collector.pid)
            took = collector_count(chport)
            stop(collector)
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
                stop(proc)
    if (took, peer_took) != (messages, messages):
        raise SystemExit(
            f"of {messages} messages the collector took {took}, mqtt-exporter {peer_took}"
        )
    errors = sum(1 for line in log.read_text(errors="replace").splitlines() if "ERROR" in line)
    return {
        "size": size,
        "rate": rate,
        "took": took,
        "rss": rss,
        "peer_rate": peer_rate,
        "peer_took": peer_took,
        "peer_rss": peer_rss,
        "peer_series": series,
        "peer_names": names,
        "peer_errors": errors,
    }


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3, help="measure both this many times")
    ap.add_argument("--smoke", action="store_true", help="600 messages from 20 agents, one run")
    ap.add_argument("--peer-venv", type=Path, default=PEER_VENV, help="where mqtt-exporter is")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.messages, args.agents, args.runs = 600, 20, 1
    peer_python = args.peer_venv / "bin" / "python"
    if not peer_python.exists():
        raise SystemExit(
            f"no mqtt-exporter venv at {args.peer_venv}: `scripts/install --test` creates it"
        )
    versions = peer_versions(peer_python)
    runs = []
    with (
        tempfile.TemporaryDirectory() as logs,
        Progress(console=Console(stderr=True), transient=True) as progress,
    ):
        for i in range(max(1, args.runs)):
            log = Path(logs) / f"mqtt-exporter-{i}.log"
            runs.append(one_run(args.messages, args.agents, peer_python, progress, log))
    rows = [
        {
            "collector_msgs_per_s": round(r["rate"]),
            "mqtt_exporter_msgs_per_s": round(r["peer_rate"]),
            "ratio_collector_to_mqtt_exporter": round(r["rate"] / r["peer_rate"], 3),
            "collector_took": r["took"],
            "mqtt_exporter_took": r["peer_took"],
            "collector_rss_mb": round(r["rss"], 1),
            "mqtt_exporter_rss_mb": round(r["peer_rss"], 1),
        }
        for r in runs
    ]
    rate = median([r["rate"] for r in runs])
    peer = median([r["peer_rate"] for r in runs])
    last = runs[-1]
    result: dict[str, Any] = {
        "messages": args.messages,
        "agents": args.agents,
        "bytes_per_message": round(runs[0]["size"]),
        "sender_rate_limit": "off (limits: {sender_rate_per_second: 0})",
        "mqtt_exporter": {
            **versions,
            "subscription": "QoS 0, clean session; paused with SIGSTOP while the stream is "
            "published, resumed to drain it",
            "series_made": last["peer_series"],
            "metric_names_made": last["peer_names"],
            "error_lines_logged": last["peer_errors"],
        },
        "collector": {"subscription": "QoS 1, persistent session, queued before it starts"},
        "runs": rows,
    }
    result["rows"] = [
        row(
            "collector vs mqtt-exporter, same stream and broker",
            rate,
            "msg/s",
            anchor_name=f"mqtt-exporter {versions['mqtt-exporter']} (PyPI), QoS 0",
            anchor=peer,
            target="report both",
            met=None if args.smoke else True,
        )
    ]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    size, v = result["bytes_per_message"], versions
    print(f"peer: {args.messages} agent batches of {size} bytes from {args.agents} agents "
          "through one mosquitto; collector sender rate limit off")  # fmt: skip
    print(f"collector: QoS 1 persistent session; mqtt-exporter {v['mqtt-exporter']} (paho-mqtt "
          f"{v['paho-mqtt']}): QoS 0, clean session, paused then resumed")  # fmt: skip
    print(f"{'run':>3}  {'collector msg/s':>15}  {'mqtt-exporter msg/s':>19}  {'ratio':>6}  "
          f"{'collector MB':>12}  {'exporter MB':>11}")  # fmt: skip
    for i, r in enumerate(rows, 1):
        print(f"{i:>3}  {r['collector_msgs_per_s']:>15}  {r['mqtt_exporter_msgs_per_s']:>19}  "
              f"{r['ratio_collector_to_mqtt_exporter']:>6.3f}  {r['collector_rss_mb']:>12.1f}  "
              f"{r['mqtt_exporter_rss_mb']:>11.1f}")  # fmt: skip
    print(f"median: collector {rate:.0f} msg/s, mqtt-exporter {peer:.0f} msg/s, "
          f"ratio {rate / peer:.3f}; both took all {args.messages}")  # fmt: skip
    print(f"mqtt-exporter made {last['peer_series']} series under {last['peer_names']} metric "
          f"names from the batches and logged {last['peer_errors']} error lines")  # fmt: skip


if __name__ == "__main__":
    main()
