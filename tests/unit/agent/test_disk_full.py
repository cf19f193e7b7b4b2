"""A full disk under the agent's outbox: metrics are dropped before events, every drop is
counted and declared (so the collector counts it as dropped, not lost), the agent goes on, and
it recovers when there is room again.

The disk is made "full" deterministically with SQLite's ``PRAGMA max_page_count``: a write past
the limit fails with SQLITE_FULL exactly as on a full file system. The free space the outbox
sees is faked (``Outbox.free_bytes``), so the episode ends when the test says there is room.
tests/integration/test_faults_process.py does the same on a real, full tmpfs.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import AgentConfig
from agent.cycle import Identity
from agent.outage import OutageTracker, TrackerState
from agent.outbox import Outbox, OutboxFull, is_disk_full
from agent.publisher import SessionEvent
from agent.runner import Agent
from agent.sources.base import Collected
from outpost import wire
from outpost.wire import Event, Sample

T0 = 1_700_000_000.0
ROOM = 1 << 40  # what the fake file system reports once there is room again


class Disk:
    """One outbox whose database may grow by ``pages`` pages only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.room = 0
        self.box = self.open()

    def open(self) -> Outbox:
        box = Outbox(self.path, 1 << 30, reserve_bytes=4096)
        box.free_bytes = lambda: self.room
        return box

    def limit(self, pages: int) -> None:
        """Let the database grow by ``pages`` pages beyond what it has."""
        used = int(self.box._db.execute("PRAGMA page_count").fetchone()[0])
        self.box._db.execute(f"PRAGMA max_page_count = {used + pages}")

    def lift(self) -> None:
        self.box._db.execute("PRAGMA max_page_count = 1073741823")
        self.room = ROOM

    def kinds(self) -> list[str]:
        return [row.kind for row in self.box.rows_after(0, None, 100_000)]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    d = Disk(tmp_path / "state" / "outbox.sqlite")
    yield d
    d.box.close()


def cycle_rows(n: int, metrics: int = 3000, events: int = 0) -> list[tuple[str, bytes]]:
    rows = [("metrics", b"m%d." % n + b"x" * metrics)]
    if events:
        rows.append(("events", b"e%d." % n + b"y" * events))
    return rows


def test_what_counts_as_a_full_disk() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert is_disk_full(full)
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorcode = 10
    assert is_disk_full(io, free_bytes=0)
    assert not is_disk_full(io, free_bytes=1 << 30)
    assert not is_disk_full(sqlite3.OperationalError("no such table: outbox"))
    assert not is_disk_full(OSError("full"))


def test_the_oldest_metrics_make_room_and_are_declared_dropped(
    disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    box = disk.box
    disk.limit(12)
    n = 0
    while not box.full:  # fills the pages it may have
        n += 1
        box.add_many(cycle_rows(n, events=200), T0 + n)
        assert n < 100
    # The write that hit the limit was stored all the same.
    assert box.next_seq == 2 * n + 1
    assert [row.seq for row in box.rows_after(2 * n - 2, None, 10)] == [2 * n - 1, 2 * n]
    held = box.stats().bytes
    for _ in range(30):  # the episode goes on: the outbox stays at its size
        n += 1
        box.add_many(cycle_rows(n, events=200), T0 + n)
    stats = box.stats()
    assert stats.full and stats.full_episodes_total == 1
    assert stats.bytes <= held + 3200
    # Every seq is held or declared dropped, and only metrics were dropped.
    held_seqs = {row.seq for row in box.rows_after(0, None, 10_000)}
    dropped = {s for lo, hi in box.dropped_ranges() for s in range(lo, hi + 1)}
    assert held_seqs | dropped == set(range(1, box.next_seq))
    assert not held_seqs & dropped
    assert len(dropped) == stats.dropped_total > 0 and stats.dropped_events_total == 0
    assert all(seq % 2 == 1 for seq in dropped)  # metrics were the odd seqs
    assert disk.kinds().count("events") == n  # every event kept
    assert box.integrity_ok()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is full" in warnings[0].getMessage()  # once per episode


def test_a_cycles_own_metrics_go_before_older_events(disk: Disk) -> None:
    box = disk.box
    disk.limit(6)
    n = 0
    while not box.full:  # events only, until the disk is full
        n += 1
        box.add_many([("events", b"e" * 3000)], T0 + n)
        assert n < 50
    events = box.stats().dropped_events_total
    next_seq = box.next_seq
    # A cycle of metrics and a small event, with no old metrics left to drop: the event is
    # stored, the cycle's metrics dropped (declared), the old events kept.
    first = box.add_many([("metrics", b"m" * 2000), ("events", b"e" * 100)], T0 + 99)
    assert first == next_seq and box.next_seq == next_seq + 2
    assert [r.seq for r in box.rows_after(next_seq - 1, None, 10)] == [next_seq + 1]
    assert box.dropped_ranges()[-1] == (next_seq, next_seq)
    assert box.stats().dropped_events_total == events


def test_with_no_metrics_left_the_oldest_events_make_room(disk: Disk) -> None:
    box = disk.box
    disk.limit(8)
    for n in range(1, 60):  # a long outage with nothing but events
        box.add_many([("events", b"%d." % n + b"e" * 3000)], T0 + n)
    stats = box.stats()
    assert stats.full and stats.dropped_events_total == stats.dropped_total > 0
    held = [r.seq for r in box.rows_after(0, None, 1000)]
    assert held == list(range(60 - len(held), 60))  # the newest kept, in order
    dropped = {s for lo, hi in box.dropped_ranges() for s in range(lo, hi + 1)}
    assert dropped == set(range(1, 60 - len(held)))


def test_when_a_cycle_cannot_fit_at_all_nothing_is_stored_and_no_seq_is_used(
    disk: Disk,
) -> None:
    box = disk.box
    disk.limit(4)
    box.add_many([("metrics", b"m" * 100)], T0, {"k": "1"})
    next_seq, meta = box.next_seq, box.read_meta("k")
    huge = [("metrics", b"m" * 3000), ("events", b"e" * 40_000)]  # more than the disk holds
    with pytest.raises(OutboxFull):
        box.add_many(huge, T0 + 1, {"k": "x"})
    assert (box.next_seq, box.read_meta("k")) == (next_seq, meta)
    assert box.full and box.integrity_ok()
    # Nothing was half-written: reopened, the outbox holds what it said it held.
    stats = box.stats()
    box.close()
    disk.box = disk.open()
    assert disk.box.next_seq == next_seq
    assert disk.box.stats()[:4] == stats[:4]


def test_room_again_ends_the_episode_and_metrics_are_kept_again(
    disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    box = disk.box
    disk.limit(8)
    n = 0
    while not box.full:
        n += 1
        box.add_many(cycle_rows(n), T0 + n)
    box.add_many(cycle_rows(n + 1), T0 + n + 1)
    assert box.full and not box.reserve_path.exists()  # given up to make room
    dropped = box.stats().dropped_total
    disk.lift()
    for m in range(n + 2, n + 12):
        box.add_many(cycle_rows(m), T0 + m)
    stats = box.stats()
    assert not stats.full and stats.full_episodes_total == 1
    assert stats.dropped_total == dropped  # nothing more dropped
    assert box.reserve_path.stat().st_size == 4096  # the reserve is back
    assert "room again" in caplog.text
    # The counters survive a restart of the agent.
    box.close()
    disk.box = disk.open()
    again = disk.box.stats()
    assert (again.full_episodes_total, again.dropped_total) == (1, dropped)
    assert not again.full


def test_a_second_episode_is_counted_and_logged_again(disk: Disk) -> None:
    box = disk.box
    for episode in (1, 2):
        disk.limit(6)
        disk.room = 0
        n = 0
        while box.stats().full_episodes_total < episode:
            n += 1
            box.add_many(cycle_rows(n), T0 + n)
        disk.lift()
        box.add_many(cycle_rows(n), T0 + n)
        assert not box.full
    assert box.stats().full_episodes_total == 2


# --- the agent on a full disk ---------------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.connected = True
        self.sent: list[dict[str, Any]] = []

    def publish(self, kind: str, payload: bytes) -> int | None:
        self.sent.append(json.loads(payload))
        return len(self.sent)


class Noisy:
    """A source with a big metrics batch and one event every cycle; with ``on``, an event
    too big for the disk."""

    name = "noisy"

    def __init__(self) -> None:
        self.n = 0
        self.on = False

    def collect(self, now: float) -> Collected:
        self.n += 1
        samples = [Sample("outpost_test_value", float(i), {"i": str(i)}) for i in range(40)]
        text = "x" * (100_000 if self.on else 10)
        event = Event(kind="test_event", severity="info", ts=int(now * 1000),
                      message=f"event {self.n}", attrs={"text": text})  # fmt: skip
        return Collected(samples=samples, events=[event])


def make_agent(disk: Disk) -> tuple[Agent, FakePublisher]:
    cfg = AgentConfig(site="s1", host="h1", state_dir=str(disk.path.parent))
    agent = Agent(cfg, sources=[Noisy()])
    agent.outbox = disk.box
    agent.who = Identity("s1", "h1", disk.box.agent_id, "boot")
    agent.outages = OutageTracker(TrackerState(), cfg.outage_report_min_seconds)
    pub = FakePublisher()
    agent.publisher = pub  # type: ignore[assignment]
    return agent, pub


def health(agent: Agent) -> dict[str, float]:
    """The agent's own samples in the newest metrics batch it stored."""
    for row in reversed(agent.outbox.rows_after(0, None, 100_000)):
        if row.kind == wire.METRICS:
            batch = msgspec.json.decode(row.payload, type=wire.Batch)
            return {s.name: s.value for s in batch.samples if s.name.startswith("outpost_agent")}
    return {}


def test_the_agent_keeps_running_drops_metrics_first_and_reports_it(
    disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    agent, pub = make_agent(disk)
    disk.limit(16)
    now = T0
    for _ in range(60):  # the link is down: everything stays in the outbox
        now += 1
        agent.cycle(now)
    box = agent.outbox
    assert box.full and agent.write_failures == 0
    events = [r for r in box.rows_after(0, None, 10_000) if r.kind == wire.EVENTS]
    assert len(events) == 60  # every event kept
    assert box.stats().dropped_total > 0 and box.stats().dropped_events_total == 0
    # The newest metrics batch says so.
    got = health(agent)
    assert got["outpost_agent_outbox_full"] == 1.0
    assert got["outpost_agent_outbox_full_episodes_total"] == 1.0
    assert got["outpost_agent_outbox_dropped_total"] > 0

    # A long outage: when no metrics are left, the oldest events make room; the newest
    # cycles are always stored.
    cycles = 60
    while box.stats().dropped_events_total == 0:
        now += 1
        cycles += 1
        agent.cycle(now)
        assert cycles < 1000
        if box.stats().dropped_events_total:
            kinds = [r.kind for r in box.rows_after(0, None, 10_000)]
            assert kinds.count(wire.METRICS) <= 1  # only this cycle's, if any
    assert agent.write_failures == 0
    newest = box.rows_after(box.next_seq - 2, None, 10)
    assert [r.kind for r in newest] == [wire.EVENTS]  # this cycle's event
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # A cycle that cannot fit at all: not stored, counted, logged once; and it does not
    # empty the outbox trying.
    big = agent.sources[0]
    assert isinstance(big, Noisy)
    held = box.stats().rows
    big.on = True
    for _ in range(3):
        now += 1
        agent.cycle(now)
    assert agent.write_failures == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert box.stats().rows >= held - 10
    big.on = False

    # The link comes back: the backlog goes out with every drop declared; acks still work
    # on the full disk.
    agent._handle(SessionEvent("connected"))
    agent._drain()
    assert pub.sent
    sent_seqs = {b["seq"] for b in pub.sent}
    declared = {s for lo, hi in pub.sent[-1]["dropped"] for s in range(lo, hi + 1)}
    assert sent_seqs | declared >= set(range(pub.sent[-1]["outbox_low"], box.next_seq))
    ack = wire.Ack(v=1, agent_id=agent.who.agent_id, upto=box.next_seq - 1)
    agent._handle(SessionEvent("ack", wire.encode(ack)))
    assert box.stats().rows == 0

    # Room again: metrics are stored and the full flag goes back to 0.
    disk.lift()
    failures = agent.write_failures
    for _ in range(3):
        now += 1
        agent.cycle(now)
    assert not box.stats().full and agent.write_failures == failures
    assert health(agent)["outpost_agent_outbox_full"] == 0.0
    assert health(agent)["outpost_agent_outbox_write_failures_total"] == failures


def test_an_ack_the_full_disk_cannot_apply_does_not_stop_the_agent(
    disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _pub = make_agent(disk)
    agent.cycle(T0)
    assert agent.outbox.next_seq == 3

    def full(*args: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(agent.outbox, "ack", full)
    ack = wire.Ack(v=1, agent_id=agent.who.agent_id, upto=2)
    agent._handle(SessionEvent("ack", wire.encode(ack)))  # no exception
    monkeypatch.undo()
    agent._handle(SessionEvent("ack", wire.encode(ack)))
    assert agent.outbox.stats().rows == 0


def test_drops_beyond_one_batch_keep_outbox_low_below_them(disk: Disk) -> None:
    """More dropped ranges than a batch may declare: outbox_low stays at the first one left
    out, so the collector never counts those seqs as lost."""
    agent, pub = make_agent(disk)
    agent.limits = wire.Limits(max_ranges=2)
    box = agent.outbox
    for seq in range(1, 9):  # metrics at odd seqs, events at even ones
        box.add("metrics" if seq % 2 else "events", b'{"seq":%d}' % seq, T0 + seq)
    # Metrics 1, 3, 5 and 7 dropped, events 2 and 4 acknowledged.
    box._db.execute("DELETE FROM outbox WHERE seq IN (1, 2, 3, 4, 5, 7)")
    box._record_dropped([(1, 1), (3, 3), (5, 5), (7, 7)])
    assert box.low() == 6
    agent._handle(SessionEvent("connected"))
    agent._drain()
    first = pub.sent[0]
    assert first["dropped"] == [[1, 1], [3, 3]]
    assert first["outbox_low"] == 5  # not 6: seq 5 is declared with a later batch


def test_an_outbox_that_cannot_open_on_a_full_disk_gives_up_its_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite needs room for its log to open the database (after a clean stop it is gone)."""
    path = tmp_path / "outbox.sqlite"
    Outbox(path, 1 << 20, reserve_bytes=4096).close()
    real = Outbox._open
    tries: list[bool] = []

    def full_until_the_reserve_goes(box: Outbox) -> sqlite3.Connection:
        tries.append(box.reserve_path.exists())
        if box.reserve_path.exists():
            raise sqlite3.OperationalError("database or disk is full")
        return real(box)

    monkeypatch.setattr(Outbox, "_open", full_until_the_reserve_goes)
    box = Outbox(path, 1 << 20, reserve_bytes=4096)
    try:
        assert tries == [True, False]
        assert box.full and box.stats().full_episodes_total == 1
        box.free_bytes = lambda: 0
        assert box.add_many([("metrics", b"{}")], T0) == 1  # and it works
    finally:
        box.close()

    # No reserve left to give: the error is the caller's (the agent exits; systemd retries).
    def always_full(box: Outbox) -> sqlite3.Connection:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Outbox, "_open", always_full)
    box.reserve_path.unlink(missing_ok=True)
    with pytest.raises(sqlite3.OperationalError):
        Outbox(path, 1 << 20, reserve_bytes=4096)
