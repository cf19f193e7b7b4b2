"""Agent -> mosquitto -> collector -> /metrics, with the faults a rural link brings.

Link outages, broker restarts and broker kill -9, with exact counts: test_faults_network.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from harness import Agent, Collector, Mosquitto, Procs, wait_for

pytestmark = pytest.mark.integration


def _all_settled(collector: Collector, key: tuple[str, str], at_least: int) -> dict | None:
    """The host's record once every seq up to ``at_least`` (or more) is applied, none lost."""
    h = collector.hosts().get(key)
    if not h or h["last_seq"] is None or h["last_seq"] < at_least:
        return None
    if h["settled_upto"] != h["last_seq"]:
        return None
    return h


def test_a_metric_reaches_metrics(procs: Procs, broker: Mosquitto, collector: Collector,
                                  tmp_path: Path) -> None:  # fmt: skip
    agent = Agent(procs, broker, tmp_path, "site-a", "srv1").start()
    wait_for(
        "the agent's uptime on /metrics",
        lambda: collector.value("outpost_host_uptime_seconds", site="site-a", host="srv1"),
        20,
    )
    m = collector.metrics()
    assert m[("outpost_host_up", frozenset({"site": "site-a", "host": "srv1"}.items()))] == 1.0
    rx = [k for k in m if k[0] == "outpost_network_receive_bytes_total"]
    assert rx and all(dict(k[1]).keys() >= {"site", "host", "interface"} for k in rx)
    assert m[("outpost_collector_lost_messages_total", frozenset())] == 0.0
    assert agent.proc is not None and agent.proc.running()


def test_kill_9_of_the_agent_marks_the_host_down(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    agent = Agent(procs, broker, tmp_path, "site-a", "srv2").start()
    wait_for("host up", lambda: collector.value("outpost_host_up", site="site-a", host="srv2"), 20)
    assert agent.proc is not None
    killed = time.monotonic()
    agent.proc.kill9()
    wait_for(
        "host_up 0 after kill -9",
        lambda: collector.value("outpost_host_up", site="site-a", host="srv2") == 0.0,
        timeout=2 * 10,  # 2 x the default keepalive
    )
    took = time.monotonic() - killed
    states = collector.hosts()[("site-a", "srv2")]
    assert states["state"] == "lost", states
    print(f"kill -9 -> host_up 0 in {took:.2f}s")


def test_clean_stop_is_shutdown_not_lost(procs: Procs, broker: Mosquitto, collector: Collector,
                                         tmp_path: Path) -> None:  # fmt: skip
    agent = Agent(procs, broker, tmp_path, "site-a", "srv3").start()
    wait_for("host up", lambda: collector.value("outpost_host_up", site="site-a", host="srv3"), 20)
    assert agent.proc is not None and agent.proc.stop() == 0
    wait_for(
        "state shutdown",
        lambda: collector.hosts()[("site-a", "srv3")]["state"] == "shutdown",
        10,
    )


def _outbox_seq(agent: Agent) -> int:
    """The highest seq the agent has written (read from its outbox, without locking it)."""
    import sqlite3

    db = sqlite3.connect(f"file:{agent.state / 'outbox.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(row[0]) - 1
    finally:
        db.close()


def test_collector_restart_loses_nothing(procs: Procs, broker: Mosquitto, collector: Collector,
                                         tmp_path: Path) -> None:  # fmt: skip
    key = ("site-d", "srv1")
    agent = Agent(procs, broker, tmp_path, *key, 0.2).start()
    wait_for("first batches", lambda: _all_settled(collector, key, 3), 20)
    assert collector.proc is not None and collector.proc.stop() == 0
    start = _outbox_seq(agent)
    wait_for("batches while the collector is down", lambda: _outbox_seq(agent) >= start + 10, 20)
    produced = _outbox_seq(agent)
    collector.start()
    h = wait_for("every seq after the restart",
                 lambda: _all_settled(collector, key, produced), 40)  # fmt: skip
    assert h["lost"] == 0 and h["dropped"] == 0, h
    assert h["duplicates"] >= 0


def test_mosquitto_pub_as_in_the_protocol_is_accepted(broker: Mosquitto,
                                                      collector: Collector) -> None:  # fmt: skip
    topic = "outpost/v1/demo-site/router1"
    status = {"v": 1, "status": "online", "site": "demo-site", "host": "router1"}
    batch = {
        "v": 1, "site": "demo-site", "host": "router1", "agent_id": "router1-sh",
        "boot_id": "b1", "seq": 1, "ts": int(time.time() * 1000),
        "samples": [{"name": "outpost_network_receive_bytes_total", "value": 12345,
                     "labels": {"interface": "wan"}}],
    }  # fmt: skip
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1"]
    subprocess.run([*pub, "-r", "-t", f"{topic}/status", "-m", json.dumps(status)], check=True)
    subprocess.run([*pub, "-t", f"{topic}/metrics", "-m", json.dumps(batch)], check=True)
    labels = {"site": "demo-site", "host": "router1", "interface": "wan"}
    wait_for(
        "the shell agent's sample",
        lambda: collector.value("outpost_network_receive_bytes_total", **labels) == 12345.0,
        10,
    )
    # A bad message is counted, and the collector keeps going.
    subprocess.run([*pub, "-t", f"{topic}/metrics", "-m", "{not json"], check=True)
    wait_for(
        "the invalid count",
        lambda: collector.value("outpost_collector_invalid_messages_total", reason="malformed"),
        10,
    )
    assert collector.get("/healthz")[0] == 200
