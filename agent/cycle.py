"""One collection cycle: run every source, add the agent's own metrics, build the messages.

Pure apart from the sources it calls and the clock readings passed in: the runner decides when
a cycle runs and where its messages go.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from agent.outbox import OutboxStats
from agent.sources.base import DeviceData, Source
from outpost import wire
from outpost.wire import Event, Sample

__all__ = [
    "AgentHealth",
    "CycleResult",
    "Identity",
    "build_batch",
    "collect",
    "encode_batches",
    "self_samples",
    "with_delivery_state",
]

log = logging.getLogger(__name__)


class Identity(NamedTuple):
    site: str
    host: str
    agent_id: str
    boot_id: str


class AgentHealth(NamedTuple):
    """The agent's fault counters beside its outbox's."""

    write_failures: int = 0  # writes to the outbox that failed (since the agent started)
    unclean_restarts: int = 0  # starts after a stop that was not asked for (kept)
    missed_cycles: int = 0  # collection cycles those stops cost (kept)


class CycleResult(NamedTuple):
    samples: list[Sample]
    events: list[Event]
    duration: float
    devices: dict[str, DeviceData]


def collect(sources: list[Source], now: float) -> CycleResult:
    """Run each source; one that fails is reported as unsuccessful and the others go on."""
    started = time.perf_counter()
    samples: list[Sample] = []
    events: list[Event] = []
    devices: dict[str, DeviceData] = {}
    for source in sources:
        t0 = time.perf_counter()
        ok = 1.0
        try:
            got = source.collect(now)
            samples.extend(got.samples)
            events.extend(got.events)
            devices.update(got.devices)
        except Exception as exc:
            ok = 0.0
            log.warning("source %s failed: %s", source.name, exc)
            log.debug("source %s traceback", source.name, exc_info=True)
        labels = {"source": source.name}
        samples.append(Sample("outpost_agent_source_success", ok, labels))
        samples.append(
            Sample("outpost_agent_source_duration_seconds", time.perf_counter() - t0, labels)
        )
    return CycleResult(samples, events, time.perf_counter() - started, devices)


def self_samples(
    stats: OutboxStats, publish_failures: int, duration: float, health: AgentHealth | None = None
) -> list[Sample]:
    """The agent's own health, reported in every metrics batch; with ``health``, the disk-full
    state of the outbox and the fault counters too."""
    out = [
        Sample("outpost_agent_outbox_rows", float(stats.rows)),
        Sample("outpost_agent_outbox_bytes", float(stats.bytes)),
        Sample("outpost_agent_outbox_dropped_total", float(stats.dropped_total)),
        Sample("outpost_agent_outbox_dropped_events_total", float(stats.dropped_events_total)),
        Sample("outpost_agent_publish_failures_total", float(publish_failures)),
        Sample("outpost_agent_collection_duration_seconds", duration),
    ]
    if health is not None:
        out += [
            Sample("outpost_agent_outbox_full", 1.0 if stats.full else 0.0),
            Sample("outpost_agent_outbox_full_episodes_total", float(stats.full_episodes_total)),
            Sample("outpost_agent_outbox_write_failures_total", float(health.write_failures)),
            Sample("outpost_agent_unclean_restarts_total", float(health.unclean_restarts)),
            Sample("outpost_agent_missed_cycles_total", float(health.missed_cycles)),
        ]
    return out


def build_batch(
    who: Identity,
    seq: int,
    ts_ms: int,
    interval: float,
    samples: list[Sample] | None = None,
    events: list[Event] | None = None,
    device: str = "",
) -> wire.Batch:
    """A batch as stored in the outbox: ``outbox_low`` and ``dropped`` are left at their
    defaults (omitted from the JSON) and filled in when it is sent."""
    return wire.Batch(
        v=wire.SCHEMA_VERSION,
        site=who.site,
        host=who.host,
        agent_id=who.agent_id,
        boot_id=who.boot_id,
        seq=seq,
        ts=ts_ms,
        interval=interval,
        device=device,
        samples=samples or [],
        events=events or [],
    )


def encode_batches(
    who: Identity,
    first_seq: int,
    ts_ms: int,
    interval: float,
    limits: wire.Limits,
    items: list[Sample] | list[Event],
    device: str = "",
) -> list[bytes]:
    """Encode a cycle's samples (or events) as one batch, or as several consecutive seqs when
    one would break the collector's limits (count or bytes), so none is ever refused for size.
    Room is left for the delivery state spliced in at send time."""
    are_events = bool(items) and isinstance(items[0], Event)
    cap = limits.max_events if are_events else limits.max_samples
    budget = limits.max_payload_bytes - 16 * 1024
    out: list[bytes] = []
    pending: list[list[Any]] = [list(items[i : i + cap]) for i in range(0, len(items), cap)]
    while pending:
        chunk = pending.pop(0)
        seq = first_seq + len(out)
        if are_events:
            batch = build_batch(who, seq, ts_ms, interval, events=chunk, device=device)
        else:
            batch = build_batch(who, seq, ts_ms, interval, samples=chunk, device=device)
        data = wire.encode(batch)
        if len(data) > budget and len(chunk) > 1:
            half = len(chunk) // 2
            pending[:0] = [chunk[:half], chunk[half:]]
            continue
        out.append(data)
    return out


def with_delivery_state(stored: bytes, outbox_low: int, dropped: list[tuple[int, int]]) -> bytes:
    """Prefix a stored batch with the outbox state at send time.

    The stored JSON object omits both keys, so splicing them in front yields a valid object
    without decoding and re-encoding the samples.
    """
    head = b'{"outbox_low":%d' % outbox_low
    if dropped:
        head += b',"dropped":' + wire.encode_ranges(dropped)
    return head + b"," + stored[1:]
