"""Tests for agent.outbox.Outbox: durable seqs, acks, the byte bound and drop bookkeeping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import Outbox, OutboxRow, OutboxStats

T0 = 1_700_000_000.0


class Boxes:
    """Opens outboxes on one file and closes every one of them at the end of the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened: list[Outbox] = []

    def open(self, max_bytes: int = 1 << 20) -> Outbox:
        box = Outbox(self.path, max_bytes)
        self.opened.append(box)
        return box

    def reopen(self, box: Outbox) -> Outbox:
        box.close()
        return self.open(box.max_bytes)


@pytest.fixture
def boxes(tmp_path: Path) -> Iterator[Boxes]:
    b = Boxes(tmp_path / "state" / "outbox.sqlite")
    yield b
    for box in b.opened:
        box.close()


def p(n: int, size: int = 10) -> bytes:
    """A payload of ``size`` bytes tagged with ``n``."""
    return str(n).encode().ljust(size, b".")


def seqs(box: Outbox) -> list[int]:
    return [row.seq for row in box.rows_after(0, None, 1000)]


def test_seqs_start_at_one_and_never_repeat_after_reopen(boxes: Boxes) -> None:
    box = boxes.open()
    assert box.next_seq == 1
    assert [box.add("metrics", p(i), T0) for i in range(3)] == [1, 2, 3]
    box.ack(3)  # even with everything acknowledged and deleted...
    box = boxes.reopen(box)
    assert box.next_seq == 4  # ...the counter survives
    assert box.add("metrics", p(4), T0) == 4


def test_agent_id_is_stable_across_reopen(boxes: Boxes, tmp_path: Path) -> None:
    box = boxes.open()
    agent_id = box.agent_id
    assert len(agent_id) == 32
    assert boxes.reopen(box).agent_id == agent_id
    other = Outbox(tmp_path / "other.sqlite", 1000)
    try:
        assert other.agent_id != agent_id
    finally:
        other.close()


def test_rows_are_kept_with_their_kind_and_payload(boxes: Boxes) -> None:
    box = boxes.open()
    box.add("metrics", b'{"a":1}', T0)
    box.add("events", b'{"b":2}', T0)
    box = boxes.reopen(box)
    assert box.rows_after(0, None, 10) == [
        OutboxRow(1, "metrics", b'{"a":1}'),
        OutboxRow(2, "events", b'{"b":2}'),
    ]
    assert box.stats() == OutboxStats(rows=2, bytes=14, dropped_total=0, dropped_events_total=0)


def test_ack_deletes_upto_and_ranges(boxes: Boxes) -> None:
    box = boxes.open()
    for i in range(1, 8):
        box.add("metrics", p(i, size=i), T0)
    assert box.ack(2, [(4, 4), (6, 9)]) == 5
    assert seqs(box) == [3, 5]
    assert box.stats() == OutboxStats(rows=2, bytes=3 + 5, dropped_total=0, dropped_events_total=0)
    assert box.ack(2, [(4, 4)]) == 0  # already gone: nothing changes
    assert box.ack(0) == 0
    assert box.ack(0, [(5, 4)]) == 0  # an empty range is ignored
    assert box.stats().rows == 2
    box = boxes.reopen(box)
    assert box.stats() == OutboxStats(rows=2, bytes=8, dropped_total=0, dropped_events_total=0)


def test_low(boxes: Boxes) -> None:
    box = boxes.open()
    assert box.low() == 1  # empty: the next seq
    for i in range(1, 5):
        box.add("metrics", p(i), T0)
    assert box.low() == 1
    box.ack(0, [(1, 2)])
    assert box.low() == 3
    box.ack(4)
    assert box.low() == 5 == box.next_seq


def test_rows_after(boxes: Boxes) -> None:
    box = boxes.open()
    for i in range(1, 8):
        box.add("events" if i % 2 else "metrics", p(i), T0)
    assert [r.seq for r in box.rows_after(2, None, 100)] == [3, 4, 5, 6, 7]
    assert [r.seq for r in box.rows_after(2, 6, 100)] == [3, 4, 5]
    assert [r.seq for r in box.rows_after(0, None, 2)] == [1, 2]
    assert box.rows_after(7, None, 10) == []
    assert box.rows_after(3, 4, 10) == []
    box.ack(0, [(4, 5)])
    assert [r.seq for r in box.rows_after(2, None, 2)] == [3, 6]


def test_the_bound_drops_oldest_metrics_first_then_events(boxes: Boxes) -> None:
    box = boxes.open(max_bytes=100)
    box.add("events", p(1, 30), T0)
    box.add("metrics", p(2, 30), T0)
    box.add("metrics", p(3, 30), T0)
    assert box.stats() == OutboxStats(rows=3, bytes=90, dropped_total=0, dropped_events_total=0)
    box.add("events", p(4, 30), T0)  # 120 > 100: the oldest metrics row goes
    assert (seqs(box), box.dropped_ranges()) == ([1, 3, 4], [(2, 2)])
    box.add("metrics", p(5, 30), T0)
    assert (seqs(box), box.dropped_ranges()) == ([1, 4, 5], [(2, 3)])  # merged
    box.add("events", p(6, 30), T0)
    assert (seqs(box), box.dropped_ranges()) == ([1, 4, 6], [(2, 3), (5, 5)])
    box.add("events", p(7, 30), T0)  # no metrics left: the oldest event goes
    assert (seqs(box), box.dropped_ranges()) == ([4, 6, 7], [(1, 3), (5, 5)])
    assert box.stats() == OutboxStats(rows=3, bytes=90, dropped_total=4, dropped_events_total=1)
    box = boxes.reopen(box)
    assert box.stats() == OutboxStats(rows=3, bytes=90, dropped_total=4, dropped_events_total=1)
    assert box.dropped_ranges() == [(1, 3), (5, 5)]


def test_one_add_may_drop_several_rows_but_never_the_new_one(boxes: Boxes) -> None:
    box = boxes.open(max_bytes=100)
    for i in range(1, 4):
        box.add("metrics", p(i, 30), T0)
    box.add("events", p(4, 80), T0)  # 170: drops 1, 2 and 3
    assert (seqs(box), box.dropped_ranges()) == ([4], [(1, 3)])
    box.add("metrics", p(5, 150), T0)  # bigger than the bound alone: kept, the event goes
    assert (seqs(box), box.dropped_ranges()) == ([5], [(1, 4)])
    assert box.stats() == OutboxStats(rows=1, bytes=150, dropped_total=4, dropped_events_total=1)


def test_an_ack_prunes_the_dropped_ranges_it_settles(boxes: Boxes) -> None:
    box = boxes.open(max_bytes=100)
    box.add("events", p(1, 30), T0)
    for i in range(2, 8):
        box.add("metrics", p(i, 30), T0)
    box.add("events", p(8, 30), T0)
    assert (seqs(box), box.dropped_ranges()) == ([1, 7, 8], [(2, 6)])
    box.ack(0, [(7, 7)])  # ranges alone do not settle drops
    assert box.dropped_ranges() == [(2, 6)]
    box.ack(3)
    assert box.dropped_ranges() == [(4, 6)]
    assert seqs(box) == [8]
    box = boxes.reopen(box)
    assert box.dropped_ranges() == [(4, 6)]
    box.ack(6)
    assert box.dropped_ranges() == []
    assert box.stats().dropped_total == 5  # the count stays


def test_integrity_ok(boxes: Boxes) -> None:
    box = boxes.open()
    box.add("metrics", p(1), T0)
    assert box.integrity_ok()


def test_the_state_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "outbox.sqlite"
    box = Outbox(path, 1000)
    try:
        assert path.exists()
    finally:
        box.close()


def test_add_many_numbers_rows_consecutively_and_commits_meta_with_them(tmp_path: Path) -> None:
    from agent.outbox import Outbox

    box = Outbox(tmp_path / "o.sqlite", 1 << 20)
    box.add("metrics", b"{}", 1.0)
    first = box.add_many([("metrics", b'{"a":1}'), ("events", b'{"b":2}')], 2.0, {"k": "v"})
    assert first == 2 and box.next_seq == 4
    assert [r.seq for r in box.rows_after(0, None, 10)] == [1, 2, 3]
    assert box.add_many([], 3.0, {"k": "w"}) == 4 and box.next_seq == 4
    box.close()
    again = Outbox(tmp_path / "o.sqlite", 1 << 20)
    assert again.read_meta("k") == "w" and again.next_seq == 4


def test_a_reserve_is_kept_beside_the_database(tmp_path: Path) -> None:
    """Room for SQLite to make room when the disk is full (test_disk_full.py)."""
    box = Outbox(tmp_path / "o.sqlite", 1 << 20, reserve_bytes=8192)
    try:
        assert box.reserve_path == tmp_path / "o.sqlite.reserve"
        assert box.reserve_path.stat().st_size == 8192
        stats = box.stats()
        assert (stats.full, stats.full_episodes_total) == (False, 0)
    finally:
        box.close()
    none = Outbox(tmp_path / "p.sqlite", 1 << 20, reserve_bytes=0)
    try:
        assert not none.reserve_path.exists()
    finally:
        none.close()


def test_a_big_ack_deletes_everything_it_covers(boxes: Boxes) -> None:
    """Deleted a few hundred rows per transaction (outbox.py), with the counts right."""
    box = boxes.open()
    for i in range(1, 1301):
        box.add("metrics" if i % 3 else "events", p(i), T0)
    assert box.ack(1000, [(1100, 1299)]) == 1200
    assert seqs(box) == [*range(1001, 1100), 1300]
    assert box.stats().rows == 100 and box.stats().bytes == 1000
    box = boxes.reopen(box)
    assert box.stats().rows == 100 and box.stats().bytes == 1000
