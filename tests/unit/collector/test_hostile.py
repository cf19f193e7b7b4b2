"""The hostile-input catalogue, through ``Ingest.handle``: every kind of bad, absurd or abusive
message one sender can publish, each with the exact counter it moves, and with proof that what
was already accepted from another agent is still there (its samples exported, its seqs settled,
nothing lost).

Also the per-sender limits (rate, devices, series, seq jumps), the merging of a cycle sent as
several chunks, and an exposition that stays valid whatever the labels hold.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.cycle import Identity, encode_batches, with_delivery_state
from collector.exporter import FleetCollector
from collector.ingest import MAX_SENDERS, Ingest, SenderBuckets
from collector.seqtrack import SeqTrack
from collector.state import (
    CYCLE_SEQ_SPAN,
    MAX_AGENTS_PER_SENDER,
    SEQ_JUMP_PER_SECOND,
    FleetState,
)
from outpost import wire

T0 = 1_700_000_000.0
TS = 1_700_000_000_000
SITE = "s1"
GOOD, EVIL = "good", "evil"
GOOD_TOPIC = f"outpost/v1/{SITE}/{GOOD}/metrics"
EVIL_TOPIC = f"outpost/v1/{SITE}/{EVIL}/metrics"
EVIL_EVENTS = f"outpost/v1/{SITE}/{EVIL}/events"
EVIL_STATUS = f"outpost/v1/{SITE}/{EVIL}/status"
PROMTOOL = shutil.which("promtool")


def doc(n: int, host: str = EVIL, **fields: Any) -> dict[str, Any]:
    """Batch ``n`` of ``host``'s agent (any field may be given another value, seq too)."""
    body: dict[str, Any] = {
        "v": 1,
        "site": SITE,
        "host": host,
        "agent_id": f"agent-{host}",
        "boot_id": "boot-1",
        "seq": n,
        "ts": TS + n * 1000,
        "interval": 15.0,
        "samples": [{"name": "outpost_load1", "value": float(n)}],
    }
    body.update(fields)
    return body


def payload(n: int, host: str = EVIL, **fields: Any) -> bytes:
    return json.dumps(doc(n, host, **fields)).encode()


def sample(name: str, value: float, **labels: str) -> dict[str, Any]:
    return {"name": name, "value": value, "labels": labels}


@dataclass
class World:
    """A collector whose good agent has had seq 1 accepted, and its /metrics."""

    ingest: Ingest
    registry: CollectorRegistry
    good_seq: int = 1
    now: float = T0
    scrapes: list[str] = field(default_factory=list)

    def handle(self, topic: str, data: bytes, at: float | None = None) -> str:
        return self.ingest.handle(topic, data, self.now if at is None else at)

    def scrape(self) -> str:
        text = generate_latest(self.registry).decode()
        self.scrapes.append(text)
        return text

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def good_reports(self) -> None:
        """The good agent's next batch is accepted and exported, and nothing of it was lost."""
        self.good_seq += 1
        assert self.handle(GOOD_TOPIC, payload(self.good_seq, GOOD)) == "accepted"
        self.assert_good_intact()

    def assert_good_intact(self) -> None:
        track = self.ingest.state.track("agent-good")
        assert (track.upto, track.above, track.lost) == (self.good_seq, [], 0)
        assert self.ingest.state.lost_total == 0
        assert self.value("outpost_load1", site=SITE, host=GOOD) == float(self.good_seq)
        assert self.value("outpost_host_up", site=SITE, host=GOOD) == 1.0
        families = list(text_string_to_metric_families(self.scrape()))
        names = [f.name for f in families]
        assert len(names) == len(set(names)), "a family is exported twice"


def make_world(limits: wire.Limits | None = None, **state: Any) -> World:
    ingest = Ingest(FleetState(stale_after=60, **state), limits or wire.Limits())
    registry = CollectorRegistry()
    registry.register(FleetCollector(ingest, clock=lambda: T0 + 1))
    ProcessCollector(registry=registry)  # the collector's registry has it too
    world = World(ingest, registry)
    assert world.handle(GOOD_TOPIC, payload(1, GOOD)) == "accepted"
    return world


@pytest.fixture
def world() -> World:
    return make_world()


def counters(world: World) -> dict[str, Any]:
    """Everything a hostile message may move, in one comparable value."""
    ingest = world.ingest
    return {
        "messages": {k: v for k, v in ingest.messages.items() if v},
        "invalid": dict(ingest.invalid),
        "refused": dict(ingest.state.refused),
        "rate_limited": dict(ingest.rate_limited),
    }


def moved(
    accepted: int = 1,
    duplicate: int = 0,
    invalid: dict[str, int] | None = None,
    refused: dict[tuple[str, str, str], int] | None = None,
) -> dict[str, Any]:
    """The expected counters after the good agent's seq 1 and one hostile message."""
    messages = {
        "accepted": accepted,
        "duplicate": duplicate,
        "invalid": sum((invalid or {}).values()),
    }
    return {
        "messages": {k: v for k, v in messages.items() if v},
        "invalid": invalid or {},
        "refused": refused or {},
        "rate_limited": {},
    }


# --- the catalogue: one message from the evil sender, one counter moved -------------------

VALID = payload(1)
DEEP = 100_000


def _with_value(raw: str) -> bytes:
    return payload(1).replace(b'"value": 1.0', b'"value": ' + raw.encode())


def _envelope(extra: str) -> bytes:
    """An envelope with raw JSON ``extra`` after it, for nesting that json.dumps cannot write."""
    head = '{"v":1,"site":"s1","host":"evil","agent_id":"agent-evil","boot_id":"","seq":1,'
    return (head + f'"ts":{TS},' + extra + "}").encode()


REFUSED: list[tuple[str, str, bytes, str]] = [
    # (id, topic, payload, reason)
    ("not-json", EVIL_TOPIC, b"hello, collector", "malformed"),
    ("empty", EVIL_TOPIC, b"", "malformed"),
    ("truncated", EVIL_TOPIC, VALID[: len(VALID) // 2], "malformed"),
    ("trailing-garbage", EVIL_TOPIC, VALID + b"}", "malformed"),
    ("json-array", EVIL_TOPIC, b"[1, 2, 3]", "schema"),
    ("json-string", EVIL_TOPIC, b'"batch"', "schema"),
    ("deep-arrays", EVIL_TOPIC, b"[" * DEEP, "schema"),
    ("deep-objects", EVIL_TOPIC, b'{"":' * (DEEP // 2), "malformed"),  # 200 KB: under the limit
    ("deep-in-unknown-field", EVIL_TOPIC, _envelope('"x":' + "[" * DEEP + "]" * DEEP), "malformed"),
    (
        "deep-in-a-sample",
        EVIL_TOPIC,
        _envelope('"samples":[{"name":"a","value":1,"z":' + "[" * DEEP + "]" * DEEP + "}]"),
        "malformed",
    ),
    (
        "deep-in-labels",
        EVIL_TOPIC,
        _envelope(
            '"samples":[{"name":"a","value":1,"labels":{"k":' + "[" * DEEP + "]" * DEEP + "}}]"
        ),
        "label",
    ),
    ("oversized", EVIL_TOPIC, payload(1, pad="x" * 300_000), "oversized"),
    ("version-2", EVIL_TOPIC, payload(1, v=2), "version"),
    ("seq-as-string", EVIL_TOPIC, payload(1, seq="1"), "schema"),
    ("seq-as-float", EVIL_TOPIC, payload(1, seq=1.5), "schema"),
    ("seq-beyond-int64", EVIL_TOPIC, payload(2**64, outbox_low=2**64, ts=TS), "schema"),
    ("seq-zero", EVIL_TOPIC, payload(0), "schema"),
    ("ts-as-string", EVIL_TOPIC, payload(1, ts="now"), "schema"),
    ("samples-as-object", EVIL_TOPIC, payload(1, samples={"a": 1}), "schema"),
    (
        "labels-as-list",
        EVIL_TOPIC,
        payload(1, samples=[{"name": "a", "value": 1, "labels": []}]),
        "label",
    ),
    ("label-value-number", EVIL_TOPIC, payload(1, samples=[sample("a", 1, k=1)]), "label"),  # type: ignore[arg-type]
    ("value-as-string", EVIL_TOPIC, _with_value('"1"'), "value"),
    ("value-null", EVIL_TOPIC, _with_value("null"), "value"),
    ("value-NaN", EVIL_TOPIC, _with_value("NaN"), "malformed"),
    ("value-Infinity", EVIL_TOPIC, _with_value("Infinity"), "malformed"),
    ("value-quoted-NaN", EVIL_TOPIC, _with_value('"NaN"'), "value"),
    ("value-1e999", EVIL_TOPIC, _with_value("1e999"), "value"),
    ("value-minus-1e999", EVIL_TOPIC, _with_value("-1e999"), "value"),
    (
        "interval-1e999",
        EVIL_TOPIC,
        payload(1).replace(b'"interval": 15.0', b'"interval": 1e999'),
        "schema",
    ),
    ("interval-a-year", EVIL_TOPIC, payload(1, interval=365 * 86400.0), "value"),
    ("ts-negative", EVIL_TOPIC, payload(1, ts=-1), "value"),
    ("ts-past-year-9999", EVIL_TOPIC, payload(1, ts=wire.MAX_TS_MS + 1), "value"),
    (
        "sample-ts-negative",
        EVIL_TOPIC,
        payload(1, samples=[{"name": "a", "value": 1, "ts": -5}]),
        "value",
    ),
    ("site-mismatch", EVIL_TOPIC, payload(1, site="s2"), "topic_mismatch"),
    ("host-mismatch", EVIL_TOPIC, payload(1, host=GOOD), "topic_mismatch"),
    ("site-not-a-slug", EVIL_TOPIC, payload(1, site="S1/../x"), "identity"),
    ("device-not-a-slug", EVIL_TOPIC, payload(1, device="a/b"), "identity"),
    ("device-wildcard", EVIL_TOPIC, payload(1, device="+"), "identity"),
    ("agent-id-empty", EVIL_TOPIC, payload(1, agent_id=""), "schema"),
    ("agent-id-too-long", EVIL_TOPIC, payload(1, agent_id="a" * 65), "schema"),
    ("metric-name-bad", EVIL_TOPIC, payload(1, samples=[sample("1bad name", 1)]), "name"),
    ("metric-name-newline", EVIL_TOPIC, payload(1, samples=[sample("a\nb", 1)]), "name"),
    ("label-name-reserved", EVIL_TOPIC, payload(1, samples=[sample("a", 1, host="x")]), "label"),
    ("label-name-dunder", EVIL_TOPIC, payload(1, samples=[sample("a", 1, __name__="x")]), "label"),
    ("label-name-quote", EVIL_TOPIC, payload(1, samples=[sample("a", 1, **{'a"b': "x"})]), "label"),
    ("label-value-257", EVIL_TOPIC, payload(1, samples=[sample("a", 1, k="v" * 257)]), "limits"),
    (
        "labels-17",
        EVIL_TOPIC,
        payload(1, samples=[sample("a", 1, **{f"l{i}": "x" for i in range(17)})]),
        "limits",
    ),
    (
        "samples-5001",
        EVIL_TOPIC,
        payload(1, samples=[sample("a", 1, i=str(i)) for i in range(5001)]),
        "limits",
    ),
    ("dropped-bad-range", EVIL_TOPIC, payload(3, dropped=[[2, 1]]), "schema"),
    ("dropped-beyond-int64", EVIL_TOPIC, payload(3, dropped=[[1, 2**70]]), "schema"),
    ("outbox-low-above-seq", EVIL_TOPIC, payload(3, outbox_low=4), "schema"),
    (
        "label-invalid-utf8",
        EVIL_TOPIC,
        payload(1, samples=[sample("a", 1, k="PLACEHOLDER")]).replace(b"PLACEHOLDER", b"\xff\xfe"),
        "malformed",
    ),
    (
        "label-utf8-surrogate-bytes",
        EVIL_TOPIC,
        payload(1, samples=[sample("a", 1, k="PLACEHOLDER")]).replace(
            b"PLACEHOLDER", b"\xed\xa0\x80"
        ),
        "malformed",
    ),
    (
        "label-lone-surrogate-escape",
        EVIL_TOPIC,
        payload(1, samples=[sample("a", 1, k="PLACEHOLDER")]).replace(b"PLACEHOLDER", rb"x\ud800y"),
        "malformed",
    ),
    ("events-on-metrics", EVIL_TOPIC, payload(1, events=[{"kind": "x"}]), "schema"),
    ("samples-on-events", EVIL_EVENTS, payload(1), "schema"),
    ("event-kind-upper", EVIL_EVENTS, payload(1, samples=[], events=[{"kind": "Login"}]), "name"),
    (
        "event-ts-negative",
        EVIL_EVENTS,
        payload(1, samples=[], events=[{"kind": "x", "ts": -1}]),
        "value",
    ),
    (
        "event-attrs-33",
        EVIL_EVENTS,
        payload(1, samples=[], events=[{"kind": "x", "attrs": {str(i): "" for i in range(33)}}]),
        "limits",
    ),
    (
        "event-message-long",
        EVIL_EVENTS,
        payload(1, samples=[], events=[{"kind": "x", "message": "m" * 2049}]),
        "limits",
    ),
    ("status-not-json", EVIL_STATUS, b"online", "malformed"),
    ("status-unknown", EVIL_STATUS, b'{"v":1,"status":"maybe"}', "schema"),
    (
        "status-mismatch",
        EVIL_STATUS,
        b'{"v":1,"status":"online","site":"s1","host":"good"}',
        "topic_mismatch",
    ),
    (
        "status-long-reason",
        EVIL_STATUS,
        json.dumps({"v": 1, "status": "offline", "reason": "r" * 65}).encode(),
        "limits",
    ),
    # Topics: only <prefix>/v1/<slug>/<slug>/<kind> is an agent's.
    ("topic-plus", "outpost/v1/+/evil/metrics", VALID, "topic"),
    ("topic-hash", "outpost/v1/s1/#", VALID, "topic"),
    ("topic-dotdot", "outpost/v1/s1/../metrics", VALID, "topic"),
    ("topic-dotdot-host", "outpost/v1/s1/evil/../good/metrics", VALID, "topic"),
    ("topic-percent-2f", "outpost/v1/s1/evil%2Fgood/metrics", VALID, "topic"),
    ("topic-unicode-site", "outpost/v1/城关镇/evil/metrics", VALID, "topic"),
    ("topic-fullwidth-slash", "outpost/v1/s1/evil／good/metrics", VALID, "topic"),
    ("topic-upper-case", "outpost/v1/S1/evil/metrics", VALID, "topic"),
    ("topic-empty-site", "outpost/v1//evil/metrics", VALID, "topic"),
    ("topic-empty-prefix-level", "outpost//v1/s1/evil/metrics", VALID, "topic"),
    ("topic-leading-slash", "/outpost/v1/s1/evil/metrics", VALID, "topic"),
    ("topic-trailing-slash", "outpost/v1/s1/evil/metrics/", VALID, "topic"),
    ("topic-extra-level", "outpost/v1/s1/evil/metrics/extra", VALID, "topic"),
    ("topic-missing-level", "outpost/v1/s1/metrics", VALID, "topic"),
    ("topic-other-version", "outpost/v2/s1/evil/metrics", VALID, "topic"),
    ("topic-other-prefix", "outpost-x/v1/s1/evil/metrics", VALID, "topic"),
    ("topic-ack", "outpost/v1/s1/evil/ack", b'{"v":1,"agent_id":"agent-good","upto":99}', "topic"),
    ("topic-nul", "outpost/v1/s1/evil\x00/metrics", VALID, "topic"),
    ("topic-newline", "outpost/v1/s1/evil\n/metrics", VALID, "topic"),
    ("topic-not-utf8", "(not UTF-8)", VALID, "topic"),
    ("topic-long", "outpost/v1/" + "a" * 70_000 + "/evil/metrics", VALID, "topic"),
]


@pytest.mark.parametrize(
    ("topic", "data", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_a_hostile_message_is_refused_and_counted(
    world: World, topic: str, data: bytes, reason: str
) -> None:
    assert world.handle(topic, data) == "invalid"
    assert counters(world) == moved(invalid={reason: 1})
    assert (SITE, EVIL) not in world.ingest.state.hosts  # nothing of it was applied
    world.good_reports()
    assert world.value("outpost_collector_invalid_messages_total", reason=reason) == 1.0


def test_a_refused_message_whose_envelope_reads_is_settled_once(world: World) -> None:
    """The agent resends what is refused until it is acknowledged: a refusal with a readable
    envelope settles the seq, and its resend is a duplicate, not a second refusal forever."""
    bad = _with_value("1e999")
    assert world.handle(EVIL_TOPIC, bad) == "invalid"
    assert world.ingest.state.track("agent-evil").upto == 1
    assert world.handle(EVIL_TOPIC, bad) == "invalid"
    assert world.ingest.state.track("agent-evil").duplicates == 1
    world.good_reports()


# --- accepted, but part of it not kept ------------------------------------------------------


def test_negative_counters_are_refused_sample_by_sample(world: World) -> None:
    samples = [
        sample("outpost_network_receive_bytes_total", -5.0, interface="eth0"),
        sample("outpost_network_receive_bytes_total", 7.0, interface="eth1"),
        sample("vendor_errors_total", -1e300),
        sample("outpost_temperature_celsius", -12.5, sensor="outdoor"),  # a gauge may be < 0
        sample("outpost_cpu_seconds_total", -0.0, mode="idle"),  # -0.0 is not below 0
    ]
    assert world.handle(EVIL_TOPIC, payload(1, samples=samples)) == "accepted"
    assert counters(world) == moved(accepted=2, refused={(SITE, EVIL, "negative_counter"): 2})
    kept = {(s.name, s.value) for s in world.ingest.state.hosts[SITE, EVIL].samples}
    assert kept == {
        ("outpost_network_receive_bytes_total", 7.0),
        ("outpost_temperature_celsius", -12.5),
        ("outpost_cpu_seconds_total", -0.0),
    }
    assert world.ingest.state.track("agent-evil").upto == 1  # the batch's seq is settled
    labels = {"site": SITE, "host": EVIL, "reason": "negative_counter"}
    assert world.value("outpost_host_samples_refused_total", **labels) == 2.0
    assert world.value("outpost_network_receive_bytes_total", site=SITE, host=EVIL,
                       interface="eth0") is None  # fmt: skip
    world.good_reports()


HOSTILE_LABELS = {
    "quote": 'say "hi"',
    "backslash": "C:\\Windows\\",
    "newline": "line1\nline2\r\n",
    "braces": '"} fake_series{a="1"} 1\n# TYPE x counter',
    "nul": "a\x00b",
    "control": "\x1b[31mred\x07",
    "unicode": "城关镇 ☃ \U0001f600 \u2028\u2029 \ufeff",
    "long": "界" * 256,
    "empty": "",
}


def test_hostile_label_values_are_accepted_and_exported_escaped(world: World) -> None:
    samples = [sample("vendor_widget_info", 1, **{k: v}) for k, v in HOSTILE_LABELS.items()]
    assert world.handle(EVIL_TOPIC, payload(1, samples=samples)) == "accepted"
    assert counters(world) == moved(accepted=2)
    text = world.scrape()
    exported = {
        dict(s.labels).get(k)
        for f in text_string_to_metric_families(text)
        if f.name == "vendor_widget_info"
        for s in f.samples
        for k in HOSTILE_LABELS
        if k in s.labels
    }
    assert exported == set(HOSTILE_LABELS.values())  # every value read back exactly
    assert "fake_series" not in {f.name for f in text_string_to_metric_families(text)}
    world.good_reports()
    if PROMTOOL:
        run = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()


@pytest.mark.parametrize(
    "name",
    [
        "process_cpu_seconds_total",  # prometheus-client's process collector has it
        "process_open_fds",
        "python_info",
        "outpost_alerts_firing",  # the alert engine's
        "outpost_notifications_total",
        "outpost_host_up",  # the collector's own
        "outpost_collector_messages_total",
        "outpost_collector_messages",
        "outpost_agent_rate_limited_messages_total",
    ],
)
def test_a_sample_named_like_another_family_is_not_exported(world: World, name: str) -> None:
    samples = [sample(name, 12345.0), sample("outpost_load1", 3.0)]
    assert world.handle(EVIL_TOPIC, payload(1, samples=samples)) == "accepted"
    text = world.scrape()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples]
    assert 12345.0 not in values
    assert world.value("outpost_load1", site=SITE, host=EVIL) == 3.0
    world.good_reports()
    if PROMTOOL:
        run = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()


# --- seqs and times --------------------------------------------------------------------------


def test_a_replayed_seq_is_a_duplicate(world: World) -> None:
    for seq in (1, 2, 3):
        assert world.handle(EVIL_TOPIC, payload(seq)) == "accepted"
    replay = payload(2, samples=[sample("outpost_load1", 99.0)])
    assert world.handle(EVIL_TOPIC, replay) == "duplicate"
    assert world.handle(EVIL_TOPIC, payload(1)) == "duplicate"  # far past: below upto
    assert counters(world) == moved(accepted=4, duplicate=2)
    assert world.ingest.state.track("agent-evil").duplicates == 2
    assert world.value("outpost_load1", site=SITE, host=EVIL) == 3.0
    world.good_reports()


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": 10**15},
        {"seq": 10**15, "outbox_low": 10**15},
        {"seq": wire.MAX_SEQ, "outbox_low": wire.MAX_SEQ},
        {"seq": 3 + 10_000_001, "outbox_low": 3},
        {"seq": 4, "dropped": [[5, 10**12]]},
    ],
    ids=["seq", "seq-and-outbox-low", "int64-max", "just-past-the-limit", "dropped-range"],
)
def test_a_far_future_seq_is_refused_not_settled_and_loses_nothing(
    world: World, fields: dict[str, Any]
) -> None:
    for seq in (1, 2, 3):
        assert world.handle(EVIL_TOPIC, payload(seq)) == "accepted"
    world.ingest.take_acks()
    assert world.handle(EVIL_TOPIC, payload(4, **fields)) == "invalid"
    assert counters(world) == moved(accepted=4, invalid={"seq_jump": 1})
    track = world.ingest.state.track("agent-evil")
    assert (track.upto, track.highest, track.above, track.lost, track.dropped) == (3, 3, [], 0, 0)
    assert world.ingest.take_acks() == []  # not settled: nothing to acknowledge
    # The agent's real next batch is applied, not taken for a duplicate.
    assert world.handle(EVIL_TOPIC, payload(4)) == "accepted"
    assert world.value("outpost_load1", site=SITE, host=EVIL) == 4.0
    world.good_reports()


def test_a_refused_message_with_a_far_future_seq_is_not_settled(world: World) -> None:
    assert world.handle(EVIL_TOPIC, payload(1)) == "accepted"
    world.ingest.take_acks()
    bad = payload(10**15, outbox_low=10**15, ts=TS).replace(
        b'"value": 1000000000000000.0', b'"value": 1e999'
    )
    assert world.handle(EVIL_TOPIC, bad) == "invalid"
    assert world.ingest.invalid == {"value": 1}
    assert world.ingest.state.track("agent-evil").highest == 1
    assert world.ingest.take_acks() == []
    assert world.handle(EVIL_TOPIC, payload(2)) == "accepted"


def test_the_seq_jump_limit_is_exact_and_grows_with_the_time_away() -> None:
    world = make_world(wire.Limits(max_seq_jump=1000))
    assert world.handle(EVIL_TOPIC, payload(5)) == "accepted"
    assert world.handle(EVIL_TOPIC, payload(1006)) == "invalid"
    assert world.ingest.invalid == {"seq_jump": 1}
    assert world.handle(EVIL_TOPIC, payload(1005, outbox_low=1005)) == "accepted"
    assert world.ingest.state.track("agent-evil").lost == 999  # what the agent said it lost
    # An agent away for 100 s may have made 100 x SEQ_JUMP_PER_SECOND more seqs.
    later = T0 + 100
    far = 1005 + 1000 + 100 * SEQ_JUMP_PER_SECOND
    assert world.handle(EVIL_TOPIC, payload(far + 1), later) == "invalid"
    assert world.handle(EVIL_TOPIC, payload(far), later) == "accepted"
    assert world.ingest.invalid == {"seq_jump": 2}


def test_a_track_loaded_from_disk_counts_the_time_from_when_it_is_first_asked() -> None:
    world = make_world(wire.Limits(max_seq_jump=1000))
    world.ingest.state.tracks[(SITE, EVIL, "agent-evil")] = SeqTrack(upto=10, highest=10)
    assert world.handle(EVIL_TOPIC, payload(5000)) == "invalid"  # first asked at T0
    assert world.handle(EVIL_TOPIC, payload(5000), T0 + 20) == "accepted"  # 1010 + 4000


def test_far_future_and_far_past_ts_do_not_reorder_samples(world: World) -> None:
    """Batches are ordered by seq; ts (any value from 1970 to 9999) orders nothing."""
    future = payload(1, ts=wire.MAX_TS_MS, outbox_low=1)
    past = payload(2, ts=0, outbox_low=1)
    now = payload(3, ts=TS, outbox_low=1)
    # In seq order: each one replaces the last, whatever its ts.
    assert world.handle(EVIL_TOPIC, future) == "accepted"
    assert world.value("outpost_load1", site=SITE, host=EVIL) == 1.0
    assert world.handle(EVIL_TOPIC, past) == "accepted"
    assert world.value("outpost_load1", site=SITE, host=EVIL) == 2.0
    # Out of order: the older seq with the later ts does not win.
    other = make_world()
    assert other.handle(EVIL_TOPIC, now) == "accepted"
    assert other.handle(EVIL_TOPIC, future) == "accepted"
    assert other.handle(EVIL_TOPIC, past) == "accepted"
    assert other.value("outpost_load1", site=SITE, host=EVIL) == 3.0
    assert other.ingest.state.hosts[SITE, EVIL].batch_ts == TS
    assert other.ingest.state.lost_total == 0
    assert world.handle(EVIL_TOPIC, now) == "accepted"
    assert world.value("outpost_load1", site=SITE, host=EVIL) == 3.0
    assert world.ingest.state.hosts[SITE, EVIL].clock_skew == pytest.approx(T0 - TS / 1000)
    world.good_reports()
    other.good_reports()


# --- cardinality ---------------------------------------------------------------------------


def test_a_label_flood_on_one_host_stays_bounded(world: World) -> None:
    """Each batch replaces the host's samples: a flood of new label values keeps one batch."""
    for seq in range(1, 101):
        flood = [sample("vendor_flood", 1, id=f"{seq}-{i}") for i in range(1000)]
        assert world.handle(EVIL_TOPIC, payload(seq, samples=flood)) == "accepted"
    assert len(world.ingest.state.hosts[SITE, EVIL].samples) == 1000
    assert len(world.ingest.state.hosts) == 2
    world.good_reports()


def test_a_device_flood_is_capped_per_agent_and_counted() -> None:
    world = make_world(wire.Limits(max_devices_per_agent=256))
    for seq in range(1, 301):
        batch = payload(seq, device=f"dev-{seq}", samples=[sample("outpost_device_up", 1),
                                                           sample("vendor_x", 1)])  # fmt: skip
        assert world.handle(EVIL_TOPIC, batch) == "accepted"
    state = world.ingest.state
    assert len([h for h in state.hosts.values() if h.proxy == EVIL]) == 256
    assert state.refused == {(SITE, EVIL, "device_limit"): 44 * 2}
    assert state.track("agent-evil").upto == 300  # every seq settled
    assert world.value("outpost_host_samples_refused_total", site=SITE, host=EVIL,
                       reason="device_limit") == 88.0  # fmt: skip
    assert world.value("outpost_host_up", site=SITE, host="dev-300") is None
    # A device it already reports for goes on being updated.
    again = payload(301, device="dev-1", samples=[sample("outpost_device_up", 0)])
    assert world.handle(EVIL_TOPIC, again) == "accepted"
    assert state.hosts[SITE, "dev-1"].device_up is False
    world.good_reports()


def test_a_device_cannot_take_over_a_host_that_reports_for_itself(world: World) -> None:
    hijack = payload(1, device=GOOD, samples=[sample("outpost_load1", 666.0)])
    assert world.handle(EVIL_TOPIC, hijack) == "accepted"
    itself = payload(2, device=EVIL, samples=[sample("outpost_load1", 666.0)])
    assert world.handle(EVIL_TOPIC, itself) == "accepted"
    assert world.ingest.state.refused == {(SITE, EVIL, "device_conflict"): 2}
    assert world.ingest.state.hosts[SITE, GOOD].proxy == ""
    assert world.ingest.state.track("agent-evil").upto == 2
    world.good_reports()
    # A host polled as a device that starts reporting for itself takes its own place.
    assert world.handle(EVIL_TOPIC, payload(3, device="sw1")) == "accepted"
    sw1 = "outpost/v1/s1/sw1/metrics"
    assert world.handle(sw1, payload(1, "sw1")) == "accepted"
    assert world.ingest.state.hosts[SITE, "sw1"].proxy == ""
    assert world.handle(EVIL_TOPIC, payload(4, device="sw1")) == "accepted"
    assert world.ingest.state.refused[(SITE, EVIL, "device_conflict")] == 3


def test_series_past_the_cap_are_not_kept() -> None:
    world = make_world(wire.Limits(max_series_per_host=100))
    flood = [sample("vendor_flood", 1, id=str(i)) for i in range(250)]
    assert world.handle(EVIL_TOPIC, payload(1, samples=flood)) == "accepted"
    assert len(world.ingest.state.hosts[SITE, EVIL].samples) == 100
    assert world.ingest.state.refused == {(SITE, EVIL, "series_limit"): 150}
    world.good_reports()


def test_an_event_kind_flood_is_counted_under_other(world: World) -> None:
    events = [{"kind": f"kind_{i}"} for i in range(500)]
    assert world.handle(EVIL_EVENTS, payload(1, samples=[], events=events)) == "accepted"
    assert len(world.ingest.state.hosts[SITE, EVIL].events) == 64 + 1
    world.good_reports()


# --- a cycle sent as chunks -----------------------------------------------------------------


def _chunks(n_samples: int, limits: wire.Limits, first_seq: int = 1, ts: int = TS,
            device: str = "") -> list[bytes]:  # fmt: skip
    """A cycle's samples as the agent encodes them, with the delivery state it adds when it
    sends them (its outbox holds everything from seq 1)."""
    who = Identity(SITE, EVIL, "agent-evil", "boot-1")
    samples = [wire.Sample("vendor_port_up", 1.0, {"port": str(i)}) for i in range(n_samples)]
    if device:
        samples.append(wire.Sample(wire.DEVICE_UP, 1.0))
    encoded = encode_batches(who, first_seq, ts, 15.0, limits, samples, device)
    return [with_delivery_state(data, 1, []) for data in encoded]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0]])
def test_the_chunks_of_one_cycle_are_merged_whatever_their_order(order: list[int]) -> None:
    """The agent splits a cycle past max_samples into consecutive seqs (agent/cycle.py); the
    host shows all of them, not only the last chunk that arrived."""
    limits = wire.Limits(max_samples=100)
    world = make_world(limits)
    chunks = _chunks(250, limits)
    assert len(chunks) == 3
    for i in order:
        assert world.handle(EVIL_TOPIC, chunks[i]) == "accepted"
    host = world.ingest.state.hosts[SITE, EVIL]
    assert sorted(int(s.labels["port"]) for s in host.samples) == list(range(250))
    assert (host.cycle_low, host.batch_seq) == (1, 3)
    assert world.value("vendor_port_up", site=SITE, host=EVIL, port="249") == 1.0
    # The next cycle replaces the whole set.
    nxt = _chunks(120, limits, first_seq=4, ts=TS + 15_000)
    for data in nxt:
        assert world.handle(EVIL_TOPIC, data) == "accepted"
    assert len(host.samples) == 120 and (host.cycle_low, host.batch_seq) == (4, 5)
    world.good_reports()


def test_a_late_chunk_of_an_older_cycle_changes_nothing() -> None:
    limits = wire.Limits(max_samples=100)
    world = make_world(limits)
    first = _chunks(250, limits)
    second = _chunks(150, limits, first_seq=4, ts=TS + 15_000)
    for data in [first[0], first[2], *second]:
        assert world.handle(EVIL_TOPIC, data) == "accepted"
    host = world.ingest.state.hosts[SITE, EVIL]
    assert len(host.samples) == 150
    assert world.handle(EVIL_TOPIC, first[1]) == "accepted"  # settled, but not shown
    assert len(host.samples) == 150 and host.batch_ts == TS + 15_000
    track = world.ingest.state.track("agent-evil")
    assert (track.upto, track.lost) == (5, 0)


def test_chunks_of_a_device_merge_and_keep_its_device_up() -> None:
    limits = wire.Limits(max_samples=50)
    world = make_world(limits)
    chunks = _chunks(120, limits, device="sw1")
    assert len(chunks) == 3
    for data in reversed(chunks):  # DEVICE_UP is in the last chunk; it comes first here
        assert world.handle(EVIL_TOPIC, data) == "accepted"
    sw1 = world.ingest.state.hosts[SITE, "sw1"]
    assert len(sw1.samples) == 121 and sw1.device_up is True
    assert world.value("outpost_host_up", site=SITE, host="sw1") == 1.0


def test_merged_chunks_stay_under_the_series_cap() -> None:
    limits = wire.Limits(max_samples=100, max_series_per_host=150)
    world = make_world(limits)
    for data in _chunks(300, limits):
        assert world.handle(EVIL_TOPIC, data) == "accepted"
    assert len(world.ingest.state.hosts[SITE, EVIL].samples) == 150
    assert world.ingest.state.refused == {(SITE, EVIL, "series_limit"): 150}


def test_a_sender_whose_ts_never_changes_does_not_pile_up_samples(world: World) -> None:
    """Same ts on every batch, consecutive seqs: each repeats the series, so it is a new
    cycle, not another chunk."""
    for seq in range(1, 51):
        batch = payload(seq, ts=TS, samples=[sample("outpost_load1", float(seq)),
                                             sample("vendor_x", 1, id=str(seq))])  # fmt: skip
        assert world.handle(EVIL_TOPIC, batch) == "accepted"
    host = world.ingest.state.hosts[SITE, EVIL]
    assert len(host.samples) == 2
    assert world.value("outpost_load1", site=SITE, host=EVIL) == 50.0


def test_same_ts_far_apart_in_seq_is_not_one_cycle(world: World) -> None:
    first = payload(1, ts=TS, samples=[sample("a", 1)])
    far = payload(2 + CYCLE_SEQ_SPAN, ts=TS, samples=[sample("b", 1)])
    assert world.handle(EVIL_TOPIC, first) == "accepted"
    assert world.handle(EVIL_TOPIC, far) == "accepted"
    assert [s.name for s in world.ingest.state.hosts[SITE, EVIL].samples] == ["b"]


# --- a storm from one sender -----------------------------------------------------------------


def test_a_storm_is_rate_limited_and_the_other_agent_loses_nothing(world: World) -> None:
    """5000 batches at once from one sender, while the good agent reports: the burst (2000)
    is applied, the rest counted as rate_limited and not settled; the good agent has every
    seq settled. Then the sender resends at the rate allowed and everything is settled."""
    storm = 5000
    for seq in range(1, storm + 1):
        result = world.handle(EVIL_TOPIC, payload(seq, outbox_low=1))
        assert result == ("accepted" if seq <= 2000 else "rate_limited")
        if seq % 50 == 0:
            world.good_reports()
    assert world.ingest.messages["rate_limited"] == 3000
    assert world.ingest.rate_limited == {(SITE, EVIL): 3000}
    assert world.value("outpost_collector_messages_total", result="rate_limited") == 3000.0
    assert world.value("outpost_agent_rate_limited_messages_total", site=SITE, host=EVIL) == 3000
    acks = {a.agent_id: a for _s, _h, a, _d in world.ingest.take_acks()}
    assert acks["agent-evil"].upto == 2000  # what was limited is not acknowledged
    assert acks["agent-good"].upto == world.good_seq == 101
    # The sender behaves: it resends what was not acknowledged, no faster than allowed.
    t = T0
    pending = list(range(2001, storm + 1))
    while pending:
        t += 1.0
        sent, pending = pending[:50], pending[50:]
        for seq in sent:
            assert world.handle(EVIL_TOPIC, payload(seq, outbox_low=seq), t) == "accepted"
    track = world.ingest.state.track("agent-evil")
    assert (track.upto, track.lost, track.dropped, track.duplicates) == (storm, 0, 0, 0)
    assert world.ingest.state.lost_total == 0
    world.good_reports()


def test_a_status_is_not_rate_limited() -> None:
    world = make_world(wire.Limits(sender_rate_per_second=1, sender_burst=1))
    assert world.handle(EVIL_TOPIC, payload(1)) == "accepted"
    assert world.handle(EVIL_TOPIC, payload(2)) == "rate_limited"
    assert world.handle(EVIL_STATUS, b'{"v":1,"status":"offline","reason":"lost"}') == "accepted"
    assert world.ingest.state.hosts[SITE, EVIL].status == "offline"
    # Events count against the same bucket as metrics.
    assert world.handle(EVIL_EVENTS, payload(3, samples=[], events=[{"kind": "x"}])) == (
        "rate_limited"
    )
    assert world.handle(EVIL_TOPIC, payload(2), T0 + 1) == "accepted"


def test_rate_zero_means_no_limit() -> None:
    world = make_world(wire.Limits(sender_rate_per_second=0, sender_burst=1))
    for seq in range(1, 101):
        assert world.handle(EVIL_TOPIC, payload(seq)) == "accepted"


def test_a_rate_limited_message_from_an_unknown_agent_creates_nothing() -> None:
    world = make_world(wire.Limits(sender_rate_per_second=1, sender_burst=1))
    assert world.handle(EVIL_TOPIC, payload(1)) == "accepted"
    other = payload(1, agent_id="agent-new")
    assert world.handle(EVIL_TOPIC, other) == "rate_limited"
    assert "agent-new" not in {aid for _s, _h, aid in world.ingest.state.tracks}
    assert {a.agent_id for _s, _h, a, _d in world.ingest.take_acks()} == {
        "agent-good",
        "agent-evil",
    }


def test_rate_limiting_is_logged_once_a_minute_per_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = make_world(wire.Limits(sender_rate_per_second=0.001, sender_burst=1))
    caplog.set_level(logging.WARNING, logger="collector.ingest")
    world.handle(EVIL_TOPIC, payload(1))
    for i in range(5):
        assert world.handle(EVIL_TOPIC, payload(2 + i), T0 + i) == "rate_limited"
    assert len(caplog.records) == 1
    assert "s1/evil sends more than" in caplog.records[0].getMessage()
    caplog.clear()
    assert world.handle(EVIL_TOPIC, payload(9), T0 + 61) == "rate_limited"
    (record,) = caplog.records
    assert "(4 more since the last report)" in record.getMessage()


def test_the_bucket_table_is_bounded() -> None:
    buckets = SenderBuckets(max_senders=3)
    for sender in ("a", "b", "c"):
        assert buckets.take(sender, T0, rate=1, burst=1)
    assert not buckets.take("a", T0, rate=1, burst=1)  # a is now the most recently seen
    assert buckets.take("d", T0, rate=1, burst=1)  # b, the least recently seen, goes
    assert len(buckets) == 3
    assert buckets.take("b", T0, rate=1, burst=1)  # forgotten: a full bucket again
    assert not buckets.take("a", T0, rate=1, burst=1)
    assert MAX_SENDERS == 10_000


def test_a_bucket_refills_at_the_rate_and_a_clock_step_back_refills_nothing() -> None:
    buckets = SenderBuckets()
    assert [buckets.take("a", T0, 10, 5) for _ in range(6)] == [True] * 5 + [False]
    assert not buckets.take("a", T0 - 3600, 10, 5)  # the clock went back an hour
    # It refills from then on, not from when the clock is back where it was.
    assert sum(buckets.take("a", T0 - 3600 + 0.25, 10, 5) for _ in range(5)) == 2
    assert sum(buckets.take("a", T0 + 10, 10, 5) for _ in range(10)) == 5  # capped at burst
    assert sum(buckets.take("a", T0 + 20, 10, 2) for _ in range(10)) == 2  # a lowered burst


def test_the_rate_limited_counter_is_kept_for_a_bounded_number_of_senders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import collector.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "MAX_SENDERS", 2)
    world = make_world(wire.Limits(sender_rate_per_second=0.001, sender_burst=1))
    for host in ("h1", "h2", "h3"):
        topic = f"outpost/v1/{SITE}/{host}/metrics"
        for seq in (1, 2):
            world.handle(topic, payload(seq, host))
    assert world.ingest.rate_limited == {(SITE, "h1"): 1, (SITE, "h2"): 1}
    assert world.ingest.messages["rate_limited"] == 3


# --- everything at once ----------------------------------------------------------------------


def test_the_whole_catalogue_in_a_row_leaves_metrics_valid_and_the_good_agent_whole() -> None:
    world = make_world()
    for _id, topic, data, _reason in REFUSED:
        assert world.handle(topic, data) == "invalid"
        world.good_reports()
    assert world.ingest.messages["invalid"] == len(REFUSED)
    assert sum(world.ingest.invalid.values()) == len(REFUSED)
    text = world.scrape()
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    if PROMTOOL:
        run = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()


def test_one_sender_cannot_make_seq_tracks_without_end(world: World) -> None:
    for i in range(MAX_AGENTS_PER_SENDER):
        assert world.handle(EVIL_TOPIC, payload(1, agent_id=f"made-up-{i}")) == "accepted"
    assert world.handle(EVIL_TOPIC, payload(1, agent_id="one-too-many")) == "invalid"
    bad = payload(1, agent_id="one-more", v=2)  # refused anyway: its seq is not settled either
    assert world.handle(EVIL_TOPIC, bad) == "invalid"
    assert world.ingest.invalid == {"limits": 1, "version": 1}
    assert "one-too-many" not in {aid for _s, _h, aid in world.ingest.state.tracks}
    assert "one-more" not in {aid for _s, _h, aid in world.ingest.state.tracks}
    # Ids it already brought, and ids with a track (loaded from disk), go on as before.
    assert world.handle(EVIL_TOPIC, payload(2, agent_id="made-up-0")) == "accepted"
    world.ingest.state.tracks[(SITE, EVIL, "reinstalled")] = SeqTrack(upto=5, highest=5)
    assert world.handle(EVIL_TOPIC, payload(6, agent_id="reinstalled")) == "accepted"
    # Another sender has its own allowance.
    other = "outpost/v1/s1/other/metrics"
    assert world.handle(other, payload(1, "other", agent_id="fresh")) == "accepted"
    world.good_reports()
