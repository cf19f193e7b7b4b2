"""The outbox: every batch and event is written here before it may go to the network.

An SQLite database in WAL mode with ``synchronous=FULL``: a row, and the seq counter that
numbered it, are on disk before the cycle ends, so a power cut never makes a seq repeat. A row
is deleted only when the collector's end-to-end ack covers it. The outbox is bounded in bytes;
past the bound it drops the oldest metrics first and events only when nothing else is left,
and remembers the dropped seq ranges until an ack settles them, so the collector can tell a
drop from a loss.

A full disk is survived the same way. SQLite needs room to delete rows too (in WAL mode the
deletion is written to the log first, and the checkpoint that lets the log start over may grow
the database), so the outbox keeps a **reserve** file beside the database and keeps its log
small (checkpointed every 1 MiB, cut back to that size when it starts over; acks delete a few
hundred rows per transaction). When a write fails because the disk is full, a *disk-full
episode* starts: the reserve is given up and the log checkpointed. While the episode lasts the
database does not grow: a cycle's rows go into the pages the oldest metrics leave (dropped and
recorded like any drop), and the log is checkpointed after every write, so it starts over
within the room it already has and whatever else fills the disk cannot stop the outbox. With
no old metrics left, the cycle's own metrics are dropped (their seqs recorded, so nothing is
counted as lost), and only then the oldest events make room for its events. The episode ends
when the file system has room again and the reserve is back. An agent that starts on a full
disk gives up the reserve to open the database (SQLite makes its log anew after a clean stop)
and starts in an episode.

Only the agent's main thread touches an Outbox.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from outpost.wire import merge_ranges

__all__ = ["RESERVE_BYTES", "Outbox", "OutboxFull", "OutboxRow", "OutboxStats", "is_disk_full"]

log = logging.getLogger(__name__)

RESERVE_BYTES = 2 * 1024 * 1024
"""The reserve kept beside the database: room for SQLite to checkpoint its log and delete old
rows when the disk is full. More than the log holds between two checkpoints (below)."""

_CHECKPOINT_PAGES = 256
"""Checkpoint the log every this many pages (1 MiB), so the reserve covers what a checkpoint
may add to the database."""

_RESUME_MARGIN = 1024 * 1024
"""A disk-full episode ends when the file system has this much room beyond the reserve."""

_GROW_MARGIN = 256 * 1024
"""During an episode the database grows only when the file system has this much room beyond
what the write needs."""

_SQLITE_IOERR = 10
_SQLITE_FULL = 13

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
    full: bool = False  # in a disk-full episode
    full_episodes_total: int = 0


class OutboxFull(sqlite3.OperationalError):
    """A write the full disk could not take even in place of old rows (a cycle bigger than
    all the outbox holds, or a log that cannot start over). Nothing of it was stored; its
    seqs were not used."""


def is_disk_full(exc: BaseException, free_bytes: int | None = None) -> bool:
    """Whether an SQLite error means the disk (or the database's page limit) is full. An I/O
    error counts too when the file system has no room left (``free_bytes`` under 64 KiB)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_FULL or "disk is full" in str(exc):
        return True
    return code == _SQLITE_IOERR and free_bytes is not None and free_bytes < 64 * 1024


def _free_bytes(directory: Path) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return int(st.f_bavail) * int(st.f_frsize)


class Outbox:
    """A bounded, durable queue of encoded messages keyed by seq."""

    def __init__(self, path: Path, max_bytes: int, reserve_bytes: int = RESERVE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.reserve_path = path.with_name(path.name + ".reserve")
        # Room left on the file system (a test may put a fake in its place).
        self.free_bytes: Callable[[], int] = lambda: _free_bytes(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        full: sqlite3.Error | None = None
        try:
            self._db = self._open()
        except sqlite3.Error as exc:
            # SQLite needs room to open its log: on a full disk, the reserve gives it.
            if not is_disk_full(exc, self.free_bytes()) or not self.reserve_path.exists():
                raise
            full = exc
            self._release_reserve()
            self._db = self._open()
        self.agent_id: str = self._meta("agent_id") or ""
        self._next_seq = int(self._meta("next_seq") or "1")
        self._dropped_total = int(self._meta("dropped_total") or "0")
        self._dropped_events_total = int(self._meta("dropped_events_total") or "0")
        self._full_episodes = int(self._meta("full_episodes_total") or "0")
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._rows, self._bytes = int(row[0]), int(row[1])
        self.full = False  # in a disk-full episode
        if full is not None:
            self._start_episode(full)
        else:
            self._ensure_reserve()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
            # A log that grew (a big ack after an outage) shrinks back when it starts over.
            db.execute(f"PRAGMA journal_size_limit={_CHECKPOINT_PAGES * 4096}")
            db.executescript(_SCHEMA)
            with _Transaction(db):
                for key, value in (("agent_id", uuid.uuid4().hex), ("next_seq", "1")):
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                        (key, value),
                    )
        except BaseException:
            db.close()
            raise
        return db

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

        On a full disk (see the module's docstring) the rows go into the pages the oldest
        metrics leave, then the rows that are not metrics alone (the others' seqs recorded as
        dropped), in place of old events if need be; :class:`OutboxFull` when even that
        failed: nothing was stored and no seq used.
        """
        if self.full:
            self._maybe_resume()
        try:
            first = self._store(rows, now, meta)
        except sqlite3.Error as exc:
            if not is_disk_full(exc, self.free_bytes()):
                raise
            if not self.full:
                self._start_episode(exc)
            first = self._store_when_full(rows, now, meta)
        if self.full:
            self._checkpoint()
        return first

    def _store(
        self,
        rows: list[tuple[str, bytes]],
        now: float,
        meta: dict[str, str] | None,
        skip: frozenset[int] = frozenset(),
        room_from: tuple[str, ...] = ("metrics",),
    ) -> int:
        """One transaction: the rows, the meta entries, the seq counter, the bound; during a
        disk-full episode without growing the database, in place of old rows of the kinds
        in ``room_from``. Rows whose position is in ``skip`` are not stored; their seqs are
        recorded as dropped."""
        first = self._next_seq
        before = (self._rows, self._bytes, self._dropped_total, self._dropped_events_total)
        try:
            with self._tx():
                if self.full:
                    self._write_in_place(first, rows, now, meta, skip, room_from)
                else:
                    self._write(first, rows, now, meta, skip)
        except BaseException:
            # Rolled back (a full disk, say): the counters follow the database.
            self._rows, self._bytes, self._dropped_total, self._dropped_events_total = before
            raise
        self._next_seq = first + len(rows)
        return first

    def _write(
        self,
        first: int,
        rows: list[tuple[str, bytes]],
        now: float,
        meta: dict[str, str] | None,
        skip: frozenset[int],
    ) -> None:
        """What one write changes, in the open transaction."""
        for i, (kind, payload) in enumerate(rows):
            if i in skip:
                continue
            self._db.execute(
                "INSERT INTO outbox (seq, kind, payload, size, created) VALUES (?, ?, ?, ?, ?)",
                (first + i, kind, payload, len(payload), now),
            )
            self._rows += 1
            self._bytes += len(payload)
        if skip:
            self._count_dropped([(first + i, rows[i][0]) for i in sorted(skip)])
        for key, value in (meta or {}).items():
            self._set_meta(key, value)
        if self._full_episodes:
            self._set_meta("full_episodes_total", str(self._full_episodes))
        if rows:
            self._set_meta("next_seq", str(first + len(rows)))
            self._enforce_bound(keep=first + len(rows) - 1)

    def _count_dropped(self, dropped: list[tuple[int, str]]) -> None:
        """Count (seq, kind) rows as dropped and record their seqs, in the open transaction."""
        self._dropped_total += len(dropped)
        self._dropped_events_total += sum(kind == "events" for _, kind in dropped)
        self._record_dropped([(seq, seq) for seq, _ in dropped])
        self._save_counters()

    # --- a full disk ------------------------------------------------------------------------

    def _write_in_place(
        self,
        first: int,
        rows: list[tuple[str, bytes]],
        now: float,
        meta: dict[str, str] | None,
        skip: frozenset[int],
        room_from: tuple[str, ...],
    ) -> None:
        """Write without growing the database: try, and while the write needs pages the file
        does not have, undo it, drop more of the oldest rows of the kinds in ``room_from``
        and try again. With none of them left, grow only when the file system has room."""
        pages = self._page_count()
        batch = 1
        while True:
            counts = (self._rows, self._bytes, self._dropped_total, self._dropped_events_total)
            self._db.execute("SAVEPOINT in_place")
            try:
                self._write(first, rows, now, meta, skip)
                fits = self._page_count() <= pages
            except sqlite3.Error as exc:
                if not is_disk_full(exc, self.free_bytes()) or not self._db.in_transaction:
                    raise  # SQLite rolled the whole transaction back: the caller tries again
                fits = False
            if fits:
                self._db.execute("RELEASE in_place")
                return
            self._db.execute("ROLLBACK TO in_place")
            self._db.execute("RELEASE in_place")
            self._rows, self._bytes, self._dropped_total, self._dropped_events_total = counts
            if not self._drop_oldest(batch, room_from):
                break
            batch = min(batch * 2, 64)
        # Growing now would leave the log a checkpoint it cannot finish, and every later
        # write stuck: only with room to spare.
        need = sum(len(p) for i, (_, p) in enumerate(rows) if i not in skip)
        if self.free_bytes() < need + _GROW_MARGIN:
            raise OutboxFull("database or disk is full (no room left in the outbox's pages)")
        self._write(first, rows, now, meta, skip)

    def _page_count(self) -> int:
        return int(self._db.execute("PRAGMA page_count").fetchone()[0])

    def _drop_oldest(self, n: int, kinds: tuple[str, ...]) -> int:
        """Delete the ``n`` oldest rows of ``kinds`` (metrics before events) and record them
        as dropped; returns how many there were."""
        marks = ",".join("?" * len(kinds))
        found = self._db.execute(
            f"SELECT seq, size, kind FROM outbox WHERE kind IN ({marks}) "
            "ORDER BY kind = 'events', seq LIMIT ?",
            (*kinds, n),
        ).fetchall()
        for seq, size, _ in found:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._rows -= 1
            self._bytes -= int(size)
        if found:
            self._count_dropped([(int(seq), str(kind)) for seq, _, kind in found])
        return len(found)

    def _start_episode(self, exc: sqlite3.Error) -> None:
        self.full = True
        self._full_episodes += 1
        log.warning(
            "the disk holding the outbox (%s) is full (%s): the outbox no longer grows; the "
            "oldest metrics make room, events only when no metrics are left. Free some "
            "space; the agent goes on by itself",
            self.path.parent,
            exc,
        )
        # Room for the checkpoint that lets the log start over.
        self._release_reserve()
        self._checkpoint()

    def _store_when_full(
        self, rows: list[tuple[str, bytes]], now: float, meta: dict[str, str] | None
    ) -> int:
        """The write again in place of old metrics; then the cycle's events without its
        metrics; then those events in place of old events. While an attempt fails, old rows
        are dropped in transactions of their own and it is tried again."""
        metrics = frozenset(i for i, (kind, _) in enumerate(rows) if kind == "metrics")
        attempts = (
            (frozenset[int](), ("metrics",)),
            (metrics, ("metrics",)),
            (metrics, _DROP_ORDER),
        )
        last: sqlite3.Error | None = None
        for skip, room_from in attempts:
            # Old rows dropped on their own are gone even if the write still fails: no more
            # than about what it needs, and none when all of them would not make room (a
            # cycle too big for the disk must not empty the outbox).
            need = sum(len(p) for i, (_, p) in enumerate(rows) if i not in skip)
            room, page = self._room(room_from)
            budget = 2 * need + 8 * page if need <= room else 0
            batch = 1
            while True:
                try:
                    return self._store(rows, now, meta, skip, room_from)
                except sqlite3.Error as exc:
                    if not is_disk_full(exc, self.free_bytes()):
                        raise
                    last = exc
                freed = self._drop_alone(batch, room_from) if budget > 0 else 0
                if not freed:
                    break
                budget -= freed
                batch = min(batch * 2, 64)
        raise OutboxFull(f"the disk holding the outbox is full: {last}") from last

    def _room(self, kinds: tuple[str, ...]) -> tuple[int, int]:
        """About the most room dropping every row of ``kinds`` could make (their bytes and
        the free pages the database already has), and the page size."""
        marks = ",".join("?" * len(kinds))
        held = self._db.execute(
            f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE kind IN ({marks})", kinds
        ).fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(held) + int(free) * int(size), int(size)

    def _drop_alone(self, n: int, kinds: tuple[str, ...]) -> int:
        """Drop the ``n`` oldest rows of ``kinds`` in a transaction of their own, then
        checkpoint; returns the bytes that went (0: none left, or the disk did not even
        allow that)."""
        before = (self._rows, self._bytes, self._dropped_total, self._dropped_events_total)
        try:
            with self._tx():
                if not self._drop_oldest(n, kinds):
                    return 0
        except sqlite3.Error as exc:
            self._rows, self._bytes, self._dropped_total, self._dropped_events_total = before
            log.debug("could not drop old rows to make room: %s", exc)
            return 0
        self._checkpoint()
        return max(1, before[1] - self._bytes)

    def _maybe_resume(self) -> None:
        """End the disk-full episode once the file system has room and the reserve is back."""
        if self.free_bytes() < self.reserve_bytes + _RESUME_MARGIN:
            return
        if not self._ensure_reserve():
            return
        self.full = False
        log.warning(
            "the disk holding the outbox has room again (%d messages dropped so far)",
            self._dropped_total,
        )

    def _checkpoint(self) -> None:
        """Copy the log into the database, so the next write starts the log over and needs no
        new room; best effort."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("checkpoint failed: %s", exc)

    def _ensure_reserve(self) -> bool:
        """Make sure the reserve file holds ``reserve_bytes``; False when there is no room."""
        if self.reserve_bytes <= 0:
            return True
        try:
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        except OSError:
            pass
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("cannot make the outbox's reserve %s: %s", self.reserve_path, exc)
            self._release_reserve()
            return False
        return True

    def _release_reserve(self) -> None:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.debug("cannot remove the outbox's reserve %s: %s", self.reserve_path, exc)

    def _save_counters(self) -> None:
        self._set_meta("dropped_total", str(self._dropped_total))
        self._set_meta("dropped_events_total", str(self._dropped_events_total))

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
            self._save_counters()

    def _record_dropped(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged = merge_ranges([*self.dropped_ranges(), *ranges])
        self._db.execute("DELETE FROM dropped")
        self._db.executemany("INSERT INTO dropped (lo, hi) VALUES (?, ?)", merged)

    def ack(self, upto: int, ranges: Iterable[tuple[int, int]] = ()) -> int:
        """Delete what the collector settled; forget drop ranges it has seen. Returns rows
        deleted.

        Deleted a few hundred rows per transaction (a few dozen during a disk-full episode,
        with a checkpoint after each), so a big ack after an outage needs little log room;
        when one fails, what went before stays deleted and a later ack covers the rest."""
        spans = [(1, upto)] if upto >= 1 else []
        spans.extend(r for r in ranges if r[0] <= r[1])
        if not spans:
            return 0
        deleted = 0
        for lo, hi in merge_ranges(spans):
            while True:
                chunk = 32 if self.full else 512
                found = self._db.execute(
                    "SELECT seq, size FROM outbox WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                    (lo, hi, chunk),
                ).fetchall()
                if not found:
                    break
                with self._tx():
                    self._db.execute(
                        "DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (found[0][0], found[-1][0])
                    )
                self._rows -= len(found)
                self._bytes -= sum(int(size) for _, size in found)
                deleted += len(found)
                if self.full:
                    self._checkpoint()
                if len(found) < chunk:
                    break
                lo = int(found[-1][0]) + 1
        if upto >= 1:
            with self._tx():
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
        return OutboxStats(
            self._rows,
            self._bytes,
            self._dropped_total,
            self._dropped_events_total,
            self.full,
            self._full_episodes,
        )

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
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # A failed COMMIT (a full disk) may or may not have rolled back by itself.
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.debug("rollback failed: %s", exc)
