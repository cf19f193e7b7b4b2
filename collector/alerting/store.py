"""Alert state on disk (SQLite, ``alerts.sqlite`` in the collector's state directory).

Alerts, silences, the rules' trend history and the delivery queue are written in one
transaction after each evaluation, before anything is sent: a restarted collector knows what
was firing, who was told and what is still to be delivered, so it pages nobody twice and
forgets nobody. A delivery row is marked sent only after its notifier succeeded; one that
was in flight when the collector died is sent again (at least once, never lost).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from collector.alerting.engine import Silence
from collector.alerting.model import Alert, Notification

__all__ = ["AlertStore", "Delivery"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notifier TEXT NOT NULL,
    data BLOB NOT NULL,
    created REAL NOT NULL,
    next_try REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_try);
"""


class Delivery(NamedTuple):
    id: int
    notification: Notification
    created: float
    attempts: int


class AlertStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._alert = msgspec.json.Decoder(Alert)
        self._silence = msgspec.json.Decoder(Silence)
        self._note = msgspec.json.Decoder(Notification)

    # --- loading ----------------------------------------------------------------------------

    def load_alerts(self) -> list[Alert]:
        return [self._alert.decode(d) for (d,) in self._db.execute("SELECT data FROM alerts")]

    def load_silences(self) -> list[Silence]:
        return [self._silence.decode(d) for (d,) in self._db.execute("SELECT data FROM silences")]

    def load_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            return None

    # --- saving -----------------------------------------------------------------------------

    def save(
        self,
        alerts: list[Alert],
        silences: list[Silence],
        notifications: list[Notification],
        now: float,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """The whole alert state and the new deliveries, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM alerts")
            self._db.executemany(
                "INSERT INTO alerts (key, data) VALUES (?, ?)",
                [(a.key, msgspec.json.encode(a)) for a in alerts],
            )
            self._db.execute("DELETE FROM silences")
            self._db.executemany(
                "INSERT INTO silences (id, data) VALUES (?, ?)",
                [(s.id, msgspec.json.encode(s)) for s in silences],
            )
            self._db.executemany(
                "INSERT INTO deliveries (notifier, data, created, next_try) VALUES (?, ?, ?, ?)",
                [(n.notifier, msgspec.json.encode(n), now, now) for n in notifications],
            )
            for key, value in (meta or {}).items():
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (key, json.dumps(value, separators=(",", ":"))),
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- the delivery queue -----------------------------------------------------------------

    def due(self, now: float, limit: int = 100) -> list[Delivery]:
        rows = self._db.execute(
            "SELECT id, data, created, attempts FROM deliveries "
            "WHERE status = 'pending' AND next_try <= ? ORDER BY id LIMIT ?",
            (now, limit),
        ).fetchall()
        out = []
        for id_, data, created, attempts in rows:
            try:
                note = self._note.decode(data)
            except msgspec.DecodeError:
                self.finish(int(id_), "failed", "unreadable row")
                continue
            out.append(Delivery(int(id_), note, float(created), int(attempts)))
        return out

    def finish(self, delivery_id: int, status: str, error: str = "") -> None:
        self._db.execute(
            "UPDATE deliveries SET status = ?, last_error = ?, attempts = attempts + 1 "
            "WHERE id = ?",
            (status, error[:500], delivery_id),
        )

    def retry(self, delivery_id: int, next_try: float, error: str) -> None:
        self._db.execute(
            "UPDATE deliveries SET next_try = ?, last_error = ?, attempts = attempts + 1 "
            "WHERE id = ?",
            (next_try, error[:500], delivery_id),
        )

    def pending_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
        return int(row.fetchone()[0])

    def prune(self, before: float) -> None:
        """Forget finished deliveries created before ``before``."""
        self._db.execute(
            "DELETE FROM deliveries WHERE status != 'pending' AND created < ?", (before,)
        )

    def recent_deliveries(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, notifier, created, attempts, status, last_error, data FROM deliveries "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        out = []
        for id_, notifier, created, attempts, status, error, data in rows:
            note = self._note.decode(data)
            out.append(
                {
                    "id": id_,
                    "notifier": notifier,
                    "to": note.to,
                    "route": note.route,
                    "level": note.level,
                    "status": note.status,
                    "alerts": [a.key for a in note.alerts],
                    "created": created,
                    "attempts": attempts,
                    "delivery": status,
                    "last_error": error,
                }
            )
        return out

    def close(self) -> None:
        self._db.close()
