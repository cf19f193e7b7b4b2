"""The outbox: every batch and event is written here before it may go to the network.

An SQLite database in WAL mode with ``synchronous=FULL``: a row, and the seq counter that
numbered it, are on disk before the cycle ends, so a power cut never makes a seq repeat. A row
is deleted only when the collector's end-to-end ack covers it. The outbox is bounded in bytes;
past the bound it drops the oldest metrics first and events only when nothing else is left,
and remembers the dropped seq ranges until an ack settles them, so the collector can tell a
drop from a loss.

Only the agent's main thread touches an Outbox.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from outpost.wire import merge_ranges

__all__ = ["Outbox", "OutboxRow", "OutboxStats"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS dropped (lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL);
"""

# Kinds in the order they are sacrificed when the outbox is full.
_DROP_ORDER = ("metrics", "events")


class OutboxRow(NamedTuple):
    seq: int
    kind: str
    payload: bytes


class OutboxStats(NamedTuple):
    rows: int
    bytes: int
    dropped_total: int
    dropped_events_total: int


class Outbox:
    """A bounded, durable queue of encoded messages keyed by seq."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._tx():
            if self._meta("agent_id") is None:
                self._set_meta("agent_id", uuid.uuid4().hex)
            if self._meta("next_seq") is None:
                self._set_meta("next_seq", "1")
        self.agent_id: str = self._meta("agent_id") or ""
        self._next_seq = int(self._meta("next_seq") or "1")
        self._dropped_total = int(self._meta("dropped_total") or "0")
        self._dropped_events_total = int(self._meta("dropped_events_total") or "0")
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._rows, self._bytes = int(row[0]), int(row[1])

    # --- small helpers ----------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def read_meta(self, key: str) -> str | None:
        return self._meta(key)

    # --- writing ----------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The seq the next added row will get."""
        return self._next_seq

    def add(self, kind: str, payload: bytes, now: float) -> int:
        """Store one encoded message under the next seq (see ``add_many``)."""
        return self.add_many([(kind, payload)], now)

    def add_many(
        self, rows: list[tuple[str, bytes]], now: float, meta: dict[str, str] | None = None
    ) -> int:
        """Store (kind, payload) rows under consecutive seqs from ``next_seq``, and ``meta``
        entries, in one transaction (one fsync a cycle); then enforce the bound. Returns the
        first seq.

        The caller encoded each payload with the seq it will get: ``next_seq`` read just
        before, plus the row's position. The counter and the rows commit together.
        """
        first = self._next_seq
        before = (self._rows, self._bytes, self._dropped_total, self._dropped_events_total)
        try:
            with self._tx():
                for i, (kind, payload) in enumerate(rows):
                    self._db.execute(
                        "INSERT INTO outbox (seq, kind, payload, size, created) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (first + i, kind, payload, len(payload), now),
                    )
                    self._rows += 1
                    self._bytes += len(payload)
                for key, value in (meta or {}).items():
                    self._set_meta(key, value)
                if rows:
                    self._set_meta("next_seq", str(first + len(rows)))
                    self._enforce_bound(keep=first + len(rows) - 1)
        except BaseException:
            # Rolled back (a full disk, say): the counters follow the database.
            self._rows, self._bytes, self._dropped_total, self._dropped_events_total = before
            raise
        self._next_seq = first + len(rows)
        return first

    def _enforce_bound(self, keep: int) -> None:
        dropped: list[tuple[int, int]] = []
        for kind in _DROP_ORDER:
            while self._bytes > self.max_bytes:
                row = self._db.execute(
                    "SELECT seq, size FROM outbox WHERE kind = ? AND seq != ? ORDER BY seq LIMIT 1",
                    (kind, keep),
                ).fetchone()
                if row is None:
                    break
                seq, size = int(row[0]), int(row[1])
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                self._rows -= 1
                self._bytes -= size
                dropped.append((seq, seq))
                self._dropped_total += 1
                if kind == "events":
                    self._dropped_events_total += 1
        if dropped:
            self._record_dropped(dropped)
            self._set_meta("dropped_total", str(self._dropped_total))
            self._set_meta("dropped_events_total", str(self._dropped_events_total))

    def _record_dropped(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged = merge_ranges([*self.dropped_ranges(), *ranges])
        self._db.execute("DELETE FROM dropped")
        self._db.executemany("INSERT INTO dropped (lo, hi) VALUES (?, ?)", merged)

    def ack(self, upto: int, ranges: Iterable[tuple[int, int]] = ()) -> int:
        """Delete what the collector settled; forget drop ranges it has seen. Returns rows
        deleted."""
        spans = [(1, upto)] if upto >= 1 else []
        spans.extend(r for r in ranges if r[0] <= r[1])
        if not spans:
            return 0
        deleted = 0
        with self._tx():
            for lo, hi in merge_ranges(spans):
                row = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE seq BETWEEN ? AND ?",
                    (lo, hi),
                ).fetchone()
                if row[0]:
                    self._db.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (lo, hi))
                    deleted += int(row[0])
                    self._rows -= int(row[0])
                    self._bytes -= int(row[1])
            if upto >= 1:
                self._db.execute("DELETE FROM dropped WHERE hi <= ?", (upto,))
                self._db.execute("UPDATE dropped SET lo = ? WHERE lo <= ?", (upto + 1, upto))
        return deleted

    # --- reading ----------------------------------------------------------------------------

    def low(self) -> int:
        """The lowest seq still held; ``next_seq`` when the outbox is empty."""
        row = self._db.execute("SELECT MIN(seq) FROM outbox").fetchone()
        return self._next_seq if row[0] is None else int(row[0])

    def rows_after(self, after: int, below: int | None, limit: int) -> list[OutboxRow]:
        """Rows with ``after < seq < below`` in seq order."""
        if below is None:
            cur = self._db.execute(
                "SELECT seq, kind, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
        else:
            cur = self._db.execute(
                "SELECT seq, kind, payload FROM outbox WHERE seq > ? AND seq < ? "
                "ORDER BY seq LIMIT ?",
                (after, below, limit),
            )
        return [OutboxRow(int(s), str(k), bytes(p)) for s, k, p in cur.fetchall()]

    def dropped_ranges(self) -> list[tuple[int, int]]:
        cur = self._db.execute("SELECT lo, hi FROM dropped ORDER BY lo")
        return [(int(lo), int(hi)) for lo, hi in cur.fetchall()]

    def stats(self) -> OutboxStats:
        return OutboxStats(self._rows, self._bytes, self._dropped_total, self._dropped_events_total)

    def integrity_ok(self) -> bool:
        row = self._db.execute("PRAGMA integrity_check").fetchone()
        return bool(row and row[0] == "ok")

    def close(self) -> None:
        self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
