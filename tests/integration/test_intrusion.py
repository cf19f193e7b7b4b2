"""The intrusion campaign: against the broker as deploy/mosquitto/mosquitto.conf sets it up (TLS,
passwords, one ACL per agent, made with `outpost ca init` and `outpost enroll`) and against the
collector's HTTP API, every attempt to get in is refused, nothing of it reaches the collector's
state, and each attempt is counted: the broker's refused connections in its log, the API's
refusals in ``outpost_api_requests_refused_total``.

test_enrolment.py already shows that an agent cannot write on another's topics (MQTT 5), read
another's ack, or log in with a wrong, revoked or another's password; this adds the stolen
credentials, MQTT 3.1.1, plaintext on the TLS port, the exact counts, and the HTTP API.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import Collector, Procs, wait_for
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from reliability import record
from test_enrolment import Fleet

from outpost import wire

pytestmark = pytest.mark.integration

TOKEN = "intrusion-test-token-0123456789"
LINK_SECRET = "intrusion-test-link-secret-0123456789"
# mosquitto 2.0 (log_type error/notice, connection_messages true) logs one line per refused
# connection: a refused login, or a TLS handshake that failed (when the bytes came with the
# connection, "Client connection from ... failed: <error>"; when they came later, "OpenSSL
# Error[0]: <error>"). A PUBLISH the ACL denies is logged only at log_type debug.
REFUSED_LOGIN = "disconnected, not authorised."
PLAINTEXT = "SSL routines::wrong version number"
DENIED_PUBLISH = "Denied PUBLISH"


def _batch(site: str, host: str, agent_id: str, seq: int, **extra: Any) -> bytes:
    return wire.encode(
        wire.Batch(
            v=wire.SCHEMA_VERSION, site=site, host=host, agent_id=agent_id, boot_id="forged",
            seq=seq, ts=int(time.time() * 1000), outbox_low=seq, interval=1.0, **extra,
        )
    )  # fmt: skip


def _counts(collector: Collector) -> dict[str, int]:
    """Messages by result, and refusals as ``invalid:<reason>``."""
    status, body = collector.get("/api/v1/collector")
    assert status == 200
    stats = json.loads(body)
    return {**stats["messages"], **{f"invalid:{k}": v for k, v in stats["invalid"].items()}}


def _request(
    collector: Collector, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[int, bytes]:
    req = urllib.request.Request(collector.base + path, data=body or None, method=method)
    for name, value in headers.items():
        req.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _log_count(fleet: Fleet, text: str) -> int:
    assert fleet.broker is not None
    return fleet.broker.output().count(text)


class V311:
    """A bare MQTT 3.1.1 client over TLS: a PUBACK there carries no reason code."""

    def __init__(self, fleet: Fleet, username: str, password: str) -> None:
        self.connack: list[Any] = []
        self.pubacks: dict[int, Any] = {}
        self.lock = threading.Lock()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=username, protocol=MQTTProtocolVersion.MQTTv311
        )
        c.username_pw_set(username, password)
        c.tls_set(ca_certs=str(fleet.ca))
        c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.append(rc)
        c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        c.connect("127.0.0.1", fleet.port)
        c.loop_start()
        self.paho = c
        rc = wait_for("a 3.1.1 CONNACK", lambda: self.connack, 10)[0]
        assert not rc.is_failure, rc

    def publish(self, topic: str, payload: bytes) -> Any:
        mid = self.paho.publish(topic, payload, qos=1).mid
        return wait_for(f"the PUBACK for {topic}", lambda: self.pubacks.get(mid), 10)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def _plaintext_connect(port: int) -> bytes:
    """An MQTT 3.1.1 CONNECT in clear text to the TLS listener; what came back."""
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 1]) + b"p"
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(connect)
        try:
            while chunk := s.recv(1024):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return got


def test_nothing_gets_in_and_every_attempt_is_counted(procs: Procs, tmp_path: Path) -> None:
    fleet = Fleet(procs, tmp_path)
    fleet.enroll("host-a", "--site", "site-a", "--host", "srv1")
    fleet.enroll("host-b", "--site", "site-b", "--host", "srv2")
    c_yaml = fleet.enroll("coll", "--collector")
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    (tmp_path / "link.secret").write_text(LINK_SECRET + "\n")
    c_yaml.write_text(
        c_yaml.read_text()
        + f"alerting:\n  api_token_file: {tmp_path / 'api.token'}\n"
        + f"  link_secret_file: {tmp_path / 'link.secret'}\n"
        + "  public_url: http://127.0.0.1:9468\n"
    )
    fleet.start()
    collector = Collector(procs, fleet, tmp_path, "--config", str(c_yaml)).start()  # type: ignore[arg-type]

    # The genuine agent A reports once: the state the intruders try to change.
    a = fleet.client("site-a--srv1", fleet.passwords["host-a"])
    assert not a.connect().is_failure
    own_a = wire.topic("outpost", "site-a", "srv1", wire.METRICS)
    assert not a.publish(own_a, _batch("site-a", "srv1", "agent-a", 1)).is_failure
    a.close()
    wait_for("A's batch applied", lambda: _counts(collector).get("accepted") == 1, 20)
    before, hosts_before = _counts(collector), collector.hosts()
    assert set(hosts_before) == {("site-a", "srv1")}
    logins, plain = _log_count(fleet, REFUSED_LOGIN), _log_count(fleet, PLAINTEXT)

    # 1. Who may not connect at all: refused at CONNACK (MQTT 5), or at the TLS handshake.
    strangers = {
        "anonymous": (None, None),
        "wrong password": ("site-a--srv1", "not-the-password"),
        "unenrolled user": ("site-c--srv3", fleet.passwords["host-a"]),
    }
    for who, (user, password) in strangers.items():
        assert fleet.refused(user, password), who
    assert _plaintext_connect(fleet.port) == b""  # no CONNACK: the TLS layer drops it
    wait_for(
        "one log line per refused connection",
        lambda: (
            _log_count(fleet, REFUSED_LOGIN) - logins == len(strangers)
            and _log_count(fleet, PLAINTEXT) - plain == 1
        ),
        10,
    )

    # 2. B's stolen credentials, MQTT 5: A's topics and anything outside B's ACL are refused
    # in the PUBACK; B's own topic takes the message, and the collector refuses the forged
    # identity in it (the payload names A, the topic B).
    b = fleet.client("site-b--srv2", fleet.passwords["host-b"])
    assert not b.connect().is_failure
    forged = _batch("site-a", "srv1", "agent-a", 2)
    outside = [
        wire.topic("outpost", "site-a", "srv1", wire.METRICS),
        wire.topic("outpost", "site-a", "srv1", wire.EVENTS),
        wire.topic("outpost", "site-a", "srv1", wire.STATUS),
        wire.topic("outpost", "site-b", "srv2", wire.ACK),  # B may only read its ack
        wire.topic("outpost", "site-b", "srv2", wire.METRICS) + "/x",
        "outpost/v2/site-a/srv1/metrics",
        "elsewhere",
    ]
    for topic in outside:
        rc = b.publish(topic, forged)
        assert rc.is_failure and rc.getName() == "Not authorized", (topic, rc)
    own_b = wire.topic("outpost", "site-b", "srv2", wire.METRICS)
    assert not b.publish(own_b, forged).is_failure
    wait_for(
        "the forged identity refused",
        lambda: _counts(collector).get("invalid:topic_mismatch", 0) == 1,
        10,
    )
    b.close()

    # 3. The same credentials over MQTT 3.1.1: a refused publish is acknowledged all the same
    # and silently dropped. A refused message on B's own topic is the barrier: the broker
    # keeps one client's order, so the collector has seen all of them once it counts that.
    v311 = V311(fleet, "site-b--srv2", fleet.passwords["host-b"])
    dropped = [
        wire.topic("outpost", "site-a", "srv1", wire.METRICS),
        wire.topic("outpost", "site-a", "srv1", wire.EVENTS),
        wire.topic("outpost", "site-a", "srv1", wire.STATUS),
    ]
    for topic in dropped:
        assert not v311.publish(topic, forged).is_failure  # "success": 3.1.1 cannot say no
    assert not v311.publish(own_b, b"{}").is_failure
    wait_for("the barrier", lambda: _counts(collector).get("invalid:schema", 0) == 1, 10)
    v311.close()

    after = _counts(collector)
    expected = {
        **before,
        "invalid": before["invalid"] + 2,
        "invalid:topic_mismatch": 1,
        "invalid:schema": 1,
    }
    assert after == expected, (before, after)
    hosts = collector.hosts()
    assert set(hosts) == {("site-a", "srv1")}
    for key in ("agent_id", "boot_id", "last_seq", "settled_upto", "lost", "duplicates"):
        assert hosts["site-a", "srv1"][key] == hosts_before["site-a", "srv1"][key], key
    assert hosts["site-a", "srv1"]["last_seq"] == 1
    status, body = collector.get("/api/v1/events")
    assert status == 200 and json.loads(body)["count"] == 0
    # The deployed config does not log denied publishes (see the module constants).
    assert _log_count(fleet, DENIED_PUBLISH) == 0
    assert _log_count(fleet, REFUSED_LOGIN) - logins == len(strangers)
    assert _log_count(fleet, PLAINTEXT) - plain == 1
    connects = len(strangers) + 1
    record(
        "intrusion-connect", sent=connects, arrived=0, duplicates=0, lost=0,
        note=f"anonymous, wrong password, unenrolled user, plaintext on the TLS port: "
        f"{connects} connections refused, {connects} lines in mosquitto's log",
    )  # fmt: skip
    record(
        "intrusion-publish", sent=len(outside) + len(dropped) + 1, arrived=0, duplicates=0,
        lost=0, note=f"stolen credentials of another agent: {len(outside)} MQTT 5 publishes "
        f"refused (PUBACK 'Not authorized'), {len(dropped)} MQTT 3.1.1 publishes dropped by "
        "the broker, 1 forged identity on the agent's own topic refused by the collector "
        "(topic_mismatch)",
    )  # fmt: skip

    # 4. The HTTP API: every write without the token, or with a wrong one, is refused and
    # counted; nothing changes. One silence, made with the token, is the thing to delete.
    auth = {"Authorization": f"Bearer {TOKEN}", "Content_Type": "application/json"}
    made = json.dumps({"site": "site-a", "minutes": 60, "reason": "works"}).encode()
    status, body = _request(collector, "POST", "/api/v1/silences", made, **auth)
    assert status == 201, body
    silence_id = json.loads(body)["silence"]["id"]
    silences = json.loads(collector.get("/api/v1/silences")[1])["silences"]
    alerts = json.loads(collector.get("/api/v1/alerts")[1])["alerts"]
    writes = [
        ("POST", "/api/v1/alerts/ack", {"keys": ["anything"], "by": "intruder"}),
        ("POST", "/api/v1/alerts/unack", {"keys": ["anything"]}),
        ("POST", "/api/v1/silences", {"site": "site-a", "minutes": 600, "reason": "hidden"}),
        ("DELETE", f"/api/v1/silences/{silence_id}", {}),
        ("POST", "/api/v1/alerts/test", {"route": "default"}),
    ]
    wrong_headers = [f"Bearer {TOKEN[:-1]}x", f"Token {TOKEN}"]  # wrong token; wrong scheme
    for method, path, data in writes:
        payload = json.dumps(data).encode()
        status, body = _request(collector, method, path, payload, Content_Type="application/json")
        assert status == 401, (method, path, body)
        for header in wrong_headers:
            status, body = _request(
                collector, method, path, payload, Authorization=header,
                Content_Type="application/json",
            )  # fmt: skip
            assert status == 401, (method, path, header, body)
    from collector.alerting.links import sign

    forged_link = sign(b"not-the-collector's-secret-at-all", ["anything"], time.time() + 3600)
    status, _ = _request(collector, "GET", f"/api/v1/alerts/ack?token={forged_link}")
    assert status == 400
    form = f"token={forged_link}&by=intruder".encode()
    status, _ = _request(
        collector, "POST", "/api/v1/alerts/ack", form,
        Content_Type="application/x-www-form-urlencoded",
    )  # fmt: skip
    assert status == 400
    assert json.loads(collector.get("/api/v1/silences")[1])["silences"] == silences
    assert json.loads(collector.get("/api/v1/alerts")[1])["alerts"] == alerts
    refused = {
        reason: collector.value("outpost_api_requests_refused_total", reason=reason)
        for reason in ("no_token", "wrong_token", "writes_off", "bad_link")
    }
    assert refused == {
        "no_token": len(writes),
        "wrong_token": len(writes) * len(wrong_headers),
        "writes_off": 0,
        "bad_link": 2,
    }
    attempts = len(writes) * (1 + len(wrong_headers)) + 2
    record(
        "intrusion-http-api", sent=attempts, arrived=0, duplicates=0, lost=0,
        note=f"{len(writes)} write endpoints without a token, with a wrong token and a wrong "
        "scheme, and a forged acknowledge link shown and pressed: every one refused (401/400) "
        "and counted in outpost_api_requests_refused_total",
    )  # fmt: skip


def test_with_writes_off_every_write_is_refused_and_counted(tmp_path: Path) -> None:
    """No api_token_file: the write endpoints answer 403, counted as ``writes_off``, whatever
    the request carries."""
    from prometheus_client import CollectorRegistry

    from collector.alerting import api
    from collector.alerting.config import AlertingConfig
    from collector.alerting.exporter import AlertsCollector
    from collector.alerting.service import AlertService
    from collector.inventory import Inventory

    service = AlertService(AlertingConfig(), Inventory(), tmp_path, series=lambda: [])
    registry = CollectorRegistry()
    registry.register(AlertsCollector(service))
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x" * 20}):
        reply = api.handle(service, "POST", "/api/v1/silences", "", headers, b'{"minutes": 5}')
        assert reply.code == 403
    reply = api.handle(service, "GET", "/api/v1/alerts/ack", "token=x", {}, b"")
    assert reply.code == 400  # links are not configured either
    values = {
        reason: registry.get_sample_value("outpost_api_requests_refused_total", {"reason": reason})
        for reason in api.REFUSED_REASONS
    }
    assert values == {"no_token": 0, "wrong_token": 0, "writes_off": 3, "bad_link": 1}
    assert service.silences_json() == []
