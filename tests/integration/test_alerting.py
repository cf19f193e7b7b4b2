"""Alerting end to end with real processes: agents killed and stopped, a webhook receiver in
the test, the collector's alert engine in between.

- kill -9 of one agent: a host_down notification within 3 x keepalive, escalation to the next
  step while nobody acknowledges, and a resolve when the agent is back;
- SIGTERM of an agent: the planned-shutdown alert (as configured);
- every agent of a site killed: exactly one notification, for the site; acknowledged through
  the API, it does not escalate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from harness import Agent, Collector, Mosquitto, Procs, wait_for
from webhook import Receiver

KEEPALIVE = 10  # the agents' default keepalive_seconds
TOKEN = "integration-test-token-0123456789"


def start_collector(
    procs: Procs, broker: Mosquitto, tmp_path: Path, receiver: Receiver
) -> Collector:
    extra = ("--config", str(tmp_path / "collector.yaml"), "--sites", str(tmp_path / "sites.yaml"))
    collector = Collector(procs, broker, tmp_path, *extra)
    (tmp_path / "token").write_text(TOKEN + "\n", encoding="utf-8")
    (tmp_path / "link").write_text("link-secret-for-the-test-0123456789\n", encoding="utf-8")
    hook = f"http://127.0.0.1:{receiver.port}"
    config = {
        "alerting": {
            "engine": {"evaluate_every_seconds": 1, "resolve_after_seconds": 0},
            "dispatch": {"group_wait_seconds": 1, "repeat_every_seconds": 0},
            "rules": {
                "host_down": {"for_seconds": 0},
                "site_unreachable": {"for_seconds": 2},
                "host_shutdown": {"for_seconds": 1},
            },
            "notifiers": [
                {"type": "webhook", "name": "level0", "url": f"{hook}/level0"},
                {"type": "webhook", "name": "level1", "url": f"{hook}/level1"},
            ],
            "routing": {
                "routes": [
                    {
                        "name": "county",
                        "steps": [
                            {"notify": ["notifier:level0"]},
                            {"after_minutes": 0.1, "notify": ["notifier:level1"]},
                        ],
                    }
                ]
            },
            "api_token_file": str(tmp_path / "token"),
            "link_secret_file": str(tmp_path / "link"),
            "public_url": collector.base,
        }
    }
    sites = {
        "sites": [
            {"id": "dongcun", "name": "东村", "hosts": ["pc1", "pc2", "pc3"]},
            {"id": "xicun", "name": "西村", "hosts": ["pc1", "pc2"]},
        ]
    }
    (tmp_path / "collector.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "sites.yaml").write_text(yaml.safe_dump(sites, allow_unicode=True), "utf-8")
    return collector.start()


def api(collector: Collector, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        collector.base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def test_host_down_escalates_and_resolves_shutdown_is_planned(
    procs: Procs, broker: Mosquitto, tmp_path: Path, receiver: Receiver
) -> None:
    collector = start_collector(procs, broker, tmp_path, receiver)
    agents = [Agent(procs, broker, tmp_path, "dongcun", f"pc{i}", 0.5).start() for i in (1, 2, 3)]
    for agent in agents:
        wait_for(
            f"{agent.host} online",
            lambda a=agent: collector.hosts()[("dongcun", a.host)]["state"] == "online",
            30,
        )

    victim = agents[0]
    assert victim.proc is not None
    killed = time.monotonic()
    victim.proc.kill9()
    fired = wait_for(
        "a host_down notification", lambda: receiver.find("firing", "host_down"), 3 * KEEPALIVE
    )
    took = time.monotonic() - killed
    print(f"host_down notification {took:.2f} s after kill -9")  # shown with pytest -s
    (alert,) = fired[0]["alerts"]
    assert alert["labels"] == {"site": "dongcun", "host": "pc1"}
    assert fired[0]["ack_url"].startswith("http")  # a signed acknowledge link
    assert "东村" in fired[0]["text"]
    assert took < 3 * KEEPALIVE

    # Nobody acknowledges: the next step hears it 6 s after it fired.
    escalated = wait_for(
        "escalation to level1", lambda: receiver.find("firing", "host_down", "/level1"), 30
    )
    assert escalated[0]["level"] == 1

    # The link in the message: a page first (a chat app's preview acknowledges nothing), then
    # the button.
    link = fired[0]["ack_url"]
    with urllib.request.urlopen(link, timeout=5) as resp:
        page = resp.read().decode()
    assert "<form" in page and "host_down" in page
    assert not api(collector, "/api/v1/alerts?state=firing")["alerts"][0]["acked_by"]
    token = link.split("token=", 1)[1]
    form = f"token={token}&by=li".encode()
    with urllib.request.urlopen(collector.base + "/api/v1/alerts/ack", form, timeout=5) as resp:
        assert "li" in resp.read().decode()
    assert api(collector, "/api/v1/alerts?state=firing")["alerts"][0]["acked_by"] == "li"

    victim.start()
    wait_for("the resolve", lambda: receiver.find("resolved", "host_down"), 30)
    assert len(receiver.find("firing", "host_down")) == 1  # told once, not again

    # A clean stop is a planned shutdown, its own alert.
    assert agents[2].proc is not None
    agents[2].proc.stop()
    planned = wait_for(
        "a host_shutdown notification", lambda: receiver.find("firing", "host_shutdown"), 30
    )
    assert planned[0]["alerts"][0]["labels"]["host"] == "pc3"
    assert not receiver.find("firing", "site_unreachable")


def test_a_dead_site_is_one_alert_and_an_acknowledged_one_does_not_escalate(
    procs: Procs, broker: Mosquitto, tmp_path: Path, receiver: Receiver
) -> None:
    collector = start_collector(procs, broker, tmp_path, receiver)
    agents = [Agent(procs, broker, tmp_path, "xicun", f"pc{i}", 0.5).start() for i in (1, 2)]
    for agent in agents:
        wait_for(
            f"{agent.host} online",
            lambda a=agent: collector.hosts()[("xicun", a.host)]["state"] == "online",
            30,
        )
    for agent in agents:
        assert agent.proc is not None
        agent.proc.kill9()
    fired = wait_for("the site alert", lambda: receiver.find("firing", "site_unreachable"), 30)
    key = fired[0]["alerts"][0]["key"]
    done = api(collector, "/api/v1/alerts/ack", {"keys": [key], "by": "zhang"})
    assert done["acknowledged"] == [key]

    # Well past the escalation time: no second level, and nothing about the hosts.
    time.sleep(8)  # a negative check needs a span of time; nothing to wait for
    msgs = receiver.messages()
    assert [m["alerts"][0]["rule"] for m in msgs] == ["site_unreachable"], msgs
    alerts = {a["rule"]: a for a in api(collector, "/api/v1/alerts")["alerts"]}
    assert alerts["site_unreachable"]["acked_by"] == "zhang"
    assert alerts["host_down"]["inhibited_by"] == key

    # The collector restarts: it remembers the alert and its acknowledgement, pages nobody.
    assert collector.proc is not None
    collector.proc.stop()
    collector.start()

    def evaluations() -> float:
        return collector.value("outpost_alert_evaluations_total") or 0.0

    wait_for("three evaluations after the restart", lambda: evaluations() >= 3, 30)
    assert len(receiver.messages()) == 1
    alerts = {a["rule"]: a for a in api(collector, "/api/v1/alerts")["alerts"]}
    assert alerts["site_unreachable"]["acked_by"] == "zhang"

    # The command line: the table (exit 0: nothing firing that nobody took), a silence, a test.
    (tmp_path / "token.cli").write_text(TOKEN + "\n", encoding="utf-8")
    cli = [sys.executable, "-m", "outpost", "alerts"]
    url = ["--url", collector.base]
    auth = ["--token-file", str(tmp_path / "token.cli")]
    wide = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run([*cli, "list", *url], capture_output=True, text=True, env=wide)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "site_unreachable" in shown.stdout and "acked by zhang" in shown.stdout
    made = subprocess.run(
        [*cli, "silence", "--site", "xicun", "--minutes", "30", "--reason", "new UPS", *url,
         *auth], capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    listed = subprocess.run([*cli, "silences", *url], capture_output=True, text=True, env=wide)
    assert "new UPS" in listed.stdout
    refused = subprocess.run([*cli, "test", "--route", "county", *url], capture_output=True,
                             text=True)  # fmt: skip
    assert refused.returncode == 2 and "Bearer" in refused.stderr  # no token: refused
    tested = subprocess.run([*cli, "test", "--route", "county", *url, *auth],
                            capture_output=True, text=True)  # fmt: skip
    assert tested.returncode == 0, tested.stderr
    wait_for("the test message", lambda: [m for m in receiver.messages() if m["status"] == "test"],
             15)  # fmt: skip

    for agent in agents:
        agent.start()
    wait_for("one resolve for the site", lambda: receiver.find("resolved", "site_unreachable"), 30)
    assert not receiver.find("firing", "host_down")
