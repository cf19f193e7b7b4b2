"""deploy/prometheus against real processes: a collector fed by two agents, scraped by Debian's
Prometheus with deploy/prometheus/prometheus.yml (adapted: the collector's free port, 1 s
scrapes and evaluations, storage in the test's directory) and the rules of
deploy/prometheus/rules. The promtool checks and rule unit tests are in
tests/unit/test_prometheus_rules.py."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from harness import Agent, Collector, Mosquitto, Procs, wait_for
from prometheus import PROMTOOL, Prometheus, adapted_config, available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="no prometheus (scripts/install --test)"),
]

HOSTS = {("site-a", "srv1"), ("site-b", "srv2")}


def _hosts(prom: Prometheus, expr: str) -> set[tuple[str, str]]:
    return {(r["metric"]["site"], r["metric"]["host"]) for r in prom.query(expr)}


def _sites(prom: Prometheus, expr: str) -> set[str]:
    return {r["metric"]["site"] for r in prom.query(expr)}


def test_the_adapted_config_is_valid(tmp_path: Path) -> None:
    """What the harness makes of deploy/prometheus/prometheus.yml, with and without an
    Alertmanager, passes promtool (which also loads the rule files it names)."""
    for alertmanager in (None, "127.0.0.1:9093"):
        config = adapted_config(["127.0.0.1:9468"], alertmanager=alertmanager)
        assert [job["job_name"] for job in config["scrape_configs"]] == ["outpost"]
        assert ("alerting" in config) == (alertmanager is not None)
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        run = subprocess.run([PROMTOOL, "check", "config", str(path)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "2 rule files found" in run.stdout


def test_prometheus_scrapes_the_collector_and_records(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    for site, host in sorted(HOSTS):
        Agent(procs, broker, tmp_path, site, host, 0.5).start()
    target = f"127.0.0.1:{collector.port}"
    prom = Prometheus(procs, tmp_path / "prometheus", [target]).start()

    wait_for("the collector's target to be up", prom.targets_up, 15)
    [scraped] = prom.targets()
    assert scraped["labels"] == {"job": "outpost", "instance": target}, scraped
    assert scraped["scrapeUrl"] == f"http://{target}/metrics"
    up = prom.query('up{job="outpost"} == 1')
    assert [(r["metric"]["instance"], r["value"][1]) for r in up] == [(target, "1")]

    # The collector's own labels come through as they are (honor_labels: false changes
    # nothing for them): site and host, plus the target's job and instance.
    wait_for("both agents online in Prometheus",
             lambda: _hosts(prom, 'outpost_host_up{job="outpost"} == 1') >= HOSTS, 20)  # fmt: skip

    # rate(...[5m]) needs two scrapes with different counter values: a few seconds.
    per_interface = "site_host_interface:outpost_network_receive_bytes:rate5m"
    wait_for("bandwidth per interface of both agents",
             lambda: _hosts(prom, per_interface) >= HOSTS, 20)  # fmt: skip
    for name in (
        "site_host_interface:outpost_network_transmit_bytes:rate5m",
        "site_host:outpost_network_receive_bytes:rate5m",
        "site_host:outpost_network_transmit_bytes:rate5m",
        "site_host:outpost_cpu_busy:ratio_rate5m",
    ):
        wait_for(f"{name} of both agents", lambda name=name: _hosts(prom, name) >= HOSTS, 10)
    rows = prom.query(per_interface)
    assert all(r["metric"].keys() == {"__name__", "site", "host", "interface"} for r in rows)
    assert all(float(r["value"][1]) >= 0 for r in rows), rows
    busy = prom.query("site_host:outpost_cpu_busy:ratio_rate5m")
    assert all(0 <= float(r["value"][1]) <= 1 for r in busy), busy
    site_total = "site:outpost_network_receive_bytes:rate5m"
    wait_for("the site totals", lambda: _sites(prom, site_total) >= {"site-a", "site-b"}, 10)

    # Every recording and alert rule ran against the real series without an error (no
    # many-to-many matches, no bad template).
    def all_rules_ok() -> bool:
        rules = prom.rules()
        bad = [r for r in rules if r["health"] == "err"]
        assert not bad, [(r["name"], r.get("lastError")) for r in bad]
        return bool(rules) and all(r["health"] == "ok" for r in rules)

    wait_for("every rule evaluated", all_rules_ok, 10)
    names = {r["name"] for r in prom.rules()}
    assert {"host_down", "site_unreachable", "collector_broker_down", per_interface} <= names
    # Nothing of the fleet is wrong yet: the host and site rules see no condition.
    watched = {"host_down", "site_unreachable", "collector_broker_down", "collector_down"}
    assert not [a for a in prom.alerts() if a["labels"]["alertname"] in watched]

    # A host on an almost empty UPS (a shell agent, as in docs/protocol.md): ups_low_battery
    # has no `for`, so it fires at the next evaluation, its annotations rendered by the real
    # Prometheus (templates that query the collector's series).
    _publish_ups(broker, "site-c", "ups1", percent=12)
    firing = wait_for("ups_low_battery firing", lambda: _firing(prom, "ups_low_battery"), 15)
    assert [a["labels"] for a in firing] == [
        {"alertname": "ups_low_battery", "severity": "critical", "site": "site-c", "host": "ups1"}
    ]
    assert firing[0]["annotations"] == {
        "summary": "UPS of ups1 is low (12%)",
        "summary_zh": "主机 ups1 的 UPS 电量低（12%）",
        "description": "The UPS of host ups1 at site-c is on battery with 12% left. Restore "
        "power or shut down cleanly now, or the host will lose power abruptly.",
    }


def _firing(prom: Prometheus, alertname: str) -> list[dict]:
    return [
        a for a in prom.alerts()
        if a["labels"]["alertname"] == alertname and a["state"] == "firing"
    ]  # fmt: skip


def _publish_ups(broker: Mosquitto, site: str, host: str, percent: float) -> None:
    topic = f"outpost/v1/{site}/{host}"
    status = {"v": 1, "status": "online", "site": site, "host": host}
    batch = {
        "v": 1, "site": site, "host": host, "agent_id": f"{host}-sh", "boot_id": "b1",
        "seq": 1, "ts": int(time.time() * 1000),
        "samples": [{"name": "outpost_battery_power_plugged", "value": 0},
                    {"name": "outpost_battery_percent", "value": percent}],
    }  # fmt: skip
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1"]
    subprocess.run([*pub, "-r", "-t", f"{topic}/status", "-m", json.dumps(status)], check=True)
    subprocess.run([*pub, "-t", f"{topic}/metrics", "-m", json.dumps(batch)], check=True)
