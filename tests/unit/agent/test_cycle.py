"""Tests for agent.cycle: one collection cycle, the batch it builds, the JSON it sends."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.cycle import Identity, build_batch, collect, self_samples, with_delivery_state
from agent.outbox import Outbox, OutboxStats
from agent.sources.base import Collected, SourceError
from outpost import wire
from outpost.wire import Event, Sample

NOW = 1_700_000_000.0
WHO = Identity("s1", "h1", "agent-1", "boot-1")
TOPIC = wire.TopicParts("s1", "h1", wire.METRICS)


class FakeSource:
    def __init__(self, name: str, result: Collected | Exception) -> None:
        self.name = name
        self.result = result
        self.calls: list[float] = []

    def collect(self, now: float) -> Collected:
        self.calls.append(now)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def by_source(samples: list[Sample], name: str) -> dict[str, float]:
    return {s.labels["source"]: s.value for s in samples if s.name == name}


def test_a_failing_source_is_reported_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = FakeSource(
        "system",
        Collected(samples=[Sample("outpost_load1", 0.5)], events=[Event("login_failed")]),
    )
    bad = FakeSource("snmp", SourceError("gw01: timeout"))
    later = FakeSource("power", Collected(samples=[Sample("outpost_battery_percent", 80.0)]))
    with caplog.at_level(logging.WARNING, logger="agent.cycle"):
        result = collect([good, bad, later], NOW)
    assert good.calls == bad.calls == later.calls == [NOW]
    assert by_source(result.samples, "outpost_agent_source_success") == {
        "system": 1.0,
        "snmp": 0.0,
        "power": 1.0,
    }
    durations = by_source(result.samples, "outpost_agent_source_duration_seconds")
    assert set(durations) == {"system", "snmp", "power"}
    assert all(d >= 0 for d in durations.values())
    names = [s.name for s in result.samples]
    assert "outpost_load1" in names and "outpost_battery_percent" in names
    assert result.events == [Event("login_failed")]
    assert result.duration >= 0
    (record,) = caplog.records
    assert "snmp" in record.getMessage() and "gw01: timeout" in record.getMessage()


def test_any_exception_from_a_source_is_contained() -> None:
    result = collect([FakeSource("buggy", ZeroDivisionError("oops"))], NOW)
    assert by_source(result.samples, "outpost_agent_source_success") == {"buggy": 0.0}


def test_no_sources() -> None:
    result = collect([], NOW)
    assert (result.samples, result.events) == ([], [])


def test_self_samples() -> None:
    samples = self_samples(OutboxStats(3, 300, 2, 1), publish_failures=4, duration=0.25)
    assert {s.name: s.value for s in samples} == {
        "outpost_agent_outbox_rows": 3.0,
        "outpost_agent_outbox_bytes": 300.0,
        "outpost_agent_outbox_dropped_total": 2.0,
        "outpost_agent_outbox_dropped_events_total": 1.0,
        "outpost_agent_publish_failures_total": 4.0,
        "outpost_agent_collection_duration_seconds": 0.25,
    }


def test_build_batch() -> None:
    samples = [Sample("outpost_load1", 0.5, {"k": "v"})]
    batch = build_batch(WHO, 7, 1_700_000_000_123, 15.0, samples)
    assert batch == wire.Batch(
        v=wire.SCHEMA_VERSION,
        site="s1",
        host="h1",
        agent_id="agent-1",
        boot_id="boot-1",
        seq=7,
        ts=1_700_000_000_123,
        interval=15.0,
        samples=samples,
    )
    stored = json.loads(wire.encode(batch))
    assert "outbox_low" not in stored and "dropped" not in stored and "events" not in stored
    events_only = build_batch(WHO, 8, 1, 15.0, events=[Event("port_opened")])
    assert (events_only.samples, events_only.events) == ([], [Event("port_opened")])


@pytest.mark.parametrize(
    ("outbox_low", "dropped"),
    [(7, []), (3, [(1, 2)]), (5, [(1, 1), (3, 4)]), (0, [])],
)
def test_with_delivery_state_is_accepted_by_the_decoder(
    outbox_low: int, dropped: list[tuple[int, int]]
) -> None:
    samples = [Sample("outpost_network_receive_bytes_total", 1e6, {"interface": "eth0"})]
    stored = wire.encode(build_batch(WHO, 7, 1_700_000_000_000, 15.0, samples))
    sent = with_delivery_state(stored, outbox_low, dropped)
    batch = wire.decode_batch(sent, TOPIC, wire.Limits())
    assert (batch.seq, batch.outbox_low, batch.dropped) == (7, outbox_low, dropped)
    assert batch.samples == samples
    assert ("dropped" in json.loads(sent)) == bool(dropped)


def test_with_delivery_state_on_an_empty_batch() -> None:
    stored = wire.encode(build_batch(WHO, 1, 0, 0.0))
    batch = wire.decode_batch(with_delivery_state(stored, 1, []), TOPIC, wire.Limits())
    assert (batch.seq, batch.outbox_low, batch.samples, batch.events) == (1, 1, [], [])


def test_with_delivery_state_from_a_real_outbox(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=600)
    try:
        sample = [Sample("outpost_load1", 0.5)]
        for _ in range(6):
            seq = box.next_seq
            box.add("metrics", wire.encode(build_batch(WHO, seq, seq, 15.0, sample)), NOW)
        assert box.stats().dropped_total > 0
        low, dropped = box.low(), box.dropped_ranges()
        for row in box.rows_after(0, None, 10):
            batch = wire.decode_batch(
                with_delivery_state(row.payload, low, dropped), TOPIC, wire.Limits()
            )
            assert (batch.seq, batch.outbox_low, batch.dropped) == (row.seq, low, dropped)
    finally:
        box.close()
