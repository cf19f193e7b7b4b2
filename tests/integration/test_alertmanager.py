"""The alertmanager notifier against a real Prometheus Alertmanager (Debian's
prometheus-alertmanager, 0.25; scripts/install installs it).

A collector with one route to an ``alertmanager`` notifier, one agent: kill -9 of the agent
puts ``host_down`` into Alertmanager with its labels and an ``endsAt`` of now +
``ends_after_seconds`` (not Alertmanager's own 5 min ``resolve_timeout``); the agent back, the
resolve ends it there. Alertmanager 0.25 leaves an alert whose ``endsAt`` has passed out of
every ``GET /api/v2/alerts`` answer (whatever the filters) until it garbage-collects it, so
"resolved" is "no longer listed as active" (or, for a version that lists it, listed with an
``endsAt`` in the past).

Alertmanager runs on a free loopback port with its storage in the test's directory and no
cluster (``--cluster.listen-address=``: no gossip port, no peers).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Agent, Collector, Mosquitto, Proc, Procs, free_port, wait_for

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
ENDS_AFTER = 7200.0  # ends_after_seconds of the notifier: far from Alertmanager's 5 min
KEEPALIVE = 2  # the agent's MQTT keepalive: the broker declares it lost after ~3 s


class Alertmanager:
    def __init__(self, procs: Procs, root: Path) -> None:
        self.procs = procs
        self.port = free_port()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "alertmanager.yml"
        # One route, to a receiver that sends nothing.
        self.conf.write_text(
            yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}),
            encoding="utf-8",
        )
        self.proc: Proc | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Alertmanager:
        self.proc = self.procs.start(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={self.conf}",
                f"--storage.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
        )
        wait_for("Alertmanager's /-/ready", self.ready, 15)
        return self

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.running(), "alertmanager exited"
        with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    def alerts(self, **query: str) -> list[dict[str, Any]]:
        url = self.base + "/api/v2/alerts"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=5) as resp:
            answer: list[dict[str, Any]] = json.load(resp)
        return answer

    def host_down(self, **query: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts(**query) if a["labels"].get("alertname") == "host_down"]


def _time(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def alertmanager(procs: Procs, tmp_path: Path) -> Alertmanager:
    if not os.access(ALERTMANAGER, os.X_OK):
        pytest.skip(f"{ALERTMANAGER} is not installed (scripts/install installs it)")
    return Alertmanager(procs, tmp_path / "alertmanager").start()


def start_collector(
    procs: Procs, broker: Mosquitto, tmp_path: Path, alertmanager: Alertmanager
) -> Collector:
    extra = ("--config", str(tmp_path / "collector.yaml"), "--sites", str(tmp_path / "sites.yaml"))
    collector = Collector(procs, broker, tmp_path, *extra)
    config = {
        "alerting": {
            "engine": {"evaluate_every_seconds": 1, "resolve_after_seconds": 0},
            "dispatch": {"group_wait_seconds": 0, "repeat_every_seconds": 0},
            "delivery": {"first_retry_seconds": 1, "max_retry_seconds": 2},
            "rules": {
                "host_down": {"for_seconds": 0},
                # The site has one host: its site alert would inhibit host_down.
                "site_unreachable": {"enabled": False},
            },
            "notifiers": [
                {
                    "type": "alertmanager",
                    "name": "am",
                    "url": alertmanager.base,
                    "generator_url": collector.base + "/api/v1/alerts",
                    "ends_after_seconds": ENDS_AFTER,
                }
            ],
            "routing": {"routes": [{"name": "county", "steps": [{"notify": ["notifier:am"]}]}]},
        }
    }
    sites = {"sites": [{"id": "dongcun", "name": "东村", "hosts": ["pc1"]}]}
    (tmp_path / "collector.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "sites.yaml").write_text(yaml.safe_dump(sites, allow_unicode=True), "utf-8")
    return collector.start()


def test_host_down_fires_in_alertmanager_and_resolves(
    procs: Procs, broker: Mosquitto, tmp_path: Path, alertmanager: Alertmanager
) -> None:
    collector = start_collector(procs, broker, tmp_path, alertmanager)
    (tmp_path / "agent.yaml").write_text(
        yaml.safe_dump({"broker": {"keepalive_seconds": KEEPALIVE}}), encoding="utf-8"
    )
    agent = Agent(
        procs, broker, tmp_path, "dongcun", "pc1", 0.5, "-c", str(tmp_path / "agent.yaml")
    )
    agent.start()
    wait_for("pc1 online", lambda: collector.hosts()[("dongcun", "pc1")]["state"] == "online", 20)
    assert alertmanager.alerts() == []

    assert agent.proc is not None
    agent.proc.kill9()
    (fired,) = wait_for("host_down in Alertmanager", alertmanager.host_down, 20)
    assert fired["labels"] == {
        "alertname": "host_down",
        "site": "dongcun",
        "host": "pc1",
        "severity": "critical",
    }
    assert fired["status"]["state"] == "active"
    assert fired["generatorURL"] == collector.base + "/api/v1/alerts"
    assert [r["name"] for r in fired["receivers"]] == ["null"]
    # endsAt is Outpost's (now + ends_after_seconds), not Alertmanager's now + 5 min.
    ends = _time(fired["endsAt"])
    assert ends > time.time() + 600
    assert abs(ends - (_time(fired["updatedAt"]) + ENDS_AFTER)) < 30
    assert _time(fired["startsAt"]) <= time.time()

    agent.start()

    def resolved() -> bool:
        now = time.time()
        return all(_time(a["endsAt"]) <= now for a in alertmanager.host_down(active="true"))

    wait_for("host_down resolved in Alertmanager", resolved, 20)
    assert collector.hosts()[("dongcun", "pc1")]["state"] == "online"
