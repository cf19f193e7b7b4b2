"""How fast a real agent drains its outbox after a long outage, and whether current data keeps
coming meanwhile.

The target: after a 24-hour outage at a 15 s interval (5,760 batches made over 86,400 s), the
backlog drains at least 50 times faster than it was produced (in under 1,728 s), while every
batch collected during the drain reaches the collector within one interval of its collection.

**The backlog.** The agent's own code builds it, in its real outbox, with a clock that is
passed in instead of read: the bench makes an ``agent.runner.Agent`` from the default config
(default sources, ``preflight`` as ``outpost agent run`` does), opens the outbox in the state
directory the real agent uses next, notes the link as down (as the runner does when the broker
goes) and calls ``Agent.cycle(now)`` once per interval of the outage, ``now`` running from
``--hours`` before the build started up to one interval before it, with no broker ever
reachable. So every batch is what the agent collects on this host (system, probes, snmp,
security sources), encoded by the agent, stored with its seq, outage state and source
positions in one transaction, as a real cycle is. Only the clock is not waited for. The agent
is then stopped cleanly (its outage stays open, as across an agent restart).

**The drain.** A real mosquitto (with the queue and size limits of
deploy/mosquitto/mosquitto.conf), a real collector (``outpost collector run``) with its
**default limits** — 50 messages a second per sender after a burst of 2,000, what a county
runs — and the real agent process (``outpost agent run --interval``) on that state directory.
The bench subscribes to the agent's topics on the broker (QoS 1) and records, per seq, when
each copy of a batch went by and when the collector's end-to-end ``ack`` first covered it (the
collector publishes acks every 0.2 s, after writing its bookkeeping to disk: an ack is the
collector's own word that it applied the batch). The link is back when the agent's ``online``
status says so (its ``ts``, the agent's clock at connect).

- backlog: every seq collected before the link came back (the 24 h, and the cycle the agent
  ran on start before it connected); drained when acks cover all of them. Drain rate =
  backlog / (drain end - link back); production rate = batches built / outage seconds.
- current: every batch collected after the link came back, up to the end of the drain (and
  at least one interval, so a real cycle is always among them); lag = its ack - its ``ts``.

What bounds the drain is printed with the figures: the collector's per-sender token bucket
(beyond the burst, 50 a second), and the agent's ``resend_after_seconds`` (60 s): a batch the
collector refused for rate is neither applied nor acknowledged, and the agent sends it again
only when no ack came for that long, with up to ``max_inflight`` (500) such batches held.

    python bench/backlog.py                      # 24 h at 15 s (a few minutes)
    python bench/backlog.py --hours 8 --interval 60
    python bench/backlog.py --smoke --json       # 0.5 h at 2 s, within the burst (~10 s)

Exit codes: 0 measured (a missed target is shown, not an error), 1 a process failed or the
drain did not finish before ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, mosquitto_conf, row, stop, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import AgentConfig, OutboxConfig
from agent.cycle import Identity
from agent.outage import OutageTracker, TrackerState
from agent.outbox import Outbox
from agent.runner import Agent, read_boot_id, read_uptime
from agent.service import preflight
from collector.config import LimitsConfig
from outpost import wire

ROOT = Path(__file__).resolve().parents[1]
SITE, HOST = "bench-site", "bench-host"
TARGET_RATIO = 50.0
DEPLOY_MOSQUITTO = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
BROKER_LIMIT_KEYS = (
    "max_queued_messages",
    "max_queued_bytes",
    "max_inflight_messages",
    "message_size_limit",
)


# --- the backlog ------------------------------------------------------------------------------


def build_backlog(state: Path, hours: float, interval: float, progress: Progress) -> dict[str, Any]:
    """The agent's own cycles for ``hours`` at ``interval``, with the clock passed in and no
    broker, into the outbox in ``state``. Returns what was built."""
    cycles = round(hours * 3600 / interval)
    cfg = msgspec.convert(
        {"site": SITE, "host": HOST, "state_dir": str(state), "interval_seconds": interval},
        AgentConfig,
    )
    agent = Agent(cfg, preflight(cfg))
    # What Agent.run does before its loop, minus the publisher: nothing is sent.
    agent.outbox = Outbox(state / "outbox.sqlite", cfg.outbox.max_bytes)
    agent.who = Identity(SITE, HOST, agent.outbox.agent_id, read_boot_id())
    agent.outages = OutageTracker(TrackerState(), cfg.outage_report_min_seconds)
    end = time.time()
    first = end - cycles * interval
    agent.outages.start(first, agent.who.boot_id, interval, read_uptime())
    agent._restore_sources()
    agent.outages.disconnected(first)  # the link went just before the first cycle
    agent._write([], first)
    task = progress.add_task("building the backlog (agent cycles)", total=cycles)
    started = time.perf_counter()
    try:
        for k in range(cycles):
            agent.cycle(first + k * interval)
            if k % 50 == 0:
                progress.update(task, completed=k)
        # A clean stop, as Agent.run ends: the outage stays open for the next start.
        agent.outages.stopped()
        agent._write([], first + (cycles - 1) * interval)
    finally:
        for source in agent.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        stats = agent.outbox.stats()
        next_seq = agent.outbox.next_seq
        agent.outbox.close()
    progress.update(task, completed=cycles)
    took = time.perf_counter() - started
    with sqlite3.connect(f"file:{state / 'outbox.sqlite'}?mode=ro", uri=True) as db:
        kinds = {
            str(kind): (int(n), float(avg))
            for kind, n, avg in db.execute(
                "SELECT kind, COUNT(*), AVG(size) FROM outbox GROUP BY kind"
            )
        }
    return {
        "cycles": cycles,
        "messages": stats.rows,
        "last_seq": next_seq - 1,
        "dropped": stats.dropped_total,
        "bytes": stats.bytes,
        "by_kind": {k: {"messages": n, "mean_bytes": round(avg)} for k, (n, avg) in kinds.items()},
        "first_ts": first,
        "last_ts": first + (cycles - 1) * interval,
        "build_seconds": round(took, 1),
        "sources": [source.name for source in agent.sources],
    }


# --- what goes by on the broker ---------------------------------------------------------------


@dataclass
class Seen:
    """Per seq: its collection time, each copy that went by, the first ack that covered it."""

    online_ms: int | None = None  # the agent's clock when it connected
    online_at: float | None = None  # when the bench saw that
    ts_ms: dict[int, int] = field(default_factory=dict)
    kind: dict[int, str] = field(default_factory=dict)
    first_sent: dict[int, float] = field(default_factory=dict)
    sends: Counter[int] = field(default_factory=Counter)
    acked: dict[int, float] = field(default_factory=dict)
    upto: int = 0
    acks: int = 0
    bad: int = 0


class Watcher:
    """A paho subscriber on the agent's topics (status, metrics, events, ack)."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.seen = Seen()
        self.limits = wire.Limits()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="bench-backlog-watcher",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self.subscribed.wait(15):
            raise SystemExit("the bench could not subscribe to the agent's topics")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(wire.topic("outpost", SITE, HOST, "#"), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        now = time.time()
        kind = message.topic.rsplit("/", 1)[-1]
        try:
            data = json.loads(message.payload)
        except ValueError:
            with self.lock:
                self.seen.bad += 1
            return
        with self.lock:
            s = self.seen
            if kind == wire.STATUS:
                if data.get("status") == "online" and s.online_ms is None:
                    s.online_ms, s.online_at = int(data["ts"]), now
            elif kind in (wire.METRICS, wire.EVENTS):
                seq = int(data["seq"])
                s.ts_ms[seq] = int(data["ts"])
                s.kind[seq] = kind
                s.first_sent.setdefault(seq, now)
                s.sends[seq] += 1
            elif kind == wire.ACK:
                try:
                    ack = wire.decode_ack(message.payload, self.limits)
                except wire.DecodeFailure:
                    s.bad += 1
                    return
                s.acks += 1
                for seq in range(s.upto + 1, ack.upto + 1):
                    s.acked.setdefault(seq, now)
                s.upto = max(s.upto, ack.upto)
                for lo, hi in ack.ranges:
                    for seq in range(max(lo, s.upto + 1), hi + 1):
                        s.acked.setdefault(seq, now)

    def snapshot(self) -> tuple[int | None, int | None, int]:
        """(link back, ms; the lowest seq collected since; the collector's ``upto``)."""
        with self.lock:
            s = self.seen
            first_current = None
            if s.online_ms is not None:
                current = [q for q, ts in s.ts_ms.items() if ts >= s.online_ms]
                first_current = min(current) if current else None
            return s.online_ms, first_current, s.upto


# --- processes --------------------------------------------------------------------------------


def broker_limits() -> str:
    """The queue and size limits of the production broker config, as lines of a config."""
    lines = []
    for line in DEPLOY_MOSQUITTO.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in BROKER_LIMIT_KEYS:
            lines.append(" ".join(parts[:2]))
    return "".join(f"{line}\n" for line in lines)


def collector_stats(hport: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/api/v1/collector", timeout=5) as r:
        return dict(json.load(r))


def check_alive(procs: dict[str, subprocess.Popen[bytes]], when: str) -> None:
    for name, p in procs.items():
        if p.poll() is not None:
            raise SystemExit(f"the {name} exited with {p.returncode} {when}")


def wait_until(
    what: str, check: Any, timeout: float, procs: dict[str, subprocess.Popen[bytes]]
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(procs, f"while waiting for {what}")
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


# --- the run ----------------------------------------------------------------------------------


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    limits = LimitsConfig()
    outbox_cfg = OutboxConfig()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    watcher: Watcher | None = None
    with tempfile.TemporaryDirectory(prefix="outpost-backlog-") as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "agent"
        agent_log = tmp / "agent.log"
        try:
            with Progress(transient=True, console=console) as progress:
                built = build_backlog(state, args.hours, args.interval, progress)
            port, hport = free_port(), free_port()
            conf = mosquitto_conf(tmp / "mosquitto.conf", port, broker_limits())
            mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            procs["broker"] = subprocess.Popen([mosquitto, "-c", str(conf)],
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)  # fmt: skip
            wait_port(port)
            url = f"mqtt://127.0.0.1:{port}"
            procs["collector"] = subprocess.Popen(
                [sys.executable, "-m", "outpost", "collector", "run", "--broker", url,
                 "--listen", f"127.0.0.1:{hport}", "--state-dir", str(tmp / "collector")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            wait_until("the collector to connect to the broker",
                       lambda: collector_stats(hport)["broker_connected"], 60, procs)  # fmt: skip
            watcher = Watcher(port)
            watcher.start()
            with open(agent_log, "wb") as log:
                procs["agent"] = subprocess.Popen(
                    [sys.executable, "-m", "outpost", "agent", "run", "--broker", url,
                     "--site", SITE, "--host", HOST, "--state-dir", str(state),
                     "--interval", f"{args.interval:g}", "-v"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                )  # fmt: skip
            started = time.time()
            result = drain(args, watcher, procs, built, console)
            result["collector"] = collector_stats(hport)
        finally:
            if watcher is not None:
                watcher.stop()
            for p in reversed(procs.values()):
                stop(p)
        text = agent_log.read_text(errors="replace") if agent_log.exists() else ""
    result["agent_resend_rounds"] = text.count("sending them again")
    result["agent_started_to_link_s"] = round(result["link_back"] - started, 3)
    result["limits"] = {
        "collector_sender_rate_per_second": limits.sender_rate_per_second,
        "collector_sender_burst": limits.sender_burst,
        "agent_max_inflight": outbox_cfg.max_inflight,
        "agent_resend_after_seconds": outbox_cfg.resend_after_seconds,
    }
    result["built"] = built
    return result


def drain(
    args: argparse.Namespace,
    watcher: Watcher,
    procs: dict[str, subprocess.Popen[bytes]],
    built: dict[str, Any],
    console: Console,
) -> dict[str, Any]:
    """Wait for the backlog to be acknowledged, then for the current batches of the drain."""
    deadline = time.monotonic() + args.timeout
    online_ms, first_current, upto = wait_until(
        "the agent to connect and send its first current batch",
        lambda: (lambda s: s if s[1] is not None else None)(watcher.snapshot()),
        60, procs,
    )  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, transient=True, console=console) as progress:
        task = progress.add_task("draining the backlog (acked by the collector)",
                                 total=first_current - 1)  # fmt: skip
        while upto < first_current - 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"the backlog was not drained within --timeout {args.timeout:g} s "
                                 f"({upto} of {first_current - 1} acknowledged)")  # fmt: skip
            check_alive(procs, "during the drain")
            time.sleep(0.1)
            online_ms, first_current, upto = watcher.snapshot()
            assert first_current is not None
            progress.update(task, completed=min(upto, first_current - 1),
                            total=first_current - 1)  # fmt: skip
    with watcher.lock:
        drained_at = max(watcher.seen.acked[q] for q in range(1, first_current))
    assert online_ms is not None
    link_back = online_ms / 1000
    # Current batches: collected from the link's return to the drain's end, and for at least
    # one interval, so a real cycle is among them. The window is closed once a later batch
    # has gone by (current data goes out first, in seq order).
    window_end = max(drained_at, link_back + args.interval)
    grace = max(3 * OutboxConfig().resend_after_seconds, 4 * args.interval)
    settle_deadline = window_end + grace + args.interval
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), transient=True,
                  console=console) as progress:  # fmt: skip
        progress.add_task("waiting for the current batches of the drain to be acknowledged")
        while True:
            with watcher.lock:
                s = watcher.seen
                window = [q for q, ts in s.ts_ms.items()
                          if q >= first_current and ts / 1000 <= window_end]  # fmt: skip
                later = any(ts / 1000 > window_end for ts in s.ts_ms.values())
                top = max(window, default=first_current)
                done = later and all(q in s.acked for q in range(first_current, top + 1))
            if done or time.time() > settle_deadline:
                break
            check_alive(procs, "after the drain")
            time.sleep(0.1)
    ended = time.time()
    with watcher.lock:
        return summarise(args, watcher.seen, link_back, drained_at, first_current, top, built,
                         ended)  # fmt: skip


def summarise(
    args: argparse.Namespace,
    s: Seen,
    link_back: float,
    drained_at: float,
    first_current: int,
    top: int,
    built: dict[str, Any],
    ended: float,
) -> dict[str, Any]:
    """The figures from what went by. A current batch not acknowledged when the bench stopped
    waiting counts with the time it had waited then (a lower bound of its lag)."""
    backlog = range(1, first_current)
    drain_s = drained_at - link_back
    current = []
    for q in range(first_current, top + 1):
        ts = s.ts_ms.get(q)
        acked = s.acked.get(q)
        current.append({
            "seq": q,
            "kind": s.kind.get(q, "?"),
            "collected_s": None if ts is None else round(ts / 1000 - link_back, 3),
            "sent_after_s": None if ts is None or q not in s.first_sent
            else round(s.first_sent[q] - ts / 1000, 3),
            "lag_s": None if ts is None or acked is None else round(acked - ts / 1000, 3),
            "waited_s": None if ts is None or acked is not None else round(ended - ts / 1000, 3),
            "copies": s.sends[q],
        })  # fmt: skip
    lags = [c["lag_s"] if c["lag_s"] is not None else c["waited_s"] for c in current]
    missing = [c["seq"] for c in current if c["lag_s"] is None]
    copies = sum(s.sends[q] for q in backlog)
    done = sorted(s.acked[q] - link_back for q in backlog if q in s.acked)
    timeline = {}
    for pct in (10, 25, 50, 75, 90, 100):
        if done:
            timeline[f"{pct}%"] = round(done[max(0, -(-len(done) * pct // 100) - 1)], 1)
    return {
        "link_back": link_back,
        "backlog": {
            "messages": len(backlog),
            "built": built["messages"],
            "collected_before_link": len(backlog) - built["messages"],
            "arrived": sum(1 for q in backlog if q in s.acked),
            "copies_sent": copies,
            "sent_more_than_once": sum(1 for q in backlog if s.sends[q] > 1),
        },
        "drain": {
            "seconds": round(drain_s, 3),
            "rate_per_s": len(backlog) / drain_s,
            "production_per_s": built["messages"] / (args.hours * 3600),
            "acknowledged_by_s": timeline,
        },
        "current": {
            "batches": current,
            "max_lag_s": max((x for x in lags if x is not None), default=None),
            "not_acknowledged": missing,
        },
        "watcher_undecodable": s.bad,
    }


def bound(result: dict[str, Any]) -> str:
    """What bounds the drain, in words, from the limits and what happened."""
    lim = result["limits"]
    rate, burst = lim["collector_sender_rate_per_second"], lim["collector_sender_burst"]
    n = result["backlog"]["messages"] + len(result["current"]["batches"])
    seconds = result["drain"]["seconds"]
    if n <= burst:
        return (f"within the collector's burst ({burst}): bounded by the agent's in-flight "
                f"window ({lim['agent_max_inflight']}), the ack round and ingest")  # fmt: skip
    floor = (n - burst) / rate
    limited = result["collector"]["messages"].get("rate_limited", 0)
    return (f"the collector's per-sender limit: {burst} at once, then {rate:g}/s, so at least "
            f"{floor:.0f} s for {n} messages; measured {seconds:.0f} s. {limited} copies were "
            f"refused for rate and sent again after the agent's resend_after_seconds "
            f"({lim['agent_resend_after_seconds']:g} s) in {result['agent_resend_rounds']} "
            f"rounds")  # fmt: skip


def rows(args: argparse.Namespace, result: dict[str, Any]) -> list[dict[str, object]]:
    name = f"{args.hours:g} h at {args.interval:g} s"
    drain, cur = result["drain"], result["current"]
    ratio = drain["rate_per_s"] / drain["production_per_s"]
    lag = cur["max_lag_s"] if cur["max_lag_s"] is not None else float("nan")
    return [
        row(f"backlog drain ({name})", drain["rate_per_s"], "batches/s",
            anchor_name="production rate (batches made per second of the outage)",
            anchor=drain["production_per_s"], target=f"≥ {TARGET_RATIO:g} × production",
            met=None if args.smoke else ratio >= TARGET_RATIO),
        row("current batch lag during drain", lag, "s", anchor_name="the interval",
            anchor=args.interval, target="≤ one interval",
            met=None if args.smoke else lag <= args.interval and not cur["not_acknowledged"]),
    ]  # fmt: skip


def print_table(args: argparse.Namespace, result: dict[str, Any]) -> None:
    b, d, c, built = result["backlog"], result["drain"], result["current"], result["built"]
    kinds = ", ".join(f"{k} {v['messages']} (mean {v['mean_bytes']} B)"
                      for k, v in built["by_kind"].items())  # fmt: skip
    print(
        f"backlog: {built['cycles']} agent cycles ({args.hours:g} h at {args.interval:g} s) "
        f"built in {built['build_seconds']:g} s: {kinds}; sources {', '.join(built['sources'])}"
    )
    print(f"         + {b['collected_before_link']} collected by the agent before it connected "
          f"= {b['messages']} to drain; {b['arrived']} acknowledged, "
          f"{b['copies_sent']} copies sent")  # fmt: skip
    print(
        f"drain:   {d['seconds']:.1f} s from the link's return: {d['rate_per_s']:.1f} batches/s "
        f"against {d['production_per_s']:.4f} produced per s "
        f"(ratio {d['rate_per_s'] / d['production_per_s']:.0f}, target ≥ {TARGET_RATIO:g})"
    )
    steps = ", ".join(f"{k} by {v:g} s" for k, v in d["acknowledged_by_s"].items())
    print(f"         acknowledged: {steps}")
    print(f"bound:   {result['bound']}")
    col = result["collector"]
    print(f"collector: messages {col['messages']}, lost {col['lost']}, dropped {col['dropped']}")
    print(
        f"current batches (collected from the link's return to the end of the drain), "
        f"interval {args.interval:g} s:"
    )
    print(f"  {'seq':>6}  {'kind':<7}  {'collected':>9}  {'sent after':>10}  {'lag':>7}  copies")
    for x in c["batches"]:
        lag = f"{x['lag_s']:.2f}" if x["lag_s"] is not None else f">{x['waited_s'] or 0:.0f}"
        sent = "-" if x["sent_after_s"] is None else f"{x['sent_after_s']:.2f}"
        at = "-" if x["collected_s"] is None else f"{x['collected_s']:.1f}"
        print(f"  {x['seq']:>6}  {x['kind']:<7}  {at:>9}  {sent:>10}  {lag:>7}  {x['copies']}")
    if c["not_acknowledged"]:
        print(f"  not acknowledged when the bench stopped waiting: {c['not_acknowledged']}")
    print()
    for r in result["rows"]:
        met = {True: "met", False: "MISSED", None: "-"}[r["met"]]
        print(
            f"{r['what']:<36} {r['figure']:>10g} {r['unit']:<10} anchor {r['anchor']:g} "
            f"({r['anchor_name']}), ratio {r['ratio']:g}, target {r['target']}: {met}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="length of the outage (24)")
    ap.add_argument("--interval", type=float, default=15.0, help="collection interval, s (15)")
    ap.add_argument("--smoke", action="store_true", help="0.5 h at 2 s: within the burst (~10 s)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="give up on the drain after this many s (default: twice the target)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args()
    if args.smoke:
        args.hours, args.interval = 0.5, 2.0
    if args.hours <= 0 or args.interval < 0.1:
        ap.error("--hours must be positive and --interval at least 0.1")
    if not args.timeout:
        args.timeout = max(120.0, 2 * args.hours * 3600 / TARGET_RATIO)
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console(stderr=True)
    result = measure(args, console)
    result["bound"] = bound(result)
    result["rows"] = rows(args, result)
    result = {"rows": result.pop("rows"), "hours": args.hours, "interval": args.interval,
              "smoke": args.smoke, **result}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print_table(args, result)


if __name__ == "__main__":
    main()
