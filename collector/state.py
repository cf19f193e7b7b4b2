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
    "MAX_AGENTS_PER_SENDER",
    "MIN_STALE_SECONDS",
    "OUTAGE_KINDS",
    "REFUSED_REASONS",
    "Applied",
    "FleetState",
    "HostState",
    "HostView",
    "SiteOutages",
    "TrackKey",
    "batch_key",
]

MIN_STALE_SECONDS = 5.0
DEFAULT_LIMITS = wire.Limits()
# Clock skew is shown only for hosts whose newest batch came this recently (a batch from the
# backlog says nothing about the clock now).
SKEW_FRESH_SECONDS = 300.0
DEVICE_UP = wire.DEVICE_UP
# Distinct (kind, severity) counters one host may have; more are counted under "other".
MAX_EVENT_COUNTERS_PER_HOST = 64
# Why samples of an applied batch were not kept (outpost_host_samples_refused_total).
REFUSED_REASONS = ("device_limit", "device_conflict", "series_limit", "negative_counter")
# Chunks of one cycle carry consecutive seqs; out of order they may arrive a few apart.
CYCLE_SEQ_SPAN = 64
# New agent ids one sender (topic site/host) may bring while the collector runs: each is a
# seq track kept in memory and on disk. A host gets a new id only when reinstalled.
MAX_AGENTS_PER_SENDER = 16
# How fast an agent's seq may grow while the collector does not hear from it: more than
# ten times an agent polling 256 devices every 15 s (see seq_ceiling).
SEQ_JUMP_PER_SECOND = 200


TrackKey = tuple[str, str, str]  # the topic's site and host, and the agent_id


def batch_key(batch: wire.Batch) -> TrackKey:
    """Whose seqs ``batch`` carries: its agent on its topic (a device's batches travel on the
    polling agent's topic and seqs)."""
    return (batch.site, batch.host, batch.agent_id)


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
    # The lowest seq merged into the samples: a cycle too big for one message comes as
    # chunks with consecutive seqs and the same ts, and the samples are their union.
    cycle_low: int = 0
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
    kept: bool = True  # False: the batch's samples and events were refused (a device past a cap)


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
        # Seq tracks by (site, host, agent_id): the seqs an agent_id claims belong to the topic
        # they came on, so a client that may publish on one host's topic cannot settle (and so
        # silence) the seqs of an agent on another.
        self.tracks: dict[TrackKey, SeqTrack] = {}
        self.lost_total = 0
        self.dropped_total = 0
        self.outages: dict[str, SiteOutages] = {}
        self.recent_outages: deque[Outage] = deque(maxlen=1000)
        self.event_log = EventLog(keep_events)
        # Event counters stored by an earlier run, handed to each host when it reports again.
        self.stored_counts: dict[tuple[str, str], Counter[tuple[str, str]]] = {}
        # Samples of applied batches that were not kept, by (site, host, reason).
        self.refused: Counter[tuple[str, str, str]] = Counter()
        # The devices each agent (by its topic's site and host) reports for.
        self.devices: dict[tuple[str, str], set[str]] = {}
        # When a batch of each agent was last applied (see seq_ceiling).
        self.heard: dict[TrackKey, float] = {}
        # The agent ids each sender brought that had no track yet (see admits_agent).
        self.new_agents: dict[tuple[str, str], set[str]] = {}

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

    def track_for(self, key: TrackKey, seq: int, outbox_low: int) -> SeqTrack:
        track = self.tracks.get(key)
        if track is None:
            track = self.tracks[key] = SeqTrack.first_seen(seq, outbox_low)
        return track

    def track(self, agent_id: str) -> SeqTrack:
        """The track of ``agent_id`` on whichever topic it reports (KeyError when it has none
        or several)."""
        found = [t for (_s, _h, aid), t in self.tracks.items() if aid == agent_id]
        if len(found) != 1:
            raise KeyError(agent_id)
        return found[0]

    def admits_agent(self, site: str, host: str, agent_id: str) -> bool:
        """False when ``agent_id`` has no track yet and the sender ``site/host`` already
        brought MAX_AGENTS_PER_SENDER new ones: a flood of made-up ids would make a seq track
        each, without end."""
        if (site, host, agent_id) in self.tracks:
            return True
        brought = self.new_agents.setdefault((site, host), set())
        if agent_id not in brought and len(brought) >= MAX_AGENTS_PER_SENDER:
            return False
        brought.add(agent_id)
        return True

    def seq_ceiling(self, key: TrackKey, now: float, max_jump: int) -> int | None:
        """The highest seq a new batch of ``agent_id`` may carry (None: an unknown agent).

        ``max_jump`` above the highest seq settled, plus SEQ_JUMP_PER_SECOND for every second
        since a batch of the agent was last applied (or since it was first asked about, for
        a track loaded from disk): an agent that was cut off for weeks comes back late rather
        than never, and a forged seq far ahead of an agent that reports is refused."""
        track = self.tracks.get(key)
        if track is None:
            return None
        since = self.heard.setdefault(key, now)
        return track.highest + max_jump + int(max(0.0, now - since) * SEQ_JUMP_PER_SECOND)

    def seq_jump(self, batch: wire.Batch, now: float, max_jump: int) -> str:
        """Why ``batch`` claims seqs too far above what is settled for its agent ("" when it
        does not): one such batch would count millions lost, or settle seqs still to come so
        that the agent's later batches are dropped as duplicates."""
        ceiling = self.seq_ceiling(batch_key(batch), now, max_jump)
        if ceiling is None:
            ceiling = batch.seq + max_jump  # an unknown agent: only its dropped ranges
        elif batch.seq > ceiling:
            return f"seq {batch.seq} is far above the agent's highest settled (limit {ceiling})"
        for _lo, hi in batch.dropped:
            if hi > ceiling:
                return f"dropped range up to {hi} is far above the agent's seqs (limit {ceiling})"
        return ""

    def apply_batch(
        self, batch: wire.Batch, now: float, limits: wire.Limits = DEFAULT_LIMITS
    ) -> Applied:
        """Dedupe by (agent_id, seq), settle drops and losses, keep the newest samples.

        Samples that are not kept are counted in ``refused``: a device past the agent's
        ``max_devices_per_agent`` (or one that names a host reporting for itself), series past
        ``max_series_per_host``, and counters (``*_total``) below zero. The seq is settled
        all the same."""
        key = batch_key(batch)
        track = self.track_for(key, batch.seq, batch.outbox_low)
        if not track.offer(batch.seq):
            return Applied(False)
        dropped, lost = track.settle(batch.outbox_low or batch.seq, batch.dropped)
        self.dropped_total += dropped
        self.lost_total += lost
        self.heard[key] = now
        if batch.device:
            refusal = self._device_refusal(batch, limits.max_devices_per_agent)
            if refusal:
                n = len(batch.samples) + len(batch.events)
                self.refused[(batch.site, batch.host, refusal)] += n
                return Applied(True, dropped, lost, kept=False)
        state = self._host(batch.site, batch.device or batch.host)
        state.last_seen = max(state.last_seen, now)
        if batch.device:
            state.proxy = batch.host
        elif state.proxy:
            state.proxy = ""  # the host reports for itself now: no agent may poll it as a device
        if batch.samples:
            self._keep_samples(state, batch, now, limits.max_series_per_host)
        if batch.agent_id != state.agent_id:
            state.agent_id = batch.agent_id
        if batch.boot_id:
            state.boot_id = batch.boot_id
        if batch.interval:
            state.interval = batch.interval
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

    def _device_refusal(self, batch: wire.Batch, cap: int) -> str:
        """Why the agent may not report for ``batch.device`` ("" when it may)."""
        if batch.device == batch.host:
            return "device_conflict"
        known = self.hosts.get((batch.site, batch.device))
        if known is not None and not known.proxy:
            return "device_conflict"  # a host that reports for itself
        devices = self.devices.setdefault((batch.site, batch.host), set())
        if batch.device not in devices:
            if len(devices) >= cap:
                return "device_limit"
            devices.add(batch.device)
        return ""

    def _keep_samples(self, state: HostState, batch: wire.Batch, now: float, cap: int) -> None:
        """Make ``batch``'s samples the host's latest, or merge them into the latest when they
        are another chunk of the same cycle; older ones are ignored."""
        samples = batch.samples
        negative = up = False
        for s in samples:  # one pass: this runs for every sample of every batch
            value = s.value
            if value < 0:
                negative = True
            elif value == 1.0 and s.name == DEVICE_UP:
                up = True
        if negative:
            kept = [s for s in samples if s.value >= 0 or not s.name.endswith("_total")]
            if len(kept) < len(samples):
                self.refused[(state.site, state.host, "negative_counter")] += len(samples) - len(
                    kept
                )
                samples = kept
        same_agent = batch.agent_id == state.agent_id
        if same_agent and self._same_cycle(state, batch, samples):
            if batch.seq > state.batch_seq:
                merged = state.samples + samples
                state.batch_seq = batch.seq
                state.clock_skew = now - batch.ts / 1000
            else:
                merged = samples + state.samples
                state.cycle_low = min(state.cycle_low, batch.seq)
            state.device_up = state.device_up or up
        elif not same_agent or batch.seq > state.batch_seq:
            merged = samples
            state.batch_seq = state.cycle_low = batch.seq
            state.batch_ts = batch.ts
            state.clock_skew = now - batch.ts / 1000
            state.device_up = up
        else:
            return  # an older cycle, from the backlog
        if len(merged) > cap:
            self.refused[(state.site, state.host, "series_limit")] += len(merged) - cap
            merged = merged[:cap]
        state.samples = merged  # a new list: a scrape may be reading the old one

    @staticmethod
    def _same_cycle(state: HostState, batch: wire.Batch, samples: list[wire.Sample]) -> bool:
        """True when ``batch`` is another chunk of the cycle the host's samples came from:
        same ts, a seq close to the chunks already merged, and none of the same series (a
        sender whose ts never changes repeats its series in every cycle)."""
        if not state.batch_seq or batch.ts != state.batch_ts or not samples:
            return False
        if not state.cycle_low - CYCLE_SEQ_SPAN <= batch.seq <= state.batch_seq + CYCLE_SEQ_SPAN:
            return False
        first = samples[0]
        return not any(s.name == first.name and s.labels == first.labels for s in state.samples)

    @staticmethod
    def count_event(state: HostState, kind: str, severity: str, n: int = 1) -> None:
        key = (kind, severity)
        if key not in state.events and len(state.events) >= MAX_EVENT_COUNTERS_PER_HOST:
            key = (OVERFLOW_KIND, severity)
        state.events[key] += n

    def settle_rejected(self, key: TrackKey, seq: int) -> bool:
        """Mark a seq whose message was refused as settled, so the agent stops resending it."""
        return self.track_for(key, seq, seq).offer(seq)

    # --- views ------------------------------------------------------------------------------

    def stale_limit(self, state: HostState) -> float:
        return max(self.stale_after, 3 * state.interval, MIN_STALE_SECONDS)

    def view(self, state: HostState | None, site: str, host: str, now: float) -> HostView:
        expected = (site, host) in self.expected
        if state is None:
            return HostView(site, host, "never_reported", False, expected, None, None)
        # A device shares its proxy agent's seq bookkeeping; that is shown on the agent.
        track = None if state.proxy else self.tracks.get((site, host, state.agent_id))
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
