"""Ingest: one MQTT message in, validated and applied to fleet state, counted.

No paho and no sockets here: collector/mqtt.py hands over (topic, payload) and publishes the
acks this module asks for. A bad message is counted by reason and logged at most once per
sender per minute; it never raises. When a refused message still names its agent and seq
(and matches its topic), that seq is settled anyway, so the agent stops resending it.

Each sender (the site and host of the topic) has a token bucket for its metrics and events
messages, checked before anything is decoded: a message past it is counted as
``rate_limited`` and neither applied nor settled, so a well-behaved agent sends it again
later and nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import msgspec

from collector.events import HostEvent
from collector.outages import Outage
from collector.remote_write import LateSampleForwarder
from collector.state import MAX_AGENTS_PER_SENDER, FleetState, TrackKey, batch_key
from outpost import wire

__all__ = ["ALL_RESULTS", "RATE_LIMITED", "RESULTS", "Ingest", "Pending", "SenderBuckets"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

RESULTS = ("accepted", "duplicate", "invalid")
RATE_LIMITED = "rate_limited"
ALL_RESULTS = (*RESULTS, RATE_LIMITED)
_LOG_EVERY = 60.0
_MAX_LOG_SENDERS = 10_000
# Senders with a token bucket (and with a rate-limited counter of their own); past it the
# least recently seen is forgotten (it gets a full bucket if it comes back).
MAX_SENDERS = 10_000
# Refusals that must not settle the seq they name.
_UNSETTLED = frozenset({"oversized", "seq_jump"})
# Agent topics parsed and remembered (a fleet has three per host); past it the memo starts
# again. Only topics that parse are kept: they are short (two slugs), so the memo stays small
# whatever a client publishes on.
MAX_TOPICS = 32_768


class SenderBuckets:
    """Token buckets per sender, bounded in number. Time is passed in (seconds); a clock
    that steps back refills nothing."""

    def __init__(self, max_senders: int = MAX_SENDERS) -> None:
        self.max_senders = max_senders
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # sender -> [tokens, at]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, sender: str, now: float, rate: float, burst: int) -> bool:
        """Take one token for ``sender``; False when its bucket is empty. ``rate`` 0: no
        limit."""
        if rate <= 0:
            return True
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= self.max_senders:
                self._buckets.popitem(last=False)
            bucket = self._buckets[sender] = [float(burst), now]
        else:
            self._buckets.move_to_end(sender)
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(float(burst), bucket[0] + elapsed * rate)  # the burst may be lower
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True


class _Envelope(msgspec.Struct):
    """Enough of a batch to settle its seq when the rest of it is refused."""

    site: str
    host: str
    agent_id: str
    seq: int


_envelope_decoder = msgspec.json.Decoder(_Envelope)

AckOwed = tuple[str, str, wire.Ack, bytes]


class Pending(NamedTuple):
    """What must be stored, in one transaction, before the acks are published: the seq
    tracks (inside each ack entry), the new events and the event counters that changed."""

    acks: list[AckOwed]
    events: list[HostEvent]
    counts: list[tuple[str, str, str, str, int]]  # site, host, kind, severity, count


class Ingest:
    def __init__(self, state: FleetState, limits: wire.Limits, prefix: str = "outpost") -> None:
        self.state = state
        self.limits = limits
        self.prefix = prefix
        self.lock = threading.Lock()
        self.messages: Counter[str] = Counter({r: 0 for r in RESULTS})
        self.invalid: Counter[str] = Counter()
        self.buckets = SenderBuckets()
        # Rate-limited messages per sender (site, host), for at most MAX_SENDERS senders; all
        # of them are in messages["rate_limited"].
        self.rate_limited: Counter[tuple[str, str]] = Counter()
        self._dirty: dict[TrackKey, None] = {}  # the tracks owed an ack, in order
        self._logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        # Called (under the lock, on the MQTT thread) with each classified outage: the
        # hand-off to alerting. A listener must be quick and must not raise.
        self.outage_listeners: list[Callable[[Outage], None]] = []
        # Called the same way with every event of a newly applied batch (never a duplicate):
        # the stream the alert engine reads.
        self.event_listeners: list[Callable[[HostEvent], None]] = []
        # Told (site, host) after a host's status message is applied (a Last Will among them).
        self.status_listeners: list[Callable[[tuple[str, str]], None]] = []
        self.listener_failures = 0
        # Late batches' samples go here (with their own timestamps) when remote write is on.
        self.late_forwarder: LateSampleForwarder | None = None
        self._new_events: list[HostEvent] = []
        self._counts_dirty: set[tuple[str, str]] = set()
        # agent topic -> its parts and sender ("site/host")
        self._topics: dict[str, tuple[wire.TopicParts, str]] = {}

    def _parse_topic(self, topic: str) -> tuple[wire.TopicParts, str] | None:
        """``wire.parse_topic`` with the sender name, remembered per agent topic."""
        found = self._topics.get(topic)
        if found is not None:
            return found
        parts = wire.parse_topic(self.prefix, topic)
        if parts is None:
            return None
        if len(self._topics) >= MAX_TOPICS:
            self._topics.clear()
        found = self._topics[topic] = (parts, f"{parts.site}/{parts.host}")
        return found

    def handle(self, topic: str, payload: bytes, now: float) -> str:
        """Apply one message; returns ``accepted``, ``duplicate``, ``invalid`` or
        ``rate_limited``."""
        with self.lock:
            try:
                return self._handle(topic, payload, now)
            except wire.DecodeFailure as exc:
                self._refuse(topic, payload, exc, now)
                return "invalid"
            except Exception as exc:  # never let one message take the collector down
                self._refuse(topic, payload, wire.DecodeFailure("internal", repr(exc)), now)
                log.debug("internal error on %s", topic[:200], exc_info=True)
                return "invalid"

    def _handle(self, topic: str, payload: bytes, now: float) -> str:
        parsed = self._parse_topic(topic)
        if parsed is None or parsed[0].kind == wire.ACK:
            raise wire.DecodeFailure("topic", "not an agent topic of this protocol")
        parts, sender = parsed
        if parts.kind == wire.STATUS:
            if not payload:  # a retained status being cleared
                return self._count("accepted")
            status = wire.decode_status(payload, parts, self.limits)
            self.state.apply_status(status, parts.site, parts.host, now)
            self._tell(self.status_listeners, (parts.site, parts.host))
            return self._count("accepted")
        limits = self.limits
        if not self.buckets.take(sender, now, limits.sender_rate_per_second, limits.sender_burst):
            return self._limit(parts, sender, now)
        batch = wire.decode_batch(payload, parts, limits)
        if (parts.kind == wire.METRICS and batch.events) or (
            parts.kind == wire.EVENTS and batch.samples
        ):
            raise wire.DecodeFailure("schema", f"{parts.kind} message carries the other kind")
        if not self.state.admits_agent(parts.site, parts.host, batch.agent_id):
            raise wire.DecodeFailure(
                "limits", f"more than {MAX_AGENTS_PER_SENDER} new agent ids on this topic"
            )
        jump = self.state.seq_jump(batch, now, limits.max_seq_jump)
        if jump:
            raise wire.DecodeFailure("seq_jump", jump)
        applied = self.state.apply_batch(batch, now, limits)
        self._dirty[batch_key(batch)] = None
        if self.late_forwarder is not None and applied.new and applied.kept and batch.samples:
            self.late_forwarder.offer(
                batch.site, batch.device or batch.host, batch.ts,
                batch.samples[: limits.max_series_per_host], now, batch.interval,
            )  # fmt: skip
        for outage in applied.outages:
            log.info(
                "%s/%s: %s outage of %.0f s reported", outage.site, outage.host, outage.kind,
                outage.duration,
            )  # fmt: skip
            self._tell(self.outage_listeners, outage)
        if applied.events:
            self._new_events.extend(applied.events)
            self._counts_dirty.add((batch.site, batch.device or batch.host))
            for event in applied.events:
                self._tell(self.event_listeners, event)
        if applied.lost:
            log.warning(
                "%s/%s: %d messages lost (never applied, no longer held by the agent)",
                parts.site,
                parts.host,
                applied.lost,
            )
        return self._count("accepted" if applied.new else "duplicate")

    def _tell(self, listeners: list[Callable[[_T], None]], item: _T) -> None:
        for listener in listeners:
            try:
                listener(item)
            except Exception:
                # A broken listener must not refuse the message: it is already applied.
                self.listener_failures += 1
                log.exception("a listener failed on %r", item)

    def _count(self, result: str) -> str:
        self.messages[result] += 1
        return result

    def _limit(self, parts: wire.TopicParts, sender: str, now: float) -> str:
        """A message past its sender's rate: counted, not applied and not settled."""
        key = (parts.site, parts.host)
        if key in self.rate_limited or len(self.rate_limited) < MAX_SENDERS:
            self.rate_limited[key] += 1
        more = self._quiet(f"{sender} rate", now)
        if more >= 0:
            log.warning(
                "%s sends more than %g messages a second (burst %d): not applied, to be sent "
                "again%s",
                sender,
                self.limits.sender_rate_per_second,
                self.limits.sender_burst,
                f" ({more} more since the last report)" if more else "",
            )
        return self._count(RATE_LIMITED)

    def _quiet(self, key: str, now: float) -> int:
        """-1 when ``key`` was logged within the last minute (and count it as suppressed),
        else how many were suppressed since it was last logged."""
        last = self._logged.get(key)
        if last is not None and now - last < _LOG_EVERY:
            self._suppressed[key] += 1
            return -1
        if len(self._logged) >= _MAX_LOG_SENDERS:
            self._logged.clear()
            self._suppressed.clear()
        self._logged[key] = now
        return self._suppressed.pop(key, 0)

    def _refuse(self, topic: str, payload: bytes, exc: wire.DecodeFailure, now: float) -> None:
        self.messages["invalid"] += 1
        self.invalid[exc.reason] += 1
        parsed = self._parse_topic(topic)
        parts, sender = parsed if parsed else (None, "(other topics)")
        if parts and parts.kind in (wire.METRICS, wire.EVENTS) and exc.reason not in _UNSETTLED:
            self._settle_refused(parts, payload, now)
        more = self._quiet(sender, now)
        if more < 0:
            return
        log.warning(
            "refused a message from %s on %r: %s%s",
            sender,
            topic[:200],
            exc.detail[:300],
            f" ({more} more refused since the last report)" if more else "",
        )

    def _settle_refused(self, parts: wire.TopicParts, payload: bytes, now: float) -> None:
        try:
            env = _envelope_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return
        if (env.site, env.host) != (parts.site, parts.host) or not 1 <= env.seq <= wire.MAX_SEQ:
            return
        if not env.agent_id or len(env.agent_id) > 64:
            return
        if not self.state.admits_agent(parts.site, parts.host, env.agent_id):
            return
        key = (parts.site, parts.host, env.agent_id)
        ceiling = self.state.seq_ceiling(key, now, self.limits.max_seq_jump)
        if ceiling is not None and env.seq > ceiling:
            return  # settling it would claim seqs the agent has not made yet
        self.state.settle_rejected(key, env.seq)
        self._dirty[key] = None

    def owe_ack(self, agent_id: str, site: str, host: str) -> None:
        """An ack that could not be published: send it with the next flush."""
        with self.lock:
            self._dirty[(site, host, agent_id)] = None

    def take_acks(self) -> list[AckOwed]:
        """The acks owed since the last call (see ``take_pending``; events are discarded)."""
        return self.take_pending().acks

    def take_pending(self) -> Pending:
        """Everything owed since the last call, taken together under the lock: the acks (one
        per agent that sent anything, each with its encoded seq track), the new events and
        the changed event counters. Store all of it before publishing the acks: then an ack
        never covers an event a restarted collector would not have."""
        with self.lock:
            events, self._new_events = self._new_events, []
            counts: list[tuple[str, str, str, str, int]] = []
            for site, host in self._counts_dirty:
                hs = self.state.hosts.get((site, host))
                if hs is not None:
                    counts.extend((site, host, k, sev, n) for (k, sev), n in hs.events.items())
            self._counts_dirty = set()
            return Pending(self._take_acks(), events, counts)

    def give_back(self, pending: Pending) -> None:
        """Pending work that could not be stored: take it again with the next call."""
        with self.lock:
            self._new_events[:0] = pending.events
            self._counts_dirty.update((site, host) for site, host, *_ in pending.counts)
            for site, host, ack, _data in pending.acks:
                self._dirty[(site, host, ack.agent_id)] = None

    def _take_acks(self) -> list[AckOwed]:
        dirty, self._dirty = self._dirty, {}
        out = []
        for key in dirty:
            site, host, agent_id = key
            track = self.state.tracks.get(key)
            if track is None:
                continue
            out.append(
                (
                    site,
                    host,
                    wire.Ack(
                        v=wire.SCHEMA_VERSION,
                        agent_id=agent_id,
                        upto=track.upto,
                        ranges=list(track.above[: self.limits.max_ranges]),
                    ),
                    msgspec.json.encode(track),
                )
            )
        return out
