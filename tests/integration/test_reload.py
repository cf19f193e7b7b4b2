"""systemd notifications and SIGHUP reloads with real processes: each process gets a
NOTIFY_SOCKET of its own (a datagram socket in the test) and a WATCHDOG_USEC.

- the agent says READY=1 and keeps sending WATCHDOG=1; SIGHUP with a shorter interval and
  new broker settings speeds its cycles up and reconnects, while the seq goes on with
  nothing lost; SIGHUP with a broken file is refused (logged, still running as before);
- the collector says READY=1 and keeps sending WATCHDOG=1; SIGHUP with a changed sites.yaml
  and a changed route shows the new host at once and tells the new notifier, while the alert
  already firing stays (told once); a broken sites.yaml is refused.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Collector, Mosquitto, Proc, Procs, free_port, wait_for


class NotifySocket:
    """What a process sent to its NOTIFY_SOCKET, with when it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.got.append((time.monotonic(), data.decode()))

    def env(self, watchdog_usec: int) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}

    def lines(self, since: float = 0.0) -> list[str]:
        with self.lock:
            return [text for at, text in self.got if at >= since]

    def count(self, first_line: str, since: float = 0.0) -> int:
        return sum(1 for text in self.lines(since) if text.split("\n")[0] == first_line)

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_sockets() -> Iterator[list[NotifySocket]]:
    made: list[NotifySocket] = []
    yield made
    for sock in made:
        sock.close()


def hup(proc: Proc | None) -> None:
    assert proc is not None and proc.running()
    os.kill(proc.pid, signal.SIGHUP)


def wait_reloaded(notes: NotifySocket, since: float) -> None:
    """RELOADING=1 (with MONOTONIC_USEC), then READY=1: the reload is over."""

    def done() -> bool:
        texts = notes.lines(since)
        starts = [i for i, t in enumerate(texts) if t.startswith("RELOADING=1\nMONOTONIC_USEC=")]
        return bool(starts) and any(t.startswith("READY=1") for t in texts[starts[0] :])

    wait_for("RELOADING=1 then READY=1", done, 10)


# --- the agent --------------------------------------------------------------------------------


def agent_config(tmp_path: Path, url: str, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "site": "hill",
        "host": "pc1",
        "state_dir": str(tmp_path / "agent"),
        "interval_seconds": 1.0,
        "broker": {"url": url},
        "sources": {"security": {"enabled": False}},
    }
    config.update(changes)
    return config


def test_the_agent_notifies_and_reloads_without_losing_its_outbox(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path,
    notify_sockets: list[NotifySocket],
) -> None:  # fmt: skip
    notes = NotifySocket(tmp_path / "agent.sock")
    notify_sockets.append(notes)
    conf = tmp_path / "agent.yaml"
    conf.write_text(yaml.safe_dump(agent_config(tmp_path, broker.url)))
    agent = procs.outpost(
        "agent", "agent", "run", "--config", str(conf), "-v", env=notes.env(1_000_000)
    )
    key = ("hill", "pc1")
    wait_for("READY=1 from the agent", lambda: notes.count("READY=1"), 15)
    ready = next(t for t in notes.lines() if t.startswith("READY=1"))
    assert "STATUS=" in ready and "rows in the outbox" in ready
    wait_for("the agent online", lambda: collector.hosts()[key]["state"] == "online", 15)
    wait_for("watchdog pings", lambda: notes.count("WATCHDOG=1") >= 3, 5)  # every 0.5 s
    before = collector.hosts()[key]

    # A shorter interval and other broker settings: applied live, the publisher reconnects.
    faster = agent_config(
        tmp_path,
        broker.url,
        interval_seconds=0.2,
        broker={"url": broker.url, "keepalive_seconds": 5},
    )
    conf.write_text(yaml.safe_dump(faster))
    sent = time.monotonic()
    hup(agent)
    wait_reloaded(notes, sent)
    wait_for("the reload in the log", lambda: "reload: applied" in agent.output(), 5)
    assert "interval_seconds" in agent.output() and "reconnecting" in agent.output()
    wait_for("the agent online again", lambda: collector.hosts()[key]["state"] == "online", 10)
    # At one cycle a second, 10 more would take 10 s; at 0.2 s they take about 2.
    start = collector.hosts()[key]["last_seq"]
    wait_for("five cycles a second", lambda: collector.hosts()[key]["last_seq"] >= start + 10, 6)
    after = collector.hosts()[key]
    assert after["agent_id"] == before["agent_id"]  # the same outbox, not a new one
    assert after["last_seq"] > before["last_seq"]
    assert after["lost"] == 0 and after["dropped"] == 0

    # A broken file: refused with the file and the key, the process goes on as it was.
    conf.write_text(yaml.safe_dump(agent_config(tmp_path, broker.url, interval_seconds=-1)))
    sent = time.monotonic()
    hup(agent)
    wait_reloaded(notes, sent)
    wait_for("the refusal in the log", lambda: "reload refused" in agent.output(), 5)
    assert f"{conf}: interval_seconds: found -1" in agent.output()
    refused = [t for t in notes.lines(sent) if t.startswith("READY=1")]
    assert "reload refused" in refused[0]
    assert agent.running()
    start = collector.hosts()[key]["last_seq"]
    wait_for("still five a second", lambda: collector.hosts()[key]["last_seq"] >= start + 10, 6)

    # The watchdog never stopped: pings went on through both reloads.
    pings = notes.count("WATCHDOG=1", sent)
    wait_for("more watchdog pings", lambda: notes.count("WATCHDOG=1", sent) >= pings + 2, 3)
    assert agent.stop() == 0
    wait_for("STOPPING=1, the last word", lambda: notes.lines()[-1] == "STOPPING=1", 2)
    final = wait_for(
        "everything delivered", lambda: (h := collector.hosts()[key])["state"] == "shutdown" and h,
        10,
    )  # fmt: skip
    assert final["lost"] == 0 and final["dropped"] == 0


# --- the collector ----------------------------------------------------------------------------


class Receiver:
    """A webhook endpoint keeping every JSON body posted to it, by path."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.got.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, path: str, host: str) -> list[dict[str, Any]]:
        return [
            m
            for p, m in list(self.got)
            if p == path
            and m["status"] == "firing"
            and any(a["labels"].get("host") == host for a in m["alerts"])
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def collector_config(receiver: Receiver, path: str) -> dict[str, Any]:
    hook = f"http://127.0.0.1:{receiver.port}"
    return {
        "alerting": {
            "engine": {"evaluate_every_seconds": 1, "resolve_after_seconds": 0},
            "dispatch": {"group_wait_seconds": 0, "repeat_every_seconds": 0},
            # Hosts sites.yaml lists that never reported: an alert at once, no agent needed.
            "rules": {"host_never_reported": {"for_seconds": 0}},
            "notifiers": [{"type": "webhook", "name": "hook", "url": f"{hook}{path}"}],
            "routing": {"routes": [{"name": "all", "steps": [{"notify": ["notifier:hook"]}]}]},
        }
    }


def sites(*hosts: str) -> dict[str, Any]:
    return {"sites": [{"id": "dongcun", "name": "东村", "hosts": list(hosts)}]}


def test_the_collector_notifies_and_reloads_its_inventory_and_alerting(
    procs: Procs, broker: Mosquitto, tmp_path: Path, receiver: Receiver,
    notify_sockets: list[NotifySocket],
) -> None:  # fmt: skip
    notes = NotifySocket(tmp_path / "collector.sock")
    notify_sockets.append(notes)
    conf, inventory = tmp_path / "collector.yaml", tmp_path / "sites.yaml"
    conf.write_text(yaml.safe_dump(collector_config(receiver, "/before")))
    inventory.write_text(yaml.safe_dump(sites("pc1"), allow_unicode=True), encoding="utf-8")
    collector = Collector(procs, broker, tmp_path, "--config", str(conf), "--sites", str(inventory))
    collector.proc = procs.outpost(
        "collector", "collector", "run", "--broker", broker.url, "--config", str(conf),
        "--sites", str(inventory), "--listen", f"127.0.0.1:{collector.port}",
        "--state-dir", str(collector.state), "-v", env=notes.env(2_000_000),
    )  # fmt: skip
    wait_for("READY=1 from the collector", lambda: notes.count("READY=1"), 20)
    assert collector.get("/healthz")[0] == 200  # READY=1 came once it was listening
    wait_for("pc1's alert told", lambda: receiver.firing("/before", "pc1"), 10)
    wait_for("watchdog pings", lambda: notes.count("WATCHDOG=1") >= 2, 5)  # every second

    def alert(host: str) -> dict[str, Any] | None:
        status, body = collector.get("/api/v1/alerts")
        assert status == 200
        found = [a for a in json.loads(body)["alerts"] if a["host"] == host]
        return found[0] if found else None

    old = alert("pc1")
    assert old is not None and old["state"] == "firing"

    # A new host in sites.yaml and a new address for the notifier, applied live.
    inventory.write_text(yaml.safe_dump(sites("pc1", "pc9"), allow_unicode=True), "utf-8")
    conf.write_text(yaml.safe_dump(collector_config(receiver, "/after")))
    sent = time.monotonic()
    hup(collector.proc)
    wait_reloaded(notes, sent)
    hosts = collector.hosts()
    assert hosts[("dongcun", "pc9")]["expected"] is True
    assert hosts[("dongcun", "pc9")]["state"] == "never_reported"
    wait_for("pc9's alert told at the new address", lambda: receiver.firing("/after", "pc9"), 10)
    kept = alert("pc1")
    assert kept is not None and kept["state"] == "firing"
    assert kept["key"] == old["key"] and kept["fired_at"] == old["fired_at"]
    assert len(receiver.firing("/before", "pc1")) == 1 and not receiver.firing("/after", "pc1")

    # A broken sites.yaml: refused with the file and the key; the last good one stays.
    inventory.write_text(yaml.safe_dump(sites("pc1", "Not A Slug")), "utf-8")
    sent = time.monotonic()
    hup(collector.proc)
    wait_reloaded(notes, sent)
    wait_for("the refusal in the log", lambda: "reload refused" in collector.proc.output(), 5)
    assert f"{inventory}: sites[0].hosts[1]: found 'Not A Slug'" in collector.proc.output()
    assert ("dongcun", "pc9") in collector.hosts()
    assert collector.proc.running()

    pings = notes.count("WATCHDOG=1", sent)
    wait_for("more watchdog pings", lambda: notes.count("WATCHDOG=1", sent) >= pings + 2, 4)
    assert collector.proc.stop() == 0
    wait_for("STOPPING=1, the last word", lambda: notes.lines()[-1] == "STOPPING=1", 2)
