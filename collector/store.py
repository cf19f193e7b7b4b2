"""The collector's durable state: seq bookkeeping per agent, recent events and event counters,
in SQLite.

A seq track is written before the ack that reflects it is published, and in the same
transaction as the events and counters of the batches it covers, so an ack never claims more
than a restarted collector remembers: after a crash the agent resends, and the collector
applies or drops as duplicate exactly what it had not settled. No event is stored twice or
lost, and the counters go on from where they were.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from collector.events import HostEvent
from collector.seqtrack import SeqTrack
from collector.state import TrackKey

__all__ = ["Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    site TEXT NOT NULL,
    host TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (site, host, agent_id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    host TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_host ON events (site, host, id);
CREATE TABLE IF NOT EXISTS event_counts (
    site TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (site, host, kind, severity)
);
"""

Count = tuple[str, str, str, str, int]


class Store:
    def __init__(self, path: Path, keep_events_per_host: int = 200) -> None:
        self.keep_events_per_host = keep_events_per_host
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.executescript(_SCHEMA)
        self._decoder = msgspec.json.Decoder(SeqTrack)
        self._event_decoder = msgspec.json.Decoder(HostEvent)

    def _migrate(self) -> None:
        """Tracks were keyed by agent_id alone before they were bound to their topic's site
        and host: move them to the new key, in one transaction."""
        cols = self._db.execute("PRAGMA table_info(tracks)").fetchall()
        if not any(name == "agent_id" and pk == 1 for _cid, name, _t, _nn, _d, pk in cols):
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("ALTER TABLE tracks RENAME TO tracks_by_agent")
            self._db.execute(_SCHEMA.split(";", 1)[0])
            self._db.execute(
                "INSERT INTO tracks (site, host, agent_id, data) "
                "SELECT site, host, agent_id, data FROM tracks_by_agent"
            )
            self._db.execute("DROP TABLE tracks_by_agent")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def load_tracks(self) -> dict[TrackKey, SeqTrack]:
        """The stored seq tracks by (site, host, agent_id)."""
        out = {}
        for site, host, agent_id, data in self._db.execute(
            "SELECT site, host, agent_id, data FROM tracks"
        ):
            out[(str(site), str(host), str(agent_id))] = self._decoder.decode(data)
        return out

    def load_events(self) -> list[HostEvent]:
        """The stored events, at most ``keep_events_per_host`` per host, in id order."""
        out = []
        for (data,) in self._db.execute(
            "SELECT data FROM (SELECT data, id, ROW_NUMBER() OVER "
            "(PARTITION BY site, host ORDER BY id DESC) AS n FROM events) "
            "WHERE n <= ? ORDER BY id",
            (self.keep_events_per_host,),
        ):
            out.append(self._event_decoder.decode(data))
        return out

    def load_event_counts(self) -> list[Count]:
        return [
            (str(site), str(host), str(kind), str(sev), int(n))
            for site, host, kind, sev, n in self._db.execute(
                "SELECT site, host, kind, severity, count FROM event_counts"
            )
        ]

    def save_tracks(self, rows: list[tuple[str, str, str, bytes]]) -> None:
        self.save(rows, [], [])

    def save(
        self,
        tracks: list[tuple[str, str, str, bytes]],
        events: list[HostEvent],
        counts: list[Count],
    ) -> None:
        """(agent_id, site, host, encoded track) rows, new events and event counters (their
        current values), in one transaction. Older events beyond the per-host limit go."""
        if not (tracks or events or counts):
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO tracks (agent_id, site, host, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site, host, agent_id) DO UPDATE SET data = excluded.data",
                tracks,
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO events (id, site, host, data) VALUES (?, ?, ?, ?)",
                [(e.id, e.site, e.host, msgspec.json.encode(e)) for e in events],
            )
            self._db.executemany(
                "INSERT INTO event_counts (site, host, kind, severity, count) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (site, host, kind, severity) "
                "DO UPDATE SET count = excluded.count",
                counts,
            )
            for site, host in {(e.site, e.host) for e in events}:
                self._db.execute(
                    "DELETE FROM events WHERE site = ? AND host = ? AND id <= "
                    "(SELECT id FROM events WHERE site = ? AND host = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (site, host, site, host, self.keep_events_per_host),
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
