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

import msgspec

from collector.outages import Outage
from collector.state import FleetState
from outpost import wire

__all__ = ["RESULTS", "Ingest"]

log = logging.getLogger(__name__)

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
            for listener in self.outage_listeners:
                listener(outage)
        if applied.lost:
            log.warning(
                "%s/%s: %d messages lost (never applied, no longer held by the agent)",
                parts.site,
                parts.host,
                applied.lost,
            )
        return self._count("accepted" if applied.new else "duplicate")

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

    def take_acks(self) -> list[tuple[str, str, wire.Ack, bytes]]:
        """The acks owed since the last call, one per agent that sent anything, each with its
        encoded seq track to persist before the ack is published."""
        with self.lock:
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
