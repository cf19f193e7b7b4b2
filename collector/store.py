"""The collector's durable state: seq bookkeeping per agent, in SQLite.

A seq track is written before the ack that reflects it is published, so an ack never claims
more than a restarted collector remembers: after a crash the agent resends, and the
collector applies or drops as duplicate exactly what it had not settled.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from collector.seqtrack import SeqTrack

__all__ = ["Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    agent_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    host TEXT NOT NULL,
    data BLOB NOT NULL
);
"""


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._decoder = msgspec.json.Decoder(SeqTrack)

    def load_tracks(self) -> dict[str, tuple[str, str, SeqTrack]]:
        out = {}
        for agent_id, site, host, data in self._db.execute(
            "SELECT agent_id, site, host, data FROM tracks"
        ):
            out[str(agent_id)] = (str(site), str(host), self._decoder.decode(data))
        return out

    def save_tracks(self, rows: list[tuple[str, str, str, bytes]]) -> None:
        """(agent_id, site, host, encoded track) rows, in one transaction."""
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO tracks (agent_id, site, host, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (agent_id) DO UPDATE SET site = excluded.site, "
                "host = excluded.host, data = excluded.data",
                rows,
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
