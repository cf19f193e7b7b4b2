"""Events the fleet reported: the recent ones per host, for the API and for alerting.

Pure data, like fleet state: ``EventLog.add`` is called by the state update (under the ingest
lock) for every event of a newly applied batch, so a duplicate batch never adds an event twice.
Each event gets a collector-wide ``id`` that only grows, which is also its key in the store.
``query`` answers ``GET /api/v1/events``.

The category of a kind (``security`` or ``operational``) decides whether it is counted in
``outpost_security_events_total``; a kind this catalogue does not know is a security event,
so an agent's new kinds are counted rather than hidden. docs/events.md lists every kind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import msgspec

__all__ = [
    "OPERATIONAL_KINDS",
    "OVERFLOW_KIND",
    "EventLog",
    "HostEvent",
    "is_security",
]

# Kinds about the monitoring itself or the health of gear, not about intrusions.
OPERATIONAL_KINDS = frozenset({"outage", "device_rebooted", "log_gap"})

# When one host sends more distinct kinds than a host may have counters for, the rest are
# counted under this kind (and the event itself is still kept and passed on).
OVERFLOW_KIND = "other"


def is_security(kind: str) -> bool:
    return kind not in OPERATIONAL_KINDS


class HostEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event as the collector keeps it: the agent's event plus where and when it came."""

    id: int
    site: str
    host: str
    kind: str
    severity: str
    ts: int  # the agent's time of the event, ms
    received: float  # the collector's time, s
    agent_id: str
    seq: int
    message: str = ""
    attrs: dict[str, str] = {}

    @property
    def category(self) -> str:
        return "security" if is_security(self.kind) else "operational"


class EventLog:
    """The last ``keep_per_host`` events of every host, oldest first within a host."""

    def __init__(self, keep_per_host: int = 200) -> None:
        self.keep_per_host = keep_per_host
        self.last_id = 0
        self._hosts: dict[tuple[str, str], deque[HostEvent]] = {}

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def add(self, event: HostEvent) -> None:
        key = (event.site, event.host)
        ring = self._hosts.get(key)
        if ring is None:
            ring = self._hosts[key] = deque(maxlen=self.keep_per_host)
        ring.append(event)
        self.last_id = max(self.last_id, event.id)

    def load(self, events: Iterable[HostEvent]) -> None:
        """Put back stored events (in id order)."""
        for event in sorted(events, key=lambda e: e.id):
            self.add(event)

    def __iter__(self) -> Iterator[HostEvent]:
        for ring in self._hosts.values():
            yield from ring

    def __len__(self) -> int:
        return sum(len(ring) for ring in self._hosts.values())

    def query(
        self,
        *,
        site: str | None = None,
        host: str | None = None,
        kind: str | None = None,
        severity: str | None = None,
        since_ms: int | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[HostEvent]:
        """Matching events, newest first (by the agent's time, then by arrival)."""
        if host is not None and site is not None:
            rings = [self._hosts.get((site, host), deque())]
        else:
            rings = [
                ring
                for (s, h), ring in self._hosts.items()
                if (site is None or s == site) and (host is None or h == host)
            ]
        found = [
            e
            for ring in rings
            for e in ring
            if (kind is None or e.kind == kind)
            and (severity is None or e.severity == severity)
            and (since_ms is None or e.ts >= since_ms)
            and (after_id is None or e.id > after_id)
        ]
        found.sort(key=lambda e: (e.ts, e.id), reverse=True)
        return found[: max(0, limit)]
