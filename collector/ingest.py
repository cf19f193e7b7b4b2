"""Ingest: one MQTT message in, validated and applied to fleet state, counted.

No paho and no sockets here: collector/mqtt.py hands over (topic, payload) and publishes the
acks this module asks for. A bad message is counted by reason and logged at most once per
sender per minute; it never raises. When a refused message still names its agent and seq
(and matches its topic), that seq is settled anyway, so the agent stops resending it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import msgspec

from collector.events import HostEvent
from collector.outages import Outage
from collector.state import FleetState
from outpost import wire

__all__ = ["RESULTS", "Ingest", "Pending"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

RESULTS = ("accepted", "duplicate", "invalid")
_LOG_EVERY = 60.0
_MAX_LOG_SENDERS = 10_000


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
        self._dirty: dict[str, tuple[str, str]] = {}
        self._logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        # Called (under the lock, on the MQTT thread) with each classified outage: the
        # hand-off to alerting. A listener must be quick and must not raise.
        self.outage_listeners: list[Callable[[Outage], None]] = []
        # Called the same way with every event of a newly applied batch (never a duplicate):
        # the stream the alert engine reads.
        self.event_listeners: list[Callable[[HostEvent], None]] = []
        self.listener_failures = 0
        self._new_events: list[HostEvent] = []
        self._counts_dirty: set[tuple[str, str]] = set()

    def handle(self, topic: str, payload: bytes, now: float) -> str:
        """Apply one message; returns ``accepted``, ``duplicate`` or ``invalid``."""
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
        parts = wire.parse_topic(self.prefix, topic)
        if parts is None or parts.kind == wire.ACK:
            raise wire.DecodeFailure("topic", "not an agent topic of this protocol")
        if parts.kind == wire.STATUS:
            if not payload:  # a retained status being cleared
                return self._count("accepted")
            status = wire.decode_status(payload, parts, self.limits)
            self.state.apply_status(status, parts.site, parts.host, now)
            return self._count("accepted")
        batch = wire.decode_batch(payload, parts, self.limits)
        if (parts.kind == wire.METRICS and batch.events) or (
            parts.kind == wire.EVENTS and batch.samples
        ):
            raise wire.DecodeFailure("schema", f"{parts.kind} message carries the other kind")
        applied = self.state.apply_batch(batch, now)
        self._dirty[batch.agent_id] = (parts.site, parts.host)
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

    def _refuse(self, topic: str, payload: bytes, exc: wire.DecodeFailure, now: float) -> None:
        self.messages["invalid"] += 1
        self.invalid[exc.reason] += 1
        parts = wire.parse_topic(self.prefix, topic)
        sender = f"{parts.site}/{parts.host}" if parts else "(other topics)"
        if parts and parts.kind in (wire.METRICS, wire.EVENTS) and exc.reason != "oversized":
            self._settle_refused(parts, payload)
        last = self._logged.get(sender)
        if last is not None and now - last < _LOG_EVERY:
            self._suppressed[sender] += 1
            return
        if len(self._logged) >= _MAX_LOG_SENDERS:
            self._logged.clear()
        self._logged[sender] = now
        more = self._suppressed.pop(sender, 0)
        log.warning(
            "refused a message from %s on %r: %s%s",
            sender,
            topic[:200],
            exc.detail[:300],
            f" ({more} more refused since the last report)" if more else "",
        )

    def _settle_refused(self, parts: wire.TopicParts, payload: bytes) -> None:
        try:
            env = _envelope_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return
        if (env.site, env.host) != (parts.site, parts.host) or env.seq < 1:
            return
        if not env.agent_id or len(env.agent_id) > 64:
            return
        self.state.settle_rejected(env.agent_id, env.seq)
        self._dirty[env.agent_id] = (parts.site, parts.host)

    def owe_ack(self, agent_id: str, site: str, host: str) -> None:
        """An ack that could not be published: send it with the next flush."""
        with self.lock:
            self._dirty.setdefault(agent_id, (site, host))

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
                self._dirty.setdefault(ack.agent_id, (site, host))

    def _take_acks(self) -> list[AckOwed]:
        dirty, self._dirty = self._dirty, {}
        out = []
        for agent_id, (site, host) in dirty.items():
            track = self.state.tracks.get(agent_id)
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
