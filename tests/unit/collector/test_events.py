"""Tests for the collector's events: the log, counting, the stream to listeners, storage, and
the query of ``GET /api/v1/events``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from collector.events import OVERFLOW_KIND, EventLog, HostEvent, is_security
from collector.exporter import FleetCollector
from collector.ingest import Ingest
from collector.service import EventQuery, QueryError
from collector.state import MAX_EVENT_COUNTERS_PER_HOST, FleetState
from collector.store import Store
from outpost import wire

T0 = 1_700_000_000.0
EVENTS = "outpost/v1/s1/h1/events"


def payload(seq: int, events: list[dict[str, Any]], host: str = "h1") -> bytes:
    return json.dumps(
        {
            "v": 1,
            "site": "s1",
            "host": host,
            "agent_id": f"agent-{host}",
            "boot_id": "b",
            "seq": seq,
            "ts": seq * 1000,
            "events": events,
        }
    ).encode()


def ev(kind: str, severity: str = "warning", ts: int = 0, **attrs: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "severity": severity, "attrs": attrs}
    if ts:
        out["ts"] = ts
    return out


@pytest.fixture
def ingest() -> Ingest:
    return Ingest(FleetState(stale_after=60, keep_events=5), wire.Limits())


def counter(ingest: Ingest, name: str, **labels: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(FleetCollector(ingest, clock=lambda: T0))
    return registry.get_sample_value(name, labels)


def test_each_event_is_kept_counted_and_streamed_once(ingest: Ingest) -> None:
    seen: list[HostEvent] = []
    ingest.event_listeners.append(seen.append)
    data = payload(1, [ev("ssh_bruteforce", "critical", source="203.0.113.5", count="40")])
    assert ingest.handle(EVENTS, data, T0) == "accepted"
    assert ingest.handle(EVENTS, data, T0 + 1) == "duplicate"
    assert [(e.kind, e.severity, e.attrs["count"], e.seq) for e in seen] == [
        ("ssh_bruteforce", "critical", "40", 1)
    ]
    assert seen[0].ts == 1000  # the batch's time when the event has none
    labels = {"site": "s1", "host": "h1", "kind": "ssh_bruteforce", "severity": "critical"}
    assert counter(ingest, "outpost_security_events_total", **labels) == 1.0
    assert counter(ingest, "outpost_host_events_total", **labels) == 1.0
    assert [e.kind for e in ingest.state.event_log] == ["ssh_bruteforce"]


def test_operational_events_are_not_security_events(ingest: Ingest) -> None:
    ingest.handle(EVENTS, payload(1, [ev("log_gap"), ev("made_up_kind")]), T0)
    base = {"site": "s1", "host": "h1", "severity": "warning"}
    assert counter(ingest, "outpost_host_events_total", kind="log_gap", **base) == 1.0
    assert counter(ingest, "outpost_security_events_total", kind="log_gap", **base) is None
    # A kind the catalogue does not know is counted as security rather than hidden.
    assert counter(ingest, "outpost_security_events_total", kind="made_up_kind", **base) == 1.0
    assert not is_security("outage") and is_security("ssh_login")


def test_counters_per_host_are_capped(ingest: Ingest) -> None:
    kinds = [ev(f"k{i}") for i in range(MAX_EVENT_COUNTERS_PER_HOST + 10)]
    ingest.handle(EVENTS, payload(1, kinds), T0)
    counts = ingest.state.hosts["s1", "h1"].events
    assert len(counts) == MAX_EVENT_COUNTERS_PER_HOST + 1
    assert counts[(OVERFLOW_KIND, "warning")] == 10
    assert sum(counts.values()) == MAX_EVENT_COUNTERS_PER_HOST + 10
    assert len(list(ingest.state.event_log)) == 5  # keep_events=5: the newest are kept


def test_a_failing_listener_does_not_refuse_the_message(ingest: Ingest) -> None:
    def broken(_event: HostEvent) -> None:
        raise RuntimeError("boom")

    seen: list[HostEvent] = []
    ingest.event_listeners += [broken, seen.append]
    assert ingest.handle(EVENTS, payload(1, [ev("sudo", "info")]), T0) == "accepted"
    assert ingest.listener_failures == 1 and len(seen) == 1


def test_pending_is_taken_together_and_given_back(ingest: Ingest) -> None:
    ingest.handle(EVENTS, payload(1, [ev("sudo", "info")]), T0)
    pending = ingest.take_pending()
    assert [a.upto for _s, _h, a, _d in pending.acks] == [1]
    assert [e.kind for e in pending.events] == ["sudo"]
    assert pending.counts == [("s1", "h1", "sudo", "info", 1)]
    assert ingest.take_pending() == ([], [], [])
    ingest.give_back(pending)
    again = ingest.take_pending()
    assert again.events == pending.events and again.counts == pending.counts
    assert [a.upto for _s, _h, a, _d in again.acks] == [1]


def test_store_round_trip_prunes_per_host(tmp_path: Path, ingest: Ingest) -> None:
    store = Store(tmp_path / "c.sqlite", keep_events_per_host=3)
    for seq in range(1, 6):
        ingest.handle(EVENTS, payload(seq, [ev("sudo", "info", ts=seq)]), T0)
    ingest.handle("outpost/v1/s1/h2/events", payload(1, [ev("su", "info")], host="h2"), T0)
    pending = ingest.take_pending()
    tracks = [(a.agent_id, s, h, d) for s, h, a, d in pending.acks]
    store.save(tracks, pending.events[:2], pending.counts)
    store.save([], pending.events[2:], [])
    store.close()

    store = Store(tmp_path / "c.sqlite", keep_events_per_host=3)
    loaded = store.load_events()
    assert [(e.host, e.ts) for e in loaded] == [("h1", 3), ("h1", 4), ("h1", 5), ("h2", 1000)]
    assert sorted(store.load_event_counts()) == [
        ("s1", "h1", "sudo", "info", 5),
        ("s1", "h2", "su", "info", 1),
    ]
    assert {aid for _s, _h, aid in store.load_tracks()} == {"agent-h1", "agent-h2"}

    # A new run: ids go on after the stored ones, and counters resume when the host reports.
    fresh = Ingest(FleetState(stale_after=60), wire.Limits())
    fresh.state.event_log.load(loaded)
    fresh.state.restore_event_counts(store.load_event_counts())
    assert ("s1", "h1") not in fresh.state.hosts  # not shown until it reports again
    fresh.handle(EVENTS, payload(6, [ev("sudo", "info")]), T0)
    assert fresh.state.hosts["s1", "h1"].events[("sudo", "info")] == 6
    assert max(e.id for e in fresh.state.event_log) > max(e.id for e in loaded)


def test_query_filters_newest_first() -> None:
    log = EventLog(keep_per_host=10)

    def add(host: str, kind: str, ts: int, severity: str = "info") -> None:
        log.add(HostEvent(log.next_id(), "s1", host, kind, severity, ts, T0, "a", 1))

    add("h1", "sudo", 1000)
    add("h1", "ssh_login", 3000)
    add("h2", "sudo", 2000, "warning")
    assert [e.ts for e in log.query()] == [3000, 2000, 1000]
    assert [e.ts for e in log.query(kind="sudo")] == [2000, 1000]
    assert [e.ts for e in log.query(site="s1", host="h2")] == [2000]
    assert [e.ts for e in log.query(host="h1", since_ms=2000)] == [3000]
    assert [e.ts for e in log.query(severity="warning")] == [2000]
    assert [e.ts for e in log.query(limit=1)] == [3000]
    assert [e.ts for e in log.query(after_id=2)] == [2000]
    assert log.query(site="nowhere") == []


def test_event_query_parses_and_explains() -> None:
    q = EventQuery("site=s1&host=h1&kind=sudo&since=1700000000.5&limit=20&severity=info")
    assert (q.site, q.host, q.kind, q.severity, q.since_ms, q.limit) == (
        "s1",
        "h1",
        "sudo",
        "info",
        1_700_000_000_500,
        20,
    )
    assert EventQuery("since=2023-11-14T22:13:20Z").since_ms == 1_700_000_000_000
    assert EventQuery("since=2023-11-15T06:13:20+08:00").since_ms == 1_700_000_000_000
    assert EventQuery("").limit == 100
    assert EventQuery("limit=999999999").limit == 10_000
    for bad, word in [
        ("since=yesterday", "ISO 8601"),
        ("limit=ten", "whole number"),
        ("limit=0", "at least 1"),
        ("severity=fatal", "severity"),
        ("colour=red", "unknown parameter"),
    ]:
        with pytest.raises(QueryError, match=word):
            EventQuery(bad)


def test_store_moves_tracks_keyed_by_agent_id_alone_to_their_topic(tmp_path: Path) -> None:
    """A collector.sqlite from before tracks were bound to their topic opens with its tracks
    under (site, host, agent_id), and a second open changes nothing."""
    import sqlite3

    from collector.seqtrack import SeqTrack

    path = tmp_path / "collector.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE tracks (agent_id TEXT PRIMARY KEY, site TEXT NOT NULL, "
        "host TEXT NOT NULL, data BLOB NOT NULL)"
    )
    track = SeqTrack(upto=7, highest=9, above=[(9, 9)])
    db.execute("INSERT INTO tracks VALUES ('a1', 's1', 'h1', ?)", (wire.encode(track),))
    db.commit()
    db.close()
    for _ in range(2):
        store = Store(path, 10)
        assert store.load_tracks()[("s1", "h1", "a1")] == track
        store.save([("a1", "s1", "h2", wire.encode(SeqTrack(upto=1, highest=1)))], [], [])
        assert len(store.load_tracks()) == 2
        store.close()
