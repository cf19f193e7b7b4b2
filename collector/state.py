"""Fleet state: hosts, their presence, latest samples and seq bookkeeping, as pure data.

Every update takes ``now`` (seconds) as an argument; nothing here reads a clock, opens a socket
or logs. The ingest layer holds the lock and calls in; the exporter reads a snapshot.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import NamedTuple

import msgspec

from collector.events import OVERFLOW_KIND, EventLog, HostEvent
from collector.inventory import Inventory, Site
from collector.outages import KINDS as OUTAGE_KINDS
from collector.outages import Outage, from_event
from collector.seqtrack import SeqTrack
from outpost import wire

__all__ = [
    "DEVICE_UP",
    "MIN_STALE_SECONDS",
    "OUTAGE_KINDS",
    "Applied",
    "FleetState",
    "HostState",
    "HostView",
    "SiteOutages",
]

MIN_STALE_SECONDS = 5.0
# Clock skew is shown only for hosts whose newest batch came this recently (a batch from the
# backlog says nothing about the clock now).
SKEW_FRESH_SECONDS = 300.0
DEVICE_UP = wire.DEVICE_UP
# Distinct (kind, severity) counters one host may have; more are counted under "other".
MAX_EVENT_COUNTERS_PER_HOST = 64


class HostState(msgspec.Struct):
    site: str
    host: str
    agent_id: str = ""
    boot_id: str = ""
    status: str = ""  # "online" | "offline" | "" (never said)
    reason: str = ""
    status_at: float = 0.0
    last_seen: float = 0.0
    batch_ts: int = 0
    # The seq of the batch the samples came from: the newest batch is the highest seq of the
    # same agent, never the latest ts (an agent's clock may be hours off and then corrected).
    batch_seq: int = 0
    clock_skew: float = 0.0  # received minus collected, for the newest batch, seconds
    interval: float = 0.0
    samples: list[wire.Sample] = msgspec.field(default_factory=list)
    events: Counter[tuple[str, str]] = msgspec.field(default_factory=Counter)
    proxy: str = ""  # for a device polled by an agent: that agent's host
    device_up: bool = False


class HostView(NamedTuple):
    """What the exporter and the API show for one host at one moment."""

    site: str
    host: str
    state: str  # online | lost | shutdown | stale | unreachable | never_reported
    up: bool
    expected: bool
    host_state: HostState | None
    track: SeqTrack | None


class Applied(NamedTuple):
    new: bool
    dropped: int = 0
    lost: int = 0
    outages: tuple[Outage, ...] = ()
    events: tuple[HostEvent, ...] = ()


class SiteOutages(msgspec.Struct):
    """Outages per kind for one site: how many and how long, since the collector started."""

    count: Counter[str] = msgspec.field(default_factory=Counter)
    seconds: dict[str, float] = msgspec.field(default_factory=dict)


class FleetState:
    def __init__(
        self, stale_after: float, inventory: Inventory | None = None, keep_events: int = 200
    ) -> None:
        self.stale_after = stale_after
        self.inventory = inventory or Inventory()
        self.expected = self.inventory.expected_hosts()
        self.hosts: dict[tuple[str, str], HostState] = {}
        self.tracks: dict[str, SeqTrack] = {}
        self.lost_total = 0
        self.dropped_total = 0
        self.outages: dict[str, SiteOutages] = {}
        self.recent_outages: deque[Outage] = deque(maxlen=1000)
        self.event_log = EventLog(keep_events)
        # Event counters stored by an earlier run, handed to each host when it reports again.
        self.stored_counts: dict[tuple[str, str], Counter[tuple[str, str]]] = {}

    def sites(self) -> list[Site]:
        return list(self.inventory.sites)

    def _host(self, site: str, host: str) -> HostState:
        key = (site, host)
        state = self.hosts.get(key)
        if state is None:
            state = self.hosts[key] = HostState(site, host)
            state.events.update(self.stored_counts.pop(key, {}))
        return state

    def restore_event_counts(self, counts: list[tuple[str, str, str, str, int]]) -> None:
        for site, host, kind, severity, n in counts:
            self.stored_counts.setdefault((site, host), Counter())[(kind, severity)] = n

    def apply_status(self, status: wire.Status, site: str, host: str, now: float) -> None:
        state = self._host(site, host)
        state.status = status.status
        state.reason = status.reason if status.status == "offline" else ""
        state.status_at = now
        if status.agent_id:
            state.agent_id = status.agent_id
        if status.boot_id:
            state.boot_id = status.boot_id
        if status.status == "online":
            state.last_seen = max(state.last_seen, now)

    def track_for(self, agent_id: str, seq: int, outbox_low: int) -> SeqTrack:
        track = self.tracks.get(agent_id)
        if track is None:
            track = self.tracks[agent_id] = SeqTrack.first_seen(seq, outbox_low)
        return track

    def apply_batch(self, batch: wire.Batch, now: float) -> Applied:
        """Dedupe by (agent_id, seq), settle drops and losses, keep the newest samples."""
        track = self.track_for(batch.agent_id, batch.seq, batch.outbox_low)
        if not track.offer(batch.seq):
            return Applied(False)
        dropped, lost = track.settle(batch.outbox_low or batch.seq, batch.dropped)
        self.dropped_total += dropped
        self.lost_total += lost
        state = self._host(batch.site, batch.device or batch.host)
        state.last_seen = max(state.last_seen, now)
        newest = bool(batch.samples) and (
            batch.agent_id != state.agent_id or batch.seq > state.batch_seq
        )
        if batch.device:
            state.proxy = batch.host
            if newest:
                state.device_up = any(s.name == DEVICE_UP and s.value == 1.0 for s in batch.samples)
        if batch.agent_id != state.agent_id:
            state.agent_id = batch.agent_id
        if batch.boot_id:
            state.boot_id = batch.boot_id
        if batch.interval:
            state.interval = batch.interval
        if newest:
            state.batch_seq = batch.seq
            state.batch_ts = batch.ts
            state.clock_skew = now - batch.ts / 1000
            state.samples = batch.samples
        outages = []
        received = []
        for event in batch.events:
            self.count_event(state, event.kind, event.severity)
            host_event = HostEvent(
                id=self.event_log.next_id(),
                site=batch.site,
                host=state.host,
                kind=event.kind,
                severity=event.severity,
                ts=event.ts or batch.ts,
                received=now,
                agent_id=batch.agent_id,
                seq=batch.seq,
                message=event.message,
                attrs=event.attrs,
            )
            self.event_log.add(host_event)
            received.append(host_event)
            if event.kind == "outage":
                outage = from_event(batch.site, batch.device or batch.host, event)
                per_site = self.outages.setdefault(batch.site, SiteOutages())
                per_site.count[outage.kind] += 1
                per_site.seconds[outage.kind] = (
                    per_site.seconds.get(outage.kind, 0.0) + outage.duration
                )
                self.recent_outages.append(outage)
                outages.append(outage)
        return Applied(True, dropped, lost, tuple(outages), tuple(received))

    @staticmethod
    def count_event(state: HostState, kind: str, severity: str, n: int = 1) -> None:
        key = (kind, severity)
        if key not in state.events and len(state.events) >= MAX_EVENT_COUNTERS_PER_HOST:
            key = (OVERFLOW_KIND, severity)
        state.events[key] += n

    def settle_rejected(self, agent_id: str, seq: int) -> bool:
        """Mark a seq whose message was refused as settled, so the agent stops resending it."""
        return self.track_for(agent_id, seq, seq).offer(seq)

    # --- views ------------------------------------------------------------------------------

    def stale_limit(self, state: HostState) -> float:
        return max(self.stale_after, 3 * state.interval, MIN_STALE_SECONDS)

    def view(self, state: HostState | None, site: str, host: str, now: float) -> HostView:
        expected = (site, host) in self.expected
        if state is None:
            return HostView(site, host, "never_reported", False, expected, None, None)
        # A device shares its proxy agent's seq bookkeeping; that is shown on the agent.
        track = None if state.proxy else self.tracks.get(state.agent_id)
        if state.status == "offline":
            name = "shutdown" if state.reason == "shutdown" else "lost"
        elif now - state.last_seen > self.stale_limit(state):
            name = "stale"
        elif state.proxy and not state.device_up:
            name = "unreachable"
        else:
            name = "online"
        return HostView(site, host, name, name == "online", expected, state, track)

    def views(self, now: float) -> list[HostView]:
        out = [self.view(st, site, host, now) for (site, host), st in self.hosts.items()]
        for site, host in sorted(self.expected - self.hosts.keys()):
            out.append(self.view(None, site, host, now))
        return out
