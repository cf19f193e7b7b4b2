"""Enrolment end to end: `outpost ca init` and `outpost enroll` against the real mosquitto,
started from deploy/mosquitto/mosquitto.conf with only its paths and port rewritten, a real
collector and real agents over TLS; then what the broker must refuse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import MOSQUITTO, Collector, Proc, Procs, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from collector.enroll import hash_password
from outpost import wire

pytestmark = pytest.mark.integration

CONF = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "mosquitto.conf"


def adapt_conf(text: str, outpost_dir: Path, data_dir: Path, port: int) -> str:
    """The production config with its paths under tmp and its listener on a free loopback
    port; every other line is kept as it is."""
    out = []
    for line in text.splitlines():
        if line == "listener 8883":
            line = f"listener {port} 127.0.0.1"
        line = line.replace("/etc/mosquitto/outpost/", f"{outpost_dir}/")
        line = line.replace("/var/lib/mosquitto/", f"{data_dir}/")
        out.append(line)
    # As root, mosquitto would drop to its own user, which cannot read the tmp files.
    return "\n".join(out) + "\n" + ("user root\n" if os.geteuid() == 0 else "")


def _outpost(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "outpost", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"outpost {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Client:
    """A bare paho client (MQTT 5, TLS) that records what the broker answered."""

    port: int
    ca: Path
    username: str | None
    password: str | None
    connack: Any = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    pubacks: dict[int, Any] = field(default_factory=dict)
    subacks: dict[int, list[Any]] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    paho: Any = None

    def connect(self, timeout: float = 10) -> Any:
        """Connect; returns the CONNACK reason code (success or refusal)."""
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="probe", protocol=MQTTProtocolVersion.MQTTv5
        )
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        c.tls_set(ca_certs=str(self.ca))
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_a: self.disconnected.set()
        c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, rcs)
        c.on_message = lambda _c, _u, msg: self.received.append(msg.topic)
        self.paho = c
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        return wait_for("a CONNACK", lambda: self.connack, timeout)

    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            client.disconnect()  # no reconnecting: paho's thread ends at once
        self.connack = rc

    def publish(self, topic: str, payload: bytes) -> Any:
        """Publish at QoS 1; returns the PUBACK's reason code."""
        mid = self.paho.publish(topic, payload, qos=1).mid
        return wait_for(f"the PUBACK for {topic}", lambda: self.pubacks.get(mid), 10)

    def subscribe(self, *filters: str) -> list[Any]:
        """Subscribe at QoS 1; returns the SUBACK's reason codes."""
        mid = self.paho.subscribe([(f, 1) for f in filters])[1]
        return list(wait_for("the SUBACK", lambda: self.subacks.get(mid), 10))

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


class Fleet:
    """A CA directory with enrolled users, and the broker on it."""

    def __init__(self, procs: Procs, root: Path):
        self.procs = procs
        self.root = root
        self.dir = root / "mosquitto-outpost"
        self.port = free_port()
        self.url = f"mqtts://127.0.0.1:{self.port}"
        self.broker: Proc | None = None
        self.passwords: dict[str, str] = {}
        _outpost(
            "ca",
            "init",
            "--dir",
            str(self.dir),
            "--server-name",
            "127.0.0.1",
            "--server-name",
            "localhost",
        )

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def enroll(self, name: str, *args: str) -> Path:
        """Enrol into ``root/name`` (the enrolled machine's /etc/outpost); returns its config
        fragment. The password is kept for the probes below."""
        target = self.root / name
        target.mkdir(exist_ok=True)
        shutil.copy(self.ca, target / "ca.crt")
        role = "collector" if "--collector" in args else "agent"
        done = _outpost(
            "enroll",
            "--dir",
            str(self.dir),
            "--broker-url",
            self.url,
            *args,
            "--target-dir",
            str(target),
            "--password-file-out",
            str(target / f"{role}.password"),
            "--out",
            str(target / f"{role}.yaml"),
        )
        assert done.stdout == ""  # everything went to files
        self.passwords[name] = (target / f"{role}.password").read_text().strip()
        assert self.passwords[name] not in done.stderr
        return target / f"{role}.yaml"

    def start(self) -> Fleet:
        data = self.root / "broker-data"
        data.mkdir()
        conf = self.root / "mosquitto.conf"
        conf.write_text(adapt_conf(CONF.read_text(), self.dir, data, self.port))
        self.broker = self.procs.start("mosquitto", [MOSQUITTO, "-c", str(conf)])
        wait_for("mosquitto to listen", lambda: _accepts(self.port), 10)
        return self

    def reload(self) -> None:
        assert self.broker is not None
        mark = self.broker.output().count("Reloading config")
        os.kill(self.broker.pid, signal.SIGHUP)
        wait_for(
            "the broker to reload",
            lambda: self.broker and self.broker.output().count("Reloading config") > mark,
            10,
        )

    def client(self, username: str | None, password: str | None) -> Client:
        return Client(self.port, self.ca, username, password)

    def refused(self, username: str | None, password: str | None) -> bool:
        """Connect and disconnect at once (two clients of one user would take turns
        kicking each other out: the user name is the client id)."""
        client = self.client(username, password)
        rc = client.connect()
        client.close()
        return bool(rc.is_failure)


@pytest.fixture
def fleet(procs: Procs, tmp_path: Path) -> Fleet:
    return Fleet(procs, tmp_path)


def test_the_conf_is_adapted_only_in_paths_and_port(tmp_path: Path) -> None:
    text = CONF.read_text()
    adapted = adapt_conf(text, tmp_path / "o", tmp_path / "d", 1234).splitlines()
    changed = [(a, b) for a, b in zip(text.splitlines(), adapted, strict=False) if a != b]
    assert {a for a, _b in changed} <= {
        "listener 8883",
        "persistence_location /var/lib/mosquitto/",
        *(line for line in text.splitlines() if "/etc/mosquitto/outpost/" in line),
    }
    assert "allow_anonymous false" in adapted and "use_username_as_clientid true" in adapted


def test_mosquitto_accepts_the_password_hash(procs: Procs, tmp_path: Path) -> None:
    """The $7$ hash made with hashlib logs in to the real mosquitto; a wrong password does not."""
    port = free_port()
    (tmp_path / "passwd").write_text(f"u1:{hash_password('right horse battery')}\n")
    (tmp_path / "m.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    procs.start("mosquitto", [MOSQUITTO, "-c", str(tmp_path / "m.conf")])
    wait_for("mosquitto to listen", lambda: _accepts(port), 10)

    def connack(password: str) -> Any:
        got: list[Any] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set("u1", password)
        c.on_connect = lambda cl, _u, _f, rc, _p: (cl.disconnect(), got.append(rc))
        c.connect("127.0.0.1", port)
        c.loop_start()
        try:
            return wait_for("a CONNACK", lambda: got and got[0], 10)
        finally:
            c.loop_stop()

    assert not connack("right horse battery").is_failure
    assert connack("wrong horse battery").is_failure


def _hosts(collector: Collector) -> dict[tuple[str, str], dict[str, Any]]:
    return collector.hosts()


def _counts(collector: Collector) -> dict[str, int]:
    """The collector's message counters by result, and its refusals as ``invalid:<reason>``."""
    status, body = collector.get("/api/v1/collector")
    assert status == 200
    stats = json.loads(body)
    return {**stats["messages"], **{f"invalid:{k}": v for k, v in stats["invalid"].items()}}


def _reason(payload: bytes) -> str:
    try:
        wire.decode_batch(payload, None, wire.Limits())
    except wire.DecodeFailure as exc:
        return exc.reason
    raise AssertionError("a valid batch")


def _batch(site: str, host: str, agent_id: str) -> bytes:
    batch = wire.Batch(
        v=wire.SCHEMA_VERSION,
        site=site,
        host=host,
        agent_id=agent_id,
        boot_id="forged",
        seq=1,
        ts=int(time.time() * 1000),
        interval=1.0,
    )
    payload = wire.encode(batch)
    # Valid: the collector would apply it, if it ever got it.
    wire.decode_batch(payload, wire.TopicParts(site, host, wire.METRICS), wire.Limits())
    return payload


def test_enrolled_agents_report_and_nobody_writes_as_another(
    fleet: Fleet, procs: Procs, tmp_path: Path
) -> None:
    a_yaml = fleet.enroll("host-a", "--site", "site-a", "--host", "srv1")
    b_yaml = fleet.enroll(
        "host-b",
        "--site",
        "site-b",
        "--host",
        "srv2",
        "--cert",
        "--cert-dir",
        str(tmp_path / "host-b"),
    )
    c_yaml = fleet.enroll("coll", "--collector")
    fleet.start()

    # Started and healthy (connected to the broker) before the agents publish: see
    # test_secure_broker.py. Its --broker is the fragment's URL again.
    collector = Collector(procs, fleet, tmp_path, "--config", str(c_yaml)).start()  # type: ignore[arg-type]
    agents = [
        procs.outpost(
            f"agent-{name}",
            "agent",
            "run",
            "--config",
            str(conf),
            "--state-dir",
            str(tmp_path / f"state-{name}"),
            "--interval",
            "0.5",
            "-v",
        )
        for name, conf in (("a", a_yaml), ("b", b_yaml))
    ]

    def settled() -> bool:
        hosts = _hosts(collector)
        return all(
            (hosts.get(key, {}).get("settled_upto") or 0) >= 2
            for key in (("site-a", "srv1"), ("site-b", "srv2"))
        )

    wait_for("both agents' batches acked over TLS", settled, 30)
    for agent in agents:
        assert agent.stop() == 0
    wait_for(
        "both agents offline", lambda: not any(h["up"] for h in _hosts(collector).values()), 10
    )
    before_hosts, before = _hosts(collector), _counts(collector)

    # Agent A's own credentials, used by hand: nothing it writes outside its own topics
    # reaches the collector (MQTT 5 tells it so in the PUBACK).
    a = fleet.client("site-a--srv1", fleet.passwords["host-a"])
    assert not a.connect().is_failure
    for site, host in (("site-b", "srv2"), ("site-b", "ghost"), ("site-a", "srv9")):
        for kind in (wire.METRICS, wire.STATUS):
            rc = a.publish(wire.topic("outpost", site, host, kind), _batch(site, host, "forged"))
            assert rc.is_failure and rc.getName() == "Not authorized", (site, host, kind, rc)
    # Over the broker's message_size_limit (the collector's 256 KiB), even on its own topic,
    # the broker drops it. (QoS 0: mosquitto 2.0.11 answers a QoS 1 one with PUBACK reason
    # 0x95, which paho 2.x takes for a malformed packet; see docs/operations.md.)
    own = wire.topic("outpost", "site-a", "srv1", wire.METRICS)
    a.paho.publish(own, b" " * (256 * 1024 + 1), qos=0)
    # Its own topic works: a refused (invalid) message there is the barrier that shows the
    # collector has seen everything A sent before it (the broker keeps their order).
    assert not a.publish(own, b"{}").is_failure
    barrier = f"invalid:{_reason(b'{}')}"
    wait_for("the barrier", lambda: _counts(collector).get(barrier, 0) > before.get(barrier, 0), 10)
    a.close()
    after = _counts(collector)
    expected = {**before, "invalid": before["invalid"] + 1, barrier: before.get(barrier, 0) + 1}
    assert after == expected, (before, after)
    hosts = _hosts(collector)
    assert set(hosts) == set(before_hosts) == {("site-a", "srv1"), ("site-b", "srv2")}
    for key in ("last_seq", "settled_upto", "lost", "duplicates"):
        assert hosts["site-b", "srv2"].get(key) == before_hosts["site-b", "srv2"].get(key)

    # Nor can A read anything but its own ack. (mosquitto grants every subscription and
    # applies `topic read` to each message it would deliver.) The collector stops first: its
    # user name is its client id, and the probe below takes its credentials.
    assert collector.proc is not None and collector.proc.stop() == 0
    reader = fleet.client("outpost-collector", fleet.passwords["coll"])
    assert not reader.connect().is_failure
    reader.subscribe("outpost/v1/#")
    # The retained statuses the agents left: there is something to read.
    wait_for(
        "the retained statuses",
        lambda: (
            {"outpost/v1/site-a/srv1/status", "outpost/v1/site-b/srv2/status"}
            <= set(reader.received)
        ),
        10,
    )
    a = fleet.client("site-a--srv1", fleet.passwords["host-a"])
    assert not a.connect().is_failure
    a.subscribe("outpost/v1/#", "outpost/v1/site-b/srv2/ack", "outpost/v1/site-a/srv1/ack")
    for host in ("site-b/srv2", "site-a/srv1"):  # A's own ack last: the barrier
        assert not reader.publish(f"outpost/v1/{host}/ack", b"{}").is_failure
    wait_for("A's own ack", lambda: "outpost/v1/site-a/srv1/ack" in a.received, 10)
    assert set(a.received) == {"outpost/v1/site-a/srv1/ack"}, a.received
    a.close()
    reader.close()

    for proc in procs.all:
        for password in fleet.passwords.values():
            assert password not in proc.output(), proc.name


def test_the_broker_refuses_strangers_wrong_and_revoked_passwords(fleet: Fleet) -> None:
    fleet.enroll("host-a", "--site", "site-a", "--host", "srv1")
    fleet.enroll("host-b", "--site", "site-b", "--host", "srv2")
    fleet.start()
    pw_a = fleet.passwords["host-a"]

    assert not fleet.refused("site-a--srv1", pw_a)
    refusals = {
        "unenrolled": fleet.refused("site-c--srv3", pw_a),
        "anonymous": fleet.refused(None, None),
        "wrong password": fleet.refused("site-a--srv1", pw_a[:-1] + "x"),
        "another's password": fleet.refused("site-a--srv1", fleet.passwords["host-b"]),
    }
    assert all(refusals.values()), refusals
    # A client that does not trust the fleet CA never gets as far as MQTT.
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(("127.0.0.1", fleet.port), timeout=5) as raw,
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")

    # Enrolling again rotates the password: the old one stops working at the reload.
    fleet.enroll("host-a", "--site", "site-a", "--host", "srv1")
    assert fleet.passwords["host-a"] != pw_a
    fleet.reload()
    assert fleet.refused("site-a--srv1", pw_a)
    connected = fleet.client("site-a--srv1", fleet.passwords["host-a"])
    assert not connected.connect().is_failure

    # Revoked: after the reload it cannot connect, and mosquitto 2.0 drops its live session.
    _outpost("enroll", "--dir", str(fleet.dir), "--revoke", "--site", "site-a", "--host", "srv1")
    fleet.reload()
    assert connected.disconnected.wait(10)
    connected.close()
    assert fleet.refused("site-a--srv1", fleet.passwords["host-a"])
    # B is untouched.
    assert not fleet.refused("site-b--srv2", fleet.passwords["host-b"])
