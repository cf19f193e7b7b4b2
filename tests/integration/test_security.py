"""The security source end to end: a real agent follows an auth log the test writes (and rotates
both ways, and survives a restart and a kill -9), watches a listening socket and a file the
test changes, and every event reaches the collector's /metrics and /api/v1/events exactly
once. A burst of 10,000 failed logins from one address is one brute-force event."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from harness import Agent, Collector, Mosquitto, Procs, wait_for

SITE, HOST = "xiaozhuang", "town-hall"


def stamp() -> str:
    """A traditional syslog time stamp (local time, no year), as rsyslog writes it."""
    return time.strftime("%b %e %H:%M:%S")


def accepted(user: str) -> str:
    return (
        f"{stamp()} {HOST} sshd[2211]: Accepted publickey for {user} from 198.51.100.7 "
        "port 50100 ssh2: ED25519 SHA256:Qm9vZm9vYmFyYmF6cXV4cXV1eA\n"
    )


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


class Events:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def get(self, **params: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in {"limit": "10000", **params}.items())
        status, body = self.collector.get(f"/api/v1/events?{query}")
        assert status == 200, body
        events: list[dict[str, Any]] = json.loads(body)["events"]
        return events

    def logins(self) -> list[str]:
        return [e["attrs"]["user"] for e in self.get(kind="ssh_login")]

    def wait_logins(self, *users: str) -> None:
        wait_for(
            f"ssh_login events of {users}",
            lambda: set(users) <= set(self.logins()),
            30,
        )


def security_config(tmp_path: Path, auth_log: Path, watched: Path) -> Path:
    cfg = {
        "site": SITE,
        "host": HOST,
        "sources": {
            "probes": {"enabled": False},
            "security": {
                "auth_log": {
                    "path": str(auth_log),
                    "bruteforce": {"threshold": 20, "window_seconds": 3600},
                },
                "ports": {"interval_seconds": 0},
                "files": {"interval_seconds": 0, "paths": [str(watched)]},
            },
        },
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_auth_log_rotation_restart_ports_and_files(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    auth_log = logs / "auth.log"
    auth_log.write_text(accepted("before-start"), encoding="utf-8")  # not reported: history
    watched = tmp_path / "sshd_config"
    watched.write_text("PermitRootLogin no\n", encoding="utf-8")
    config = security_config(tmp_path, auth_log, watched)
    agent = Agent(procs, broker, tmp_path, SITE, HOST, 0.2, "--config", str(config)).start()
    events = Events(collector)

    def check_ok(check: str) -> bool:
        value = collector.value("outpost_security_check_success", site=SITE, host=HOST, check=check)
        return value == 1.0

    for check in ("auth_log", "ports", "files", "boot_clock"):
        wait_for(f"security check {check} to succeed", lambda c=check: check_ok(c), 30)

    # Plain lines, then a rename rotation with a line on each side of it.
    append(auth_log, accepted("u1") + accepted("u2"))
    events.wait_logins("u1", "u2")
    append(auth_log, accepted("u3"))
    auth_log.rename(logs / "auth.log.1")
    auth_log.write_text(accepted("u4"), encoding="utf-8")
    events.wait_logins("u3", "u4")

    # copytruncate: the older rotation moves on, the file is copied, then truncated in place.
    append(auth_log, accepted("u5"))
    (logs / "auth.log.1").rename(logs / "auth.log.2")
    shutil.copyfile(auth_log, logs / "auth.log.1")
    with auth_log.open("r+") as f:
        f.truncate(0)
    append(auth_log, accepted("u6"))
    events.wait_logins("u5", "u6")

    # A clean restart with lines and a rotation while the agent is stopped.
    assert agent.proc is not None
    agent.proc.stop()
    append(auth_log, accepted("u7"))
    auth_log.rename(logs / "auth.log.0")
    auth_log.write_text(accepted("u8"), encoding="utf-8")
    agent.start()
    events.wait_logins("u7", "u8")

    # kill -9 while lines keep coming: the position is stored with the events, so nothing
    # is read twice or skipped.
    for i in range(9, 15):
        append(auth_log, accepted(f"u{i}"))
        if i == 11:
            assert agent.proc is not None
            agent.proc.kill9()
            agent.start()
    events.wait_logins(*(f"u{i}" for i in range(9, 15)))

    # A listening socket appears, then goes.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = str(listener.getsockname()[1])
    try:
        opened = wait_for(
            "listen_port_opened for the test's socket",
            lambda: [
                e for e in events.get(kind="listen_port_opened") if e["attrs"]["port"] == port
            ],
            30,
        )
        assert opened[0]["attrs"]["proto"] == "tcp"
        assert opened[0]["attrs"]["address"] == "127.0.0.1"
        assert opened[0]["attrs"].get("pid") == str(os.getpid())
    finally:
        listener.close()
    wait_for(
        "listen_port_closed for the test's socket",
        lambda: [e for e in events.get(kind="listen_port_closed") if e["attrs"]["port"] == port],
        30,
    )

    # The watched file: content, then mode.
    watched.write_text("PermitRootLogin yes\n", encoding="utf-8")
    changed = wait_for("file_changed (content)", lambda: events.get(kind="file_changed"), 30)
    assert changed[0]["attrs"]["path"] == str(watched)
    assert changed[0]["attrs"]["change"] == "content"
    assert "PermitRootLogin" not in json.dumps(changed)  # never the content
    watched.chmod(0o666)
    wait_for(
        "file_changed (mode)",
        lambda: [e for e in events.get(kind="file_changed") if "mode" in e["attrs"]["change"]],
        30,
    )

    # Exactly once, in the API and in the counters.
    expected = [f"u{i}" for i in range(1, 15)]
    logins = Counter(events.logins())
    assert sorted(logins, key=lambda u: int(u[1:])) == expected, logins
    assert set(logins.values()) == {1}, logins
    labels = {"site": SITE, "host": HOST, "severity": "info"}
    wait_for(
        "outpost_security_events_total for ssh_login",
        lambda: (
            collector.value("outpost_security_events_total", kind="ssh_login", **labels)
            == len(expected)
        ),
        15,
    )
    assert len(events.get(kind="file_changed")) == 2
    for event in events.get(kind="ssh_login"):
        assert event["message"] == f"{event['attrs']['user']} logged in over SSH from " + (
            "198.51.100.7 (publickey)"
        )


def test_bruteforce_burst_is_one_event(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    auth_log = logs / "auth.log"
    auth_log.write_text("", encoding="utf-8")
    watched = tmp_path / "watched"
    watched.write_text("x", encoding="utf-8")
    config = security_config(tmp_path, auth_log, watched)
    Agent(procs, broker, tmp_path, SITE, HOST, 0.2, "--config", str(config)).start()
    events = Events(collector)
    wait_for(
        "the auth_log check",
        lambda: (
            collector.value(
                "outpost_security_check_success", site=SITE, host=HOST, check="auth_log"
            )
            == 1.0
        ),
        30,
    )

    # 10,000 failures from one address in one burst, and 3 from another.
    burst = "".join(
        f"{stamp()} {HOST} sshd[{3000 + i}]: Failed password for root from 203.0.113.9 "
        f"port {40000 + i % 20000} ssh2\n"
        for i in range(10_000)
    )
    others = "".join(
        f"{stamp()} {HOST} sshd[900]: Failed password for invalid user admin{i} from "
        f"192.0.2.44 port {5000 + i} ssh2\n"
        for i in range(3)
    )
    append(auth_log, burst + others)

    def failures_total() -> float | None:
        return collector.value("outpost_security_auth_failures_total", site=SITE, host=HOST)

    wait_for("all 10,003 failures counted", lambda: failures_total() == 10_003.0, 60)
    wait_for("the failures from 192.0.2.44", lambda: events.get(kind="ssh_login_failed"), 30)
    brute = events.get(kind="ssh_bruteforce")
    assert len(brute) == 1, brute
    assert brute[0]["attrs"]["source"] == "203.0.113.9"
    assert int(brute[0]["attrs"]["count"]) >= 20
    assert brute[0]["severity"] == "critical"
    failed = events.get(kind="ssh_login_failed")
    assert {e["attrs"]["source"] for e in failed} == {"192.0.2.44"}
    assert sum(int(e["attrs"]["count"]) for e in failed) == 3
    assert (
        collector.value(
            "outpost_security_events_total",
            site=SITE,
            host=HOST,
            kind="ssh_bruteforce",
            severity="critical",
        )
        == 1.0
    )

    # The same from the command line, as a table; a bad filter is refused with exit 2.
    cli = [sys.executable, "-m", "outpost", "collector", "events", "--url", collector.base]
    wide = {**os.environ, "COLUMNS": "250"}
    shown = subprocess.run(
        [*cli, "--kind", "ssh_bruteforce"], capture_output=True, text=True, env=wide
    )
    assert shown.returncode == 0, shown.stderr
    assert "ssh_bruteforce" in shown.stdout and "203.0.113.9" in shown.stdout
    refused = subprocess.run([*cli, "--since", "yesterday"], capture_output=True, text=True)
    assert refused.returncode == 2 and "ISO 8601" in refused.stderr
