"""``outpost simulate`` against a real mosquitto and a real collector.

The soak test runs 2,000 virtual agents (one MQTT connection and Last Will each, from one
process) at a 10 s interval with random abrupt disconnects for 2 minutes
(``OUTPOST_SOAK_SECONDS`` for longer, ``OUTPOST_SOAK_AGENTS`` for another fleet size;
scripts/soak runs it for 30 minutes) and checks that nothing is lost, that every agent is
known, that every batch is acknowledged, and that the collector's memory stays flat. The
small tests cover shared connections and the exit codes.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import pytest
from harness import Collector, Mosquitto, Proc, Procs, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from reliability import record

from outpost.simulate import assign_connections, fleet_names

SOAK_SECONDS = float(os.environ.get("OUTPOST_SOAK_SECONDS") or 120)
SOAK_AGENTS = int(os.environ.get("OUTPOST_SOAK_AGENTS") or 2000)
INTERVAL = 10.0
DISCONNECT_RATE = 0.1  # per agent per minute: about 3 a second over 2,000 agents
# RSS counts after a warm-up: every agent connected and reported, and the allocator (one
# arena per thread; the HTTP server starts a thread per scrape) at its working size.
WARMUP = min(max(45.0, SOAK_SECONDS / 4), SOAK_SECONDS / 2)
DRAIN = 60.0
SAMPLE_EVERY = 2.0
SCRAPE_EVERY = 10.0
RSS_TOLERANCE = 0.10  # the last third's median may exceed the first's by 10 % ...
RSS_SLACK_MB = 10.0  # ... plus this: steps of the allocator, not live data

LOST = re.compile(rb"^outpost_collector_lost_messages_total (\S+)$", re.M)


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def nofile() -> Iterator[None]:
    """Room for thousands of sockets in this process's children (mosquitto inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SOAK_AGENTS + 1000
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below {want}: raise it (ulimit -Hn)")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class StatusWatcher:
    """A plain MQTT client on every status topic: the births, Last Wills and goodbyes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str, str]] = []  # site, host, status, reason
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe("outpost/v1/+/+/status", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: Any) -> None:
        _, _, site, host, _ = msg.topic.split("/")
        data = json.loads(msg.payload) if msg.payload else {}
        with self.lock:
            self.seen.append((site, host, data.get("status", ""), data.get("reason", "")))

    def start(self) -> StatusWatcher:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        wait_for("the status watcher to subscribe", self.subscribed.is_set, 10)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wills(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(s, h) for s, h, status, reason in self.seen if reason == "lost"]

    def births(self) -> set[tuple[str, str]]:
        with self.lock:
            return {(s, h) for s, h, status, _ in self.seen if status == "online"}


@pytest.fixture
def watcher_factory() -> Iterator[list[StatusWatcher]]:
    made: list[StatusWatcher] = []
    yield made
    for w in made:
        w.stop()


def simulate(procs: Procs, name: str, *args: str) -> Proc:
    return procs.outpost(name, "simulate", "--json", *args)


def summary_of(proc: Proc) -> dict[str, Any]:
    """The JSON summary: the one line of output that is a JSON object."""
    for line in reversed(proc.output().splitlines()):
        if line.startswith('{"agents"'):
            return dict(json.loads(line))
    raise AssertionError(f"no JSON summary in the output:\n{proc.output()[-3000:]}")


def finished(proc: Proc, timeout: float) -> int:
    wait_for(f"{proc.name} to finish", lambda: not proc.running(), timeout, interval=0.2)
    assert proc.popen is not None
    return int(proc.popen.returncode)


def lost_total(collector: Collector) -> float:
    status, body = collector.get("/metrics")
    assert status == 200
    found = LOST.search(body)
    assert found, "outpost_collector_lost_messages_total is not exported"
    return float(found.group(1))


def settle_figures(
    collector: Collector, summary: dict[str, Any], site_prefix: str
) -> tuple[int, int, int]:
    """Every virtual agent is known under its own agent id with every seq settled; returns
    (applied, duplicates, lost) summed over them from the collector's view."""
    hosts = {k: h for k, h in collector.hosts().items() if k[0].startswith(site_prefix + "-")}
    per_agent = summary["per_agent"]
    assert len(hosts) == len(per_agent) == summary["agents"]
    for agent in per_agent:
        host = hosts[(agent["site"], agent["host"])]
        assert host["agent_id"] == agent["agent_id"], agent
        assert host["settled_upto"] == agent["last_seq"], (agent, host)
        assert host["state"] == "shutdown", (agent, host)
    lost = sum(int(h["lost"]) for h in hosts.values())
    dropped = sum(int(h["dropped"]) for h in hosts.values())
    applied = sum(int(h["settled_upto"]) for h in hosts.values()) - lost - dropped
    return applied, sum(int(h["duplicates"]) for h in hosts.values()), lost


# --- the soak ------------------------------------------------------------------------------


@pytest.mark.timeout(int(SOAK_SECONDS + DRAIN + 240))
def test_soak_2000_agents(
    procs: Procs, tmp_path: Path, nofile: None, watcher_factory: list[StatusWatcher]
) -> None:
    broker = Mosquitto(procs, tmp_path / "broker")
    # The production broker's queue settings (deploy/mosquitto/mosquitto.conf).
    with broker.conf.open("a") as conf:
        conf.write("max_queued_messages 100000\nmax_inflight_messages 100\n")
    broker.start()
    collector = Collector(procs, broker, tmp_path).start()
    assert collector.proc is not None
    watcher = StatusWatcher(broker.port).start()
    watcher_factory.append(watcher)
    rss_of = psutil.Process(collector.proc.pid)
    sim = simulate(
        procs, "simulate", "--broker", broker.url, "--agents", str(SOAK_AGENTS),
        "--interval", str(INTERVAL), "--duration", str(SOAK_SECONDS),
        "--disconnect-rate", str(DISCONNECT_RATE), "--seed", "2000", "--site-prefix", "soak",
        "--drain", str(DRAIN),
    )  # fmt: skip
    started = time.monotonic()
    deadline = started + SOAK_SECONDS + DRAIN + 120
    rss: list[tuple[float, float]] = []
    scrapes: list[float] = []
    next_scrape = started + SCRAPE_EVERY
    while sim.running():
        assert time.monotonic() < deadline, "outpost simulate did not finish in time"
        rss.append((time.monotonic() - started, rss_of.memory_info().rss / 2**20))
        if time.monotonic() >= next_scrape:
            scrapes.append(lost_total(collector))
            assert scrapes[-1] == 0, f"the collector counted lost messages: {scrapes}"
            next_scrape += SCRAPE_EVERY
        time.sleep(SAMPLE_EVERY)  # the sampling period of a measurement, not a wait
    assert sim.popen is not None and sim.popen.returncode == 0, sim.output()[-3000:]
    scrapes.append(lost_total(collector))
    summary = summary_of(sim)

    # The simulator: every batch acknowledged, none left, none dropped.
    assert summary["agents"] == summary["connections"] == SOAK_AGENTS
    assert summary["unacked"] == 0 and summary["dropped"] == 0
    assert summary["acked"] == summary["batches"] == summary["sent"]
    assert summary["batches"] >= SOAK_AGENTS * int(SOAK_SECONDS // INTERVAL - 1)
    assert summary["disconnects"] > 0

    # The collector: lost stayed 0 at every scrape, every agent known, every seq settled
    # and applied exactly once.
    assert len(scrapes) >= max(3, int(SOAK_SECONDS // SCRAPE_EVERY) - 1) and set(scrapes) == {0}
    applied, duplicates, lost = settle_figures(collector, summary, "soak")
    assert lost == 0
    assert applied == summary["batches"]

    # Every abrupt disconnect made the broker publish that agent's Last Will.
    low = summary["disconnects"]
    high = low + summary["connection_losses"] + summary["connect_failures"]
    wills = wait_for("the Last Wills", lambda: len(watcher.wills()) >= low and watcher.wills(), 30)
    assert low <= len(wills) <= high
    assert len(watcher.births()) == SOAK_AGENTS

    # The collector's memory is flat: the median of the last third against the first third
    # of the run after warm-up.
    window = [(t, mb) for t, mb in rss if WARMUP <= t <= SOAK_SECONDS]
    assert len(window) >= 6, f"too few RSS samples after warm-up: {rss}"
    span = (window[-1][0] - window[0][0]) / 3
    first = statistics.median(mb for t, mb in window if t <= window[0][0] + span)
    last = statistics.median(mb for t, mb in window if t >= window[-1][0] - span)
    print(
        f"\nsoak: {SOAK_AGENTS} agents, {INTERVAL:g} s, {SOAK_SECONDS:g} s: "
        f"{summary['batches']} batches, {applied} applied, {duplicates} duplicates, "
        f"{lost} lost, {summary['resent']} resent, {summary['disconnects']} disconnects, "
        f"{len(wills)} Last Wills; collector RSS {first:.1f} -> {last:.1f} MB "
        f"(peak {max(mb for _, mb in rss):.1f} MB)\nsoak: RSS MB by second: "
        + " ".join(f"{t:.0f}:{mb:.0f}" for t, mb in rss[:: max(1, len(rss) // 60)])
    )
    assert last <= first * (1 + RSS_TOLERANCE) + RSS_SLACK_MB, (first, last, window)
    record(
        "soak-2000",
        sent=summary["batches"],
        arrived=applied,
        duplicates=duplicates,
        lost=lost,
        dropped=summary["dropped"],
        note=f"{SOAK_AGENTS} agents, {INTERVAL:g} s, {SOAK_SECONDS:g} s, "
        f"{summary['disconnects']} disconnects, RSS {first:.0f}->{last:.0f} MB",
    )


# --- small and fast ------------------------------------------------------------------------


def test_shared_connections_deliver_everything_and_will_for_their_first_agent(
    procs: Procs, broker: Mosquitto, collector: Collector, watcher_factory: list[StatusWatcher]
) -> None:
    watcher = StatusWatcher(broker.port).start()
    watcher_factory.append(watcher)
    agents, conns = 60, 4
    sim = simulate(
        procs, "simulate-shared", "--broker", broker.url, "--agents", str(agents),
        "--connections", str(conns), "--sites", "6", "--site-prefix", "mux",
        "--interval", "0.5", "--duration", "5", "--disconnect-rate", "30", "--seed", "3",
        "--drain", "20",
    )  # fmt: skip
    assert finished(sim, 60) == 0, sim.output()[-3000:]
    summary = summary_of(sim)
    assert summary["connections"] == conns and summary["unacked"] == 0
    assert summary["acked"] == summary["batches"] >= agents * 8
    assert summary["disconnects"] > 0
    applied, _duplicates, lost = settle_figures(collector, summary, "mux")
    assert lost == 0 and applied == summary["batches"]
    # One Last Will per connection: only the first agent of a connection is ever lost.
    names = fleet_names(agents, 6, "mux")
    firsts = {names[group[0]] for group in assign_connections(agents, conns)}
    wills = wait_for("the Last Wills", lambda: len(watcher.wills()) >= summary["disconnects"]
                     and watcher.wills(), 10)  # fmt: skip
    assert set(wills) <= firsts
    assert len(wills) <= summary["disconnects"] + summary["connection_losses"]
    assert watcher.births() == set(names)
    record(
        "simulate-shared-connections",
        sent=summary["batches"],
        arrived=applied,
        duplicates=_duplicates,
        lost=lost,
        note=f"{agents} agents over {conns} connections, {summary['disconnects']} disconnects",
    )


def test_an_unreachable_broker_exits_1_and_says_so(procs: Procs) -> None:
    sim = simulate(
        procs, "simulate-unreachable", "--broker", f"mqtt://127.0.0.1:{free_port()}",
        "--agents", "3", "--interval", "0.5", "--duration", "1", "--drain", "1",
    )  # fmt: skip
    assert finished(sim, 30) == 1
    summary = summary_of(sim)
    assert summary["connects"] == 0 and summary["connect_failures"] >= 1
    assert summary["unacked"] == summary["batches"] > 0 and summary["ok"] is False
    assert "never connected to the broker" in sim.output()


def test_the_open_files_limit_is_raised_or_the_reason_given(procs: Procs) -> None:
    args = ["--broker", f"mqtt://127.0.0.1:{free_port()}", "--agents", "500",
            "--interval", "1", "--duration", "0", "--drain", "0"]  # fmt: skip
    base = [sys.executable, "-m", "outpost", "simulate", *args]
    raised = procs.start("simulate-raise", ["prlimit", "--nofile=128:4096", *base])
    refused = procs.start("simulate-refuse", ["prlimit", "--nofile=128:128", *base])
    # Soft 128 with hard 4096: raised, so it runs (and, with no broker, exits 1).
    assert finished(raised, 60) == 1, raised.output()[-2000:]
    assert "never connected" in raised.output()
    # Hard 128: it cannot, and says what to do.
    assert finished(refused, 60) == 2
    text = " ".join(refused.output().split())
    assert "hard limit is 128" in text and "--connections" in text
