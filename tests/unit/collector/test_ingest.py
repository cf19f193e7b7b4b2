"""Tests for collector.ingest.Ingest: counting, refusing, settling refused seqs, acks, logging."""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import pytest

from collector.ingest import Ingest
from collector.seqtrack import SeqTrack
from collector.state import FleetState
from outpost import wire

T0 = 1_700_000_000.0
METRICS = "outpost/v1/s1/h1/metrics"
EVENTS = "outpost/v1/s1/h1/events"
STATUS = "outpost/v1/s1/h1/status"


def payload(seq: int, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "v": 1,
        "site": "s1",
        "host": "h1",
        "agent_id": "agent-1",
        "boot_id": "boot-1",
        "seq": seq,
        "ts": seq * 1000,
        "samples": [{"name": "outpost_load1", "value": 0.5}],
    }
    body.update(fields)
    return json.dumps(body).encode()


@pytest.fixture
def ingest() -> Ingest:
    return Ingest(FleetState(stale_after=60), wire.Limits())


def acks(ingest: Ingest) -> dict[str, tuple[str, str, int, list[tuple[int, int]]]]:
    return {a.agent_id: (site, host, a.upto, a.ranges) for site, host, a, _ in ingest.take_acks()}


def test_accepted_duplicate_invalid_are_counted(ingest: Ingest) -> None:
    assert ingest.handle(METRICS, payload(1), T0) == "accepted"
    assert ingest.handle(METRICS, payload(2), T0) == "accepted"
    assert ingest.handle(METRICS, payload(1), T0) == "duplicate"
    assert ingest.handle(METRICS, b"{", T0) == "invalid"
    assert ingest.messages == {"accepted": 2, "duplicate": 1, "invalid": 1}
    assert ingest.state.hosts["s1", "h1"].last_seen == T0


@pytest.mark.parametrize(
    ("topic", "data", "reason"),
    [
        ("outpost/v1/s1/h1/ack", b"{}", "topic"),
        ("other/v1/s1/h1/metrics", payload(1), "topic"),
        ("outpost/v1/S1/h1/metrics", payload(1), "topic"),
        (METRICS, b"{", "malformed"),
        (METRICS, payload(1, v=2), "version"),
        (METRICS, payload(1, site="s2"), "topic_mismatch"),
        (
            METRICS,
            payload(1, samples=[{"name": "x", "value": 1, "labels": {"site": "a"}}]),
            "label",
        ),
        (METRICS, payload(1, events=[{"kind": "login_failed"}]), "schema"),
        (EVENTS, payload(1), "schema"),  # events topic with samples
        (STATUS, b'{"v":1,"status":"maybe"}', "schema"),
        (METRICS, payload(1, agent_id="PLACEHOLDER").replace(b"PLACEHOLDER", b"\xff"), "malformed"),
    ],
)
def test_invalid_reasons_are_counted(ingest: Ingest, topic: str, data: bytes, reason: str) -> None:
    assert ingest.handle(topic, data, T0) == "invalid"
    assert ingest.invalid == {reason: 1}
    assert ingest.messages["invalid"] == 1
    assert ingest.state.hosts == {}


def test_oversized_is_refused_and_not_settled() -> None:
    ingest = Ingest(FleetState(stale_after=60), wire.Limits(max_payload_bytes=100))
    assert ingest.handle(METRICS, payload(1), T0) == "invalid"
    assert ingest.invalid == {"oversized": 1}
    assert ingest.take_acks() == []


def test_a_refused_message_with_a_readable_envelope_is_settled(ingest: Ingest) -> None:
    ingest.handle(METRICS, payload(1), T0)
    ingest.take_acks()
    bad_value = payload(2).replace(b'"value": 0.5', b'"value": 1e999')
    assert ingest.handle(METRICS, bad_value, T0) == "invalid"
    assert ingest.invalid == {"value": 1}
    assert acks(ingest) == {"agent-1": ("s1", "h1", 2, [])}
    # The agent resends it before seeing the ack: refused again, settled once.
    assert ingest.handle(METRICS, bad_value, T0) == "invalid"
    assert ingest.state.track("agent-1").upto == 2
    assert ingest.state.track("agent-1").duplicates == 1


def test_a_refused_message_from_an_unknown_agent_is_settled(ingest: Ingest) -> None:
    ingest.handle(METRICS, payload(7, v=99), T0)
    assert acks(ingest) == {"agent-1": ("s1", "h1", 7, [])}


def test_a_metrics_message_with_events_is_refused_but_settled(ingest: Ingest) -> None:
    assert ingest.handle(METRICS, payload(3, events=[{"kind": "x"}]), T0) == "invalid"
    assert acks(ingest) == {"agent-1": ("s1", "h1", 3, [])}
    assert ("s1", "h1") not in ingest.state.hosts


@pytest.mark.parametrize(
    "data",
    [
        payload(1, site="s2"),  # topic mismatch: another site's seq is not ours to settle
        payload(1, agent_id=""),
        payload(1, agent_id="a" * 65),
        payload(0),
        b'{"site":"s1","host":"h1","seq":1}',  # no agent id
        b"{",
        b"[" * 100_000,
    ],
    ids=[
        "topic-mismatch",
        "empty-agent-id",
        "long-agent-id",
        "seq-0",
        "no-agent-id",
        "bad-json",
        "deep",
    ],
)
def test_refused_messages_that_cannot_be_attributed_are_not_settled(
    ingest: Ingest, data: bytes
) -> None:
    assert ingest.handle(METRICS, data, T0) == "invalid"
    assert ingest.take_acks() == []
    assert ingest.state.tracks == {}


def test_status_messages(ingest: Ingest) -> None:
    assert ingest.handle(STATUS, b'{"v":1,"status":"online","agent_id":"agent-1"}', T0) == (
        "accepted"
    )
    assert ingest.state.hosts["s1", "h1"].status == "online"
    assert ingest.handle(STATUS, b"", T0) == "accepted"  # a retained status being cleared
    assert ingest.state.hosts["s1", "h1"].status == "online"
    assert ingest.handle(STATUS, b'{"v":1,"status":"offline","reason":"lost"}', T0) == "accepted"
    assert ingest.state.hosts["s1", "h1"].reason == "lost"
    assert ingest.messages == {"accepted": 3, "duplicate": 0, "invalid": 0}
    assert ingest.take_acks() == []  # status messages carry no seq


def test_empty_retained_status_for_an_unknown_host(ingest: Ingest) -> None:
    assert ingest.handle("outpost/v1/s9/h9/status", b"", T0) == "accepted"
    assert ingest.state.hosts == {}


def test_take_acks_one_per_agent_then_clears(ingest: Ingest) -> None:
    ingest.handle(METRICS, payload(1, outbox_low=1), T0)
    ingest.handle(METRICS, payload(3, outbox_low=2), T0)
    ingest.handle(METRICS, payload(5, outbox_low=2), T0)
    ingest.handle("outpost/v1/s2/h2/metrics", payload(9, site="s2", host="h2", agent_id="b"), T0)
    taken = ingest.take_acks()
    assert len(taken) == 2
    by_agent = {ack.agent_id: (site, host, ack, raw) for site, host, ack, raw in taken}
    site, host, ack, raw = by_agent["agent-1"]
    assert (site, host) == ("s1", "h1")
    assert ack == wire.Ack(v=1, agent_id="agent-1", upto=1, ranges=[(3, 3), (5, 5)])
    assert msgspec.json.decode(raw, type=SeqTrack) == ingest.state.track("agent-1")
    assert by_agent["b"][:3] == ("s2", "h2", wire.Ack(v=1, agent_id="b", upto=9))
    # The ack round-trips through the wire decoder the agent uses.
    assert wire.decode_ack(wire.encode(ack), wire.Limits()) == ack
    assert ingest.take_acks() == []


def test_a_duplicate_is_acked_again(ingest: Ingest) -> None:
    ingest.handle(METRICS, payload(1), T0)
    ingest.take_acks()
    ingest.handle(METRICS, payload(1), T0)  # the agent did not get the first ack
    assert acks(ingest) == {"agent-1": ("s1", "h1", 1, [])}


def test_ack_ranges_are_capped() -> None:
    ingest = Ingest(FleetState(stale_after=60), wire.Limits(max_ranges=2))
    for seq in (2, 4, 6, 8):
        ingest.handle(METRICS, payload(seq, outbox_low=1), T0)
    ((_, _, ack, _),) = ingest.take_acks()
    assert (ack.upto, ack.ranges) == (0, [(2, 2), (4, 4)])


def test_owe_ack(ingest: Ingest) -> None:
    ingest.handle(METRICS, payload(1), T0)
    ingest.take_acks()
    ingest.owe_ack("agent-1", "s1", "h1")  # publishing it failed
    assert acks(ingest) == {"agent-1": ("s1", "h1", 1, [])}
    ingest.owe_ack("nobody", "s1", "h1")  # no track: nothing to say
    assert ingest.take_acks() == []


def test_refusals_are_logged_once_per_sender_per_minute(
    ingest: Ingest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="collector.ingest")
    for i in range(3):
        ingest.handle(METRICS, b"{", T0 + i * 10)
    ingest.handle("outpost/v1/s2/h2/metrics", b"{", T0)  # another sender has its own minute
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "s1/h1" in warnings[0] and "more refused" not in warnings[0]
    assert "s2/h2" in warnings[1]
    caplog.clear()
    ingest.handle(METRICS, b"{", T0 + 59)  # still within the minute
    assert caplog.records == []
    ingest.handle(METRICS, b"{", T0 + 61)
    (record,) = caplog.records
    assert "s1/h1" in record.getMessage()
    assert "(3 more refused since the last report)" in record.getMessage()
    assert ingest.invalid == {"malformed": 6}


def test_lost_messages_are_logged(ingest: Ingest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="collector.ingest")
    ingest.handle(METRICS, payload(1), T0)
    ingest.handle(METRICS, payload(5, outbox_low=5), T0)
    assert ingest.state.lost_total == 3
    (record,) = caplog.records
    assert "3 messages lost" in record.getMessage()


def test_an_internal_error_is_counted_not_raised(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(ingest.state, "apply_batch", boom)
    assert ingest.handle(METRICS, payload(1), T0) == "invalid"
    assert ingest.invalid == {"internal": 1}


def test_topic_memo_is_bounded_and_keeps_refusing_bad_topics(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("collector.ingest.MAX_TOPICS", 3)
    for i in range(1, 6):
        assert ingest.handle(f"outpost/v1/s1/h{i}/status", b"", T0) == "accepted"
        assert len(ingest._topics) <= 3
    for seq in (1, 2):  # the second time from the memo (bad topics are not kept)
        assert ingest.handle("outpost/v1/S1/h1/metrics", payload(seq), T0) == "invalid"
        assert ingest.handle(METRICS, payload(seq), T0) == "accepted"
        assert ingest.handle("other/v1/s1/h1/metrics", payload(seq), T0) == "invalid"
    assert ingest.handle(METRICS, payload(2), T0) == "duplicate"
    assert ingest.invalid["topic"] == 4
    assert "other/v1/s1/h1/metrics" not in ingest._topics and METRICS in ingest._topics
    assert ingest.state.tracks[("s1", "h1", "agent-1")].upto == 2
