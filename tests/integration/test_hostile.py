"""Hostile input end to end: a bare MQTT client publishes the important cases of the catalogue
(tests/unit/collector/test_hostile.py has all of them) through the real broker to a real
collector while a real agent reports beside it. /metrics answers 200 throughout, passes
``promtool check metrics``, and counts each case exactly; the agent loses nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import Agent, Collector, Mosquitto, Procs, wait_for
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from reliability import record

from collector.catalogue import CATALOGUE
from outpost import wire

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")
SITE = "s1"
TS = 1_767_225_600_000


class Client:
    """A bare paho client (MQTT 5) that publishes at QoS 1 and keeps the last ack it got."""

    def __init__(self, port: int, client_id: str) -> None:
        self.pubacks: set[int] = set()
        self.ack: wire.Ack | None = None
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = lambda *_a: self.subscribed.set()
        self.paho = c
        c.connect("127.0.0.1", port)
        c.loop_start()
        wait_for("the client connected", c.is_connected, 10)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self.lock:
            self.pubacks.add(mid)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.ack = wire.decode_ack(msg.payload, wire.Limits())

    def listen(self, topic: str) -> None:
        self.paho.subscribe(topic, qos=1)
        assert self.subscribed.wait(10), "no SUBACK"

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish each at QoS 1 and wait until the broker acknowledged every one."""
        mids = [self.paho.publish(topic, data, qos=1).mid for topic, data in messages]

        def all_acked() -> bool:
            with self.lock:
                return self.pubacks.issuperset(mids)

        wait_for(f"{len(mids)} PUBACKs", all_acked, 60)

    def settled(self, seqs: range) -> set[int]:
        """Those of ``seqs`` the last ack covers."""
        ack = self.ack
        if ack is None:
            return set()
        return {s for s in seqs if s <= ack.upto or any(lo <= s <= hi for lo, hi in ack.ranges)}

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


class Scraper(threading.Thread):
    """Scrapes /metrics over and over until stopped; keeps every status code."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(daemon=True)
        self.collector = collector
        self.statuses: list[int | str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.statuses.append(self.collector.get("/metrics")[0])
            except OSError as exc:
                self.statuses.append(repr(exc))
            self.halt.wait(0.05)

    def stop(self) -> list[int | str]:
        self.halt.set()
        self.join(10)
        return self.statuses


def doc(n: int, host: str, **fields: Any) -> dict[str, Any]:
    """Batch ``n`` of ``host``'s agent (any field may be given another value, seq too)."""
    body: dict[str, Any] = {
        "v": 1,
        "site": SITE,
        "host": host,
        "agent_id": f"agent-{host}",
        "boot_id": "boot-1",
        "seq": n,
        "ts": TS + n,
        "interval": 15.0,
        "samples": [{"name": "outpost_load1", "value": float(n)}],
    }
    body.update(fields)
    return body


def payload(n: int, host: str = "evil", **fields: Any) -> bytes:
    return json.dumps(doc(n, host, **fields)).encode()


def promtool_ok(text: bytes) -> None:
    """``promtool check metrics`` parses the exposition (exit 1 on a parse error). Exit 3 is
    its naming lint; that is allowed only for names of the catalogue (the agent's own
    ``outpost_cpu_count`` is one), never for anything an agent could inject."""
    if PROMTOOL is None:
        return
    run = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                         timeout=60)  # fmt: skip
    out = (run.stdout + run.stderr).decode()
    if run.returncode == 3:
        named = {line.split(" ", 1)[0] for line in out.splitlines() if line.strip()}
        assert named <= set(CATALOGUE), out
    else:
        assert run.returncode == 0, out


def good_agent_whole(collector: Collector, host: str, at_least: int) -> dict[str, Any] | None:
    """The real agent's record once at least ``at_least`` seqs are settled, all of them
    contiguously, none lost; None until then."""
    h = collector.hosts().get((SITE, host))
    if not h or h["last_seq"] is None or h["last_seq"] < at_least:
        return None
    if h["settled_upto"] != h["last_seq"] or h["lost"] != 0:
        return None
    return h


LABELS = {
    "quote": 'say "hi"',
    "backslash": "C:\\Windows\\",
    "newline": "line1\nline2",
    "inject": '"} outpost_host_up{site="x",host="y"} 1\n# TYPE fake counter',
    "unicode": "城关镇 \U0001f600 \u2028",
    "long": "界" * 256,
}


def catalogue() -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """The hostile messages, and how many of each refusal reason they must count."""
    evil = f"outpost/v1/{SITE}/evil/metrics"
    good = payload(1)
    third = [
        {"name": "outpost_load1", "value": 3.0},
        {"name": "outpost_network_receive_bytes_total", "value": -1.0, "labels": {"if": "eth0"}},
        {"name": "process_cpu_seconds_total", "value": 12345.0},  # not an agent's to export
        *(
            {"name": "vendor_widget_info", "value": 1.0, "labels": {k: v}}
            for k, v in LABELS.items()
        ),
    ]
    bad_label = payload(4, samples=[{"name": "a", "value": 1, "labels": {"k": "PLACEHOLDER"}}])
    msgs: list[tuple[str, bytes]] = [
        (evil, good),
        (evil, payload(2, ts=wire.MAX_TS_MS)),  # far-future ts: accepted
        (evil, payload(3, ts=0, samples=third)),  # far-past ts: accepted, newest by seq
        (evil, payload(2)),  # replayed: a duplicate
        (evil, payload(10**15, outbox_low=10**15, ts=TS)),  # far-future seq: seq_jump
        (evil, b"not json at all"),
        (evil, good[: len(good) // 2]),
        (evil, b"[" * 100_000),
        (evil, payload(4, pad="x" * 300_000)),
        (evil, payload(4, seq="4")),
        (evil, good.replace(b'"value": 1.0', b'"value": NaN')),
        (evil, good.replace(b'"value": 1.0', b'"value": 1e999')),
        (evil, payload(4, site="s2")),
        (evil, bad_label.replace(b"PLACEHOLDER", b"\xff\xfe")),  # invalid UTF-8
        (evil, bad_label.replace(b"PLACEHOLDER", rb"\udc00")),  # a lone surrogate
        ("outpost/v1/s1/../metrics", good),
        ("outpost/v1/s1/evil%2Fgood/metrics", good),
        ("outpost/v1/城关镇/evil/metrics", good),
        ("outpost/v1//evil/metrics", good),
        ("outpost/v1/s1/evil/metrics/extra", good),
        ("outpost/v1/s1/evil/ack", b'{"v":1,"agent_id":"agent-good","upto":999999}'),
    ]
    # A device flood: 300 devices from one agent, 256 kept.
    flood = f"outpost/v1/{SITE}/poller/metrics"
    for seq in range(1, 301):
        dev = payload(seq, "poller", outbox_low=1, device=f"dev-{seq}",
                      samples=[{"name": "outpost_device_up", "value": 1.0}])  # fmt: skip
        msgs.append((flood, dev))
    reasons = {
        "seq_jump": 1,
        "malformed": 5,  # not JSON, truncated, NaN, invalid UTF-8, lone surrogate
        "schema": 2,  # deep nesting (an array, not an object), seq as a string
        "oversized": 1,
        "value": 1,
        "topic_mismatch": 1,
        # .., %2F, unicode, an empty level; the broker never hands the collector the extra
        # level or the ack topic: its subscriptions are <prefix>/v1/+/+/<kind>.
        "topic": 4,
    }
    return msgs, reasons


def test_the_hostile_catalogue_through_the_broker(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    Agent(procs, broker, tmp_path, SITE, "good", 0.3).start()
    wait_for("the real agent's batches", lambda: good_agent_whole(collector, "good", 3), 30)
    scraper = Scraper(collector)
    scraper.start()
    client = Client(broker.port, "hostile")
    msgs, reasons = catalogue()

    def counted() -> bool:
        got = {r: collector.value("outpost_collector_invalid_messages_total", reason=r)
               for r in reasons}  # fmt: skip
        if got != reasons:
            raise ValueError(f"counted {got}")  # shown when the wait times out
        return True

    try:
        client.listen(f"outpost/v1/{SITE}/poller/ack")
        client.publish_all(msgs)
        # Paho itself will not publish to a wildcard topic (the broker would drop the client).
        with pytest.raises(ValueError):
            client.paho.publish("outpost/v1/+/evil/metrics", b"{}", qos=1)
        wait_for("every refusal counted", counted, 30)
        wait_for("every seq of the device flood settled",
                 lambda: client.ack is not None and client.ack.upto == 300, 30)  # fmt: skip
        before = collector.hosts()[SITE, "good"]["last_seq"]
        h = wait_for("the real agent goes on, nothing lost",
                     lambda: good_agent_whole(collector, "good", before + 3), 30)  # fmt: skip
    finally:
        client.close()
        statuses = scraper.stop()
    assert statuses and set(statuses) == {200}, statuses[-5:]

    m = collector.metrics()

    def val(name: str, **labels: str) -> float | None:
        return m.get((name, frozenset(labels.items())))

    assert h["lost"] == 0 and h["dropped"] == 0
    assert val("outpost_host_uptime_seconds", site=SITE, host="good") is not None
    assert val("outpost_agent_rate_limited_messages_total", site=SITE, host="good") is None
    assert val("outpost_collector_lost_messages_total") == 0.0
    # The evil sender: seqs 1-3 applied in seq order whatever their ts; seq 4 refused (its
    # labels) but settled, as its envelope reads; the replayed seq 2 and the refused copy of
    # seq 1 (1e999) are duplicates; the far-future seq is neither applied nor settled.
    evil = collector.hosts()[SITE, "evil"]
    assert (evil["last_seq"], evil["settled_upto"], evil["duplicates"], evil["lost"]) == (
        4, 4, 2, 0,
    )  # fmt: skip
    assert val("outpost_load1", site=SITE, host="evil") == 3.0
    assert val("outpost_host_samples_refused_total", site=SITE, host="evil",
               reason="negative_counter") == 1.0  # fmt: skip
    exported = {v for k, v in LABELS.items()
                if val("vendor_widget_info", site=SITE, host="evil", **{k: v}) == 1.0}  # fmt: skip
    assert exported == set(LABELS.values())
    assert not [k for k, v in m.items() if v == 12345.0]  # process_* from an agent: not shown
    # The device flood: 256 devices kept, the samples of 44 more refused, every seq settled.
    devices = [k for k in m if k[0] == "outpost_host_up" and dict(k[1])["host"].startswith("dev-")]
    assert len(devices) == 256
    assert val("outpost_host_samples_refused_total", site=SITE, host="poller",
               reason="device_limit") == 44.0  # fmt: skip
    status, body = collector.get("/metrics")
    assert status == 200
    promtool_ok(body)
    record(
        "hostile-catalogue",
        sent=len(msgs),
        arrived=len(msgs) - 2,  # the broker routes the extra level and the ack topic nowhere
        duplicates=2,
        lost=0,
        note=f"{sum(reasons.values())} refused, by reason {reasons}; 1 negative counter and the "
        "samples of 44 devices past the cap not kept, every seq of theirs settled; the agent "
        f"beside it lost 0; /metrics 200 in {len(statuses)} scrapes"
        + (", promtool ok" if PROMTOOL else ""),
    )


def test_a_storm_from_one_sender_is_rate_limited_and_the_agent_beside_it_loses_nothing(
    procs: Procs, broker: Mosquitto, tmp_path: Path
) -> None:
    """600 batches at once from one sender against 100 a second with a burst of 100, while a
    real agent reports: the storm is rate-limited and not acknowledged past the limit, the
    agent has every seq settled. Then the sender resends what was not acknowledged, as an
    agent does, and every one of its seqs is settled too: nothing lost."""
    conf = tmp_path / "collector.yaml"
    conf.write_text("limits:\n  sender_rate_per_second: 100\n  sender_burst: 100\n")
    collector = Collector(procs, broker, tmp_path, "--config", str(conf)).start()
    agent_conf = tmp_path / "agent.yaml"
    agent_conf.write_text(f"site: {SITE}\nhost: good\noutbox:\n  resend_after_seconds: 2\n")
    Agent(procs, broker, tmp_path, SITE, "good", 0.2, "--config", str(agent_conf)).start()
    wait_for("the real agent's batches", lambda: good_agent_whole(collector, "good", 3), 30)

    storm, topic = 600, f"outpost/v1/{SITE}/storm/metrics"
    seqs = range(1, storm + 1)
    scraper = Scraper(collector)
    scraper.start()
    client = Client(broker.port, "storm")
    try:
        client.listen(f"outpost/v1/{SITE}/storm/ack")
        started = time.monotonic()
        client.publish_all([(topic, payload(s, "storm", outbox_low=1)) for s in seqs])
        published = storm

        def limited() -> float:
            return collector.value("outpost_agent_rate_limited_messages_total", site=SITE,
                                   host="storm") or 0.0  # fmt: skip

        wait_for("the storm handled", lambda: len(client.settled(seqs)) + limited() == storm, 30)
        first_pass = (len(client.settled(seqs)), int(limited()))
        took = time.monotonic() - started
        assert first_pass[1] > 0, "the storm was not rate-limited"
        assert 100 <= first_pass[0] <= 100 + 100 * took + 1
        during = collector.hosts()[SITE, "good"]["last_seq"]
        wait_for("the agent's seqs settled during the storm",
                 lambda: good_agent_whole(collector, "good", during), 30)  # fmt: skip

        # The sender behaves: it resends what is not acknowledged, every second.
        rounds = 0
        while True:
            todo = sorted(set(seqs) - client.settled(seqs))
            if not todo:
                break
            rounds += 1
            assert rounds <= 30, f"{len(todo)} seqs still not settled"
            client.publish_all([(topic, payload(s, "storm", outbox_low=todo[0])) for s in todo])
            published += len(todo)
            wait_for("more of the storm settled",
                     lambda n=len(todo): len(seqs) - len(client.settled(seqs)) < n, 15)  # fmt: skip
            time.sleep(1.0)  # the sender's own resend interval (pacing, not synchronisation)
    finally:
        client.close()
        statuses = scraper.stop()
    assert statuses and set(statuses) == {200}, statuses[-5:]

    stormy = collector.hosts()[SITE, "storm"]
    assert (stormy["settled_upto"], stormy["lost"], stormy["dropped"]) == (storm, 0, 0)
    total_limited = int(limited())
    # Every publish was applied once, refused by the rate, or a duplicate: nothing else.
    wait_for("the counts add up",
             lambda: storm + int(limited()) + collector.hosts()[SITE, "storm"]["duplicates"]
             == published, 15)  # fmt: skip
    assert collector.value("outpost_collector_messages_total", result="rate_limited") == (
        float(int(limited()))
    )
    end = collector.hosts()[SITE, "good"]["last_seq"]
    good = wait_for("the agent whole at the end",
                    lambda: good_agent_whole(collector, "good", end), 30)  # fmt: skip
    assert collector.value("outpost_agent_rate_limited_messages_total", site=SITE,
                           host="good") is None  # fmt: skip
    assert collector.value("outpost_collector_lost_messages_total") == 0.0
    status, body = collector.get("/metrics")
    assert status == 200
    promtool_ok(body)
    duplicates = collector.hosts()[SITE, "storm"]["duplicates"]
    record(
        "hostile-storm",
        sent=storm,
        arrived=storm,
        duplicates=duplicates,
        lost=0,
        note=f"limit 100/s, burst 100; the storm of {storm} took {took:.2f} s to publish: "
        f"{first_pass[0]} applied, {first_pass[1]} rate-limited (not acknowledged); resent in "
        f"{rounds} rounds ({published} publishes, {total_limited} rate-limited in all), every "
        f"seq settled, lost 0. The real agent beside it: {good['last_seq']} seqs settled, "
        f"lost 0, rate-limited 0; /metrics 200 in {len(statuses)} scrapes",
    )
