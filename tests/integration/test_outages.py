"""What kind of outage was it, end to end: the agent reports, the collector classifies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from harness import Agent, Collector, Mosquitto, Procs, free_port, wait_for

pytestmark = pytest.mark.integration


def outages(collector: Collector) -> list[dict]:
    status, body = collector.get("/api/v1/outages")
    assert status == 200
    return json.loads(body)["outages"]


def write_config(path: Path, min_seconds: float) -> Path:
    path.write_text(f"site: site-o\nhost: srv1\noutage_report_min_seconds: {min_seconds}\n")
    return path


def test_a_power_cut_is_told_from_an_agent_crash(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    conf = write_config(tmp_path / "agent.yaml", 30)
    agent = Agent(procs, broker, tmp_path, "site-o", "srv1", 0.2, "--config", str(conf))
    agent.env = {"OUTPOST_BOOT_ID": "boot-1"}
    agent.start()
    wait_for(
        "the host up", lambda: collector.value("outpost_host_up", site="site-o", host="srv1"), 20
    )
    assert agent.proc is not None
    agent.proc.kill9()  # the power goes...
    agent.env = {"OUTPOST_BOOT_ID": "boot-2"}  # ...and the host boots again
    agent.start()
    got = wait_for("a power outage", lambda: outages(collector), 20)
    assert got[0]["kind"] == "power" and got[0]["host"] == "srv1"
    assert collector.value("outpost_site_outages_total", site="site-o", kind="power") == 1.0

    # Killed without a reboot, down long enough: the agent was the trouble.
    agent.proc.kill9()
    wait_for("the host lost", lambda: collector.hosts()[("site-o", "srv1")]["state"] == "lost", 10)
    time.sleep(2 * 0.2 + 5.5)  # the silence itself: longer than 2 intervals + 5 s
    agent.start()
    got = wait_for(
        "an agent outage", lambda: len(outages(collector)) >= 2 and outages(collector), 20
    )
    assert got[0]["kind"] == "agent"


def test_a_broker_outage_is_reported_when_the_link_returns(procs: Procs, broker: Mosquitto,
                                                           collector: Collector,
                                                           tmp_path: Path) -> None:  # fmt: skip
    conf = write_config(tmp_path / "agent.yaml", 1)
    Agent(procs, broker, tmp_path, "site-o", "srv2", 0.2, "--config", str(conf)).start()
    wait_for(
        "the host up", lambda: collector.value("outpost_host_up", site="site-o", host="srv2"), 20
    )
    broker.stop()
    time.sleep(3)  # the outage
    broker.start()
    got = wait_for("the outage report", lambda: outages(collector), 30)
    assert got[0]["host"] == "srv2" and got[0]["duration"] >= 2.5
    assert got[0]["kind"] == "unknown"  # no gateway or uplink probes configured to tell


def test_uplink_outage_and_site_coverage_from_probes(procs: Procs, broker: Mosquitto,
                                                     collector: Collector,
                                                     tmp_path: Path) -> None:  # fmt: skip
    closed = free_port()  # nothing listens here: the "uplink" never answers
    gw = collector.port  # something that does listen
    conf = tmp_path / "agent.yaml"
    conf.write_text(
        "site: site-u\nhost: srv1\noutage_report_min_seconds: 1\n"
        "sources:\n  probes:\n    timeout_seconds: 0.5\n    targets:\n"
        f"      - {{name: gw, kind: tcp, role: gateway, address: 127.0.0.1, port: {gw}}}\n"
        f"      - {{name: county, kind: tcp, role: uplink, address: 127.0.0.1, port: {closed}}}\n"
    )
    Agent(procs, broker, tmp_path, "site-u", "srv1", 0.3, "--config", str(conf)).start()
    wait_for(
        "coverage degraded by the failing uplink",
        lambda: collector.value("outpost_site_coverage", site="site-u", state="degraded") == 1.0,
        20,
    )
    assert collector.value("outpost_site_uplink_probes", site="site-u") == 1.0
    assert collector.value("outpost_site_uplink_probes_ok", site="site-u") == 0.0
    labels = {"site": "site-u", "host": "srv1", "target": "gw", "kind": "tcp", "role": "gateway"}
    assert collector.value("outpost_probe_success", **labels) == 1.0
    broker.stop()
    time.sleep(2)  # the outage; the agent goes on probing
    broker.start()
    got = wait_for("the outage report", lambda: outages(collector), 30)
    assert got[0]["kind"] == "uplink", got
    assert (got[0]["gateway"], got[0]["uplink"]) == ("answered", "silent")
