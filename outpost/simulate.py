"""A virtual agent for ``outpost simulate``: what one agent says, and what it keeps until the
collector acknowledges it. Pure: no sockets and no clocks (times are passed in).

A :class:`VirtualAgent` keeps the agent's side of docs/protocol.md: a stable ``agent_id``, a
``boot_id``, a per-agent seq shared by every message, batches of realistic samples whose
counters only grow (:class:`SampleModel`), an in-memory outbox that holds every batch until an
ack covers it (bounded: past ``max_rows`` it drops the oldest and declares the drop), and the
delivery state of agent/runner.py: after a (re)connect the newest batch goes first, then the
backlog in seq order, and batches without an ack after ``resend_after`` seconds go again.
Each batch carries ``outbox_low`` and ``dropped`` as they are when it is sent.

The network side (one paho client per connection, driven from one selector) is
outpost/simulate_net.py; the command is outpost/simulate_cli.py.
"""

from __future__ import annotations

import math
import random
import resource
from dataclasses import dataclass, fields
from typing import Any, Literal

from outpost import wire
from outpost.wire import Sample

__all__ = [
    "SampleModel",
    "Tally",
    "VirtualAgent",
    "assign_connections",
    "fleet_names",
    "next_disconnect_in",
    "nofile_plan",
    "reconnect_delay",
    "with_delivery_state",
]

_GIB = 1024**3


def fleet_names(agents: int, sites: int, site_prefix: str) -> list[tuple[str, str]]:
    """(site, host) slugs for ``agents`` virtual agents spread round-robin over ``sites``
    sites: ``<prefix>-0001`` ... and ``host-0001`` ... within each site."""
    sites = max(1, min(sites, agents))
    width = max(4, len(str(sites)))
    host_width = max(4, len(str(agents // sites + 1)))
    out = []
    for i in range(agents):
        site = f"{site_prefix}-{i % sites + 1:0{width}d}"
        out.append((site, f"host-{i // sites + 1:0{host_width}d}"))
    return out


def assign_connections(agents: int, connections: int) -> list[list[int]]:
    """Agent indexes per connection: one each by default, or ``agents`` shared as evenly as
    possible over ``connections`` (consecutive indexes together)."""
    connections = max(1, min(connections, agents))
    base, extra = divmod(agents, connections)
    out: list[list[int]] = []
    start = 0
    for c in range(connections):
        size = base + (1 if c < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def with_delivery_state(stored: bytes, outbox_low: int, dropped: list[tuple[int, int]]) -> bytes:
    """A stored batch (encoded without ``outbox_low`` and ``dropped``) with the outbox state at
    send time spliced in front, as the agent does: no decode and re-encode of the samples."""
    head = b'{"outbox_low":%d' % outbox_low
    if dropped:
        head += b',"dropped":' + wire.encode_ranges(dropped)
    return head + b"," + stored[1:]


@dataclass
class Tally:
    """Fleet-wide counts. ``batches = acked + dropped + unacked`` at all times."""

    batches: int = 0
    """Batches made (seqs used)."""
    sent: int = 0
    """Batches published at least once."""
    published: int = 0
    """Publishes, first sends and resends."""
    resent: int = 0
    """Publishes of a batch that had been published before (after a reconnect or a timeout)."""
    acked: int = 0
    """Batches an ack from the collector covered."""
    dropped: int = 0
    """Batches dropped from a full outbox (declared to the collector)."""
    unacked: int = 0
    """Batches held now: made, neither acknowledged nor dropped."""
    acks: int = 0
    """Ack messages received."""
    bad_acks: int = 0
    """Ack messages that could not be read (ignored)."""
    publish_failures: int = 0
    """Publishes paho refused."""
    connects: int = 0
    """Connections the broker accepted (CONNACK success)."""
    connect_failures: int = 0
    """Connection attempts that failed or were refused."""
    disconnects: int = 0
    """Abrupt disconnects made on purpose (socket closed without DISCONNECT)."""
    connection_losses: int = 0
    """Connections lost without being asked to (broker closed it, keepalive)."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


class SampleModel:
    """Plausible readings of one host: uptime, CPU seconds, load, memory, a root file system,
    one interface's byte and packet counters, a gateway probe. Counters grow at rates drawn
    once per host; gauges wander within bounds. Names are from docs/metrics.md."""

    def __init__(self, rng: random.Random, now: float) -> None:
        self._rng = rng
        self.boot_time = float(int(now - rng.uniform(3600, 60 * 86400)))
        self.cpus = rng.choice((2, 4, 4, 8))
        self.mem_total = float(rng.choice((4, 8, 8, 16)) * _GIB)
        self.fs_size = float(rng.choice((128, 256, 512)) * _GIB)
        self.fs_free = self.fs_size * rng.uniform(0.2, 0.8)
        self.busy = rng.uniform(0.02, 0.4)
        self.rx_rate = rng.uniform(2e3, 2e6)  # bytes per second
        self.tx_rate = self.rx_rate * rng.uniform(0.1, 0.6)
        up = now - self.boot_time
        self.cpu = {
            "user": up * self.cpus * self.busy * 0.7,
            "system": up * self.cpus * self.busy * 0.25,
            "iowait": up * self.cpus * self.busy * 0.05,
            "idle": up * self.cpus * (1 - self.busy),
        }
        self.rx = up * self.rx_rate
        self.tx = up * self.tx_rate
        self.rx_packets = self.rx / 800
        self.tx_packets = self.tx / 500
        self.load = self.cpus * self.busy
        self.mem_used = self.mem_total * rng.uniform(0.2, 0.7)
        self.processes = float(rng.randint(90, 400))
        self.rtt = rng.uniform(0.0005, 0.02)
        self._last = now

    def samples(
        self, now: float, outbox_rows: int, outbox_bytes: int, dropped: int
    ) -> list[Sample]:
        """One cycle's samples at ``now``; counters advanced by the time since the last."""
        rng = self._rng
        dt = max(0.0, now - self._last)
        self._last = now
        busy = min(0.95, max(0.0, self.busy * rng.uniform(0.5, 1.5)))
        cpu_time = dt * self.cpus
        self.cpu["user"] += cpu_time * busy * 0.7
        self.cpu["system"] += cpu_time * busy * 0.25
        self.cpu["iowait"] += cpu_time * busy * 0.05
        self.cpu["idle"] += cpu_time * (1 - busy)
        rx = dt * self.rx_rate * rng.uniform(0.3, 1.7)
        tx = dt * self.tx_rate * rng.uniform(0.3, 1.7)
        self.rx += rx
        self.tx += tx
        self.rx_packets += rx / 800
        self.tx_packets += tx / 500
        self.load = max(0.0, self.load * 0.8 + self.cpus * busy * 0.2)
        self.mem_used = min(self.mem_total * 0.95, max(self.mem_total * 0.1,
                            self.mem_used * rng.uniform(0.98, 1.02)))  # fmt: skip
        self.fs_free = max(0.0, self.fs_free - dt * rng.uniform(0, 2000))
        self.processes = max(50.0, self.processes + rng.choice((-2.0, -1.0, 0.0, 1.0, 2.0)))
        lost = rng.random() < 0.01
        rtt = self.rtt * rng.uniform(0.8, 1.6)
        fs = {"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4"}
        nic = {"interface": "eth0"}
        probe = {"target": "gateway", "kind": "icmp", "role": "gateway"}
        out = [
            Sample("outpost_host_boot_time_seconds", self.boot_time),
            Sample("outpost_host_uptime_seconds", round(now - self.boot_time, 3)),
            Sample("outpost_cpu_count", float(self.cpus)),
            *(
                Sample("outpost_cpu_seconds_total", round(value, 2), {"mode": mode})
                for mode, value in self.cpu.items()
            ),
            Sample("outpost_load1", round(self.load, 2)),
            Sample("outpost_load5", round(self.load * 0.9, 2)),
            Sample("outpost_load15", round(self.load * 0.8, 2)),
            Sample("outpost_memory_total_bytes", self.mem_total),
            Sample("outpost_memory_used_bytes", float(int(self.mem_used))),
            Sample("outpost_memory_available_bytes", float(int(self.mem_total - self.mem_used))),
            Sample("outpost_filesystem_size_bytes", self.fs_size, fs),
            Sample("outpost_filesystem_free_bytes", float(int(self.fs_free)), fs),
            Sample("outpost_filesystem_avail_bytes", float(int(self.fs_free * 0.95)), fs),
            Sample("outpost_network_receive_bytes_total", float(int(self.rx)), nic),
            Sample("outpost_network_transmit_bytes_total", float(int(self.tx)), nic),
            Sample("outpost_network_receive_packets_total", float(int(self.rx_packets)), nic),
            Sample("outpost_network_transmit_packets_total", float(int(self.tx_packets)), nic),
            Sample("outpost_network_up", 1.0, nic),
            Sample("outpost_processes", self.processes),
            Sample("outpost_probe_success", 0.0 if lost else 1.0, probe),
            Sample("outpost_probe_loss_ratio", 1.0 if lost else 0.0, probe),
            Sample("outpost_agent_outbox_rows", float(outbox_rows)),
            Sample("outpost_agent_outbox_bytes", float(outbox_bytes)),
            Sample("outpost_agent_outbox_dropped_total", float(dropped)),
            Sample("outpost_agent_source_success", 1.0, {"source": "system"}),
        ]
        if not lost:
            out.append(Sample("outpost_probe_rtt_avg_seconds", round(rtt, 6), probe))
        return out


class _Row:
    __slots__ = ("payload", "times_sent")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.times_sent = 0


class VirtualAgent:
    """One agent's identity, outbox and delivery state. The caller publishes what
    :meth:`due` returns and hands every ack payload to :meth:`on_ack`."""

    def __init__(
        self,
        site: str,
        host: str,
        agent_id: str,
        boot_id: str,
        model: SampleModel,
        tally: Tally,
        *,
        interval: float,
        max_rows: int = 360,
        max_inflight: int = 500,
    ) -> None:
        self.site = site
        self.host = host
        self.agent_id = agent_id
        self.boot_id = boot_id
        self.model = model
        self.tally = tally
        self.interval = interval
        self.max_rows = max(1, max_rows)
        self.max_inflight = max(1, max_inflight)
        self.limits = wire.Limits()
        self.next_seq = 1
        self.rows: dict[int, _Row] = {}  # insertion order is seq order
        self.bytes = 0
        self.dropped: list[tuple[int, int]] = []
        self.dropped_total = 0
        self.inflight: dict[int, float] = {}
        self.ready = False
        self._current_from = 0
        self._current_cursor = 0
        self._backlog_cursor = 0

    # --- what it says -----------------------------------------------------------------------

    def topic(self, prefix: str, kind: str) -> str:
        return wire.topic(prefix, self.site, self.host, kind)

    def status(self, status: Literal["online", "offline"], reason: str, now_ms: int) -> bytes:
        """The retained status payload: ``online``, or ``offline`` with a reason."""
        return wire.encode_status(
            status, reason, site=self.site, host=self.host, agent_id=self.agent_id,
            boot_id=self.boot_id, ts_ms=now_ms,
        )  # fmt: skip

    def cycle(self, now: float) -> int:
        """Make this cycle's metrics batch (collection time ``now``) and keep it; its seq."""
        seq = self.next_seq
        samples = self.model.samples(now, len(self.rows), self.bytes, self.dropped_total)
        batch = wire.Batch(
            v=wire.SCHEMA_VERSION,
            site=self.site,
            host=self.host,
            agent_id=self.agent_id,
            boot_id=self.boot_id,
            seq=seq,
            ts=int(now * 1000),
            interval=self.interval,
            samples=samples,
        )
        self.add(wire.encode(batch))
        return seq

    def add(self, stored: bytes) -> int:
        """Keep an encoded batch under the next seq; drop the oldest when the outbox is full.
        The caller encoded it with ``next_seq``."""
        seq = self.next_seq
        self.next_seq += 1
        self.rows[seq] = _Row(stored)
        self.bytes += len(stored)
        self.tally.batches += 1
        self.tally.unacked += 1
        while len(self.rows) > self.max_rows:
            old = next(iter(self.rows))
            self._forget(old)
            self.inflight.pop(old, None)
            self.dropped = wire.merge_ranges([*self.dropped, (old, old)])
            self.dropped_total += 1
            self.tally.dropped += 1
        return seq

    def _forget(self, seq: int) -> None:
        row = self.rows.pop(seq)
        self.bytes -= len(row.payload)
        self.tally.unacked -= 1

    def low(self) -> int:
        """The lowest seq held, or the next seq when nothing is held."""
        return next(iter(self.rows), self.next_seq)

    # --- delivery ---------------------------------------------------------------------------

    def connected(self) -> None:
        """The link is (back) up: forget what was in flight, newest first, then the backlog."""
        self.inflight.clear()
        self._current_from = max(1, self.next_seq - 1)
        self._current_cursor = self._current_from - 1
        self._backlog_cursor = 0
        self.ready = True

    def disconnected(self) -> None:
        self.ready = False

    def due(self, now: float, resend_after: float) -> list[tuple[int, bytes]]:
        """What to publish now, in order, each with the delivery state spliced in (empty
        while not connected). Tell :meth:`sent` about each one published, and stop at the
        first that cannot be: the rest stay due. ``now`` is monotonic seconds."""
        if not self.ready:
            return []
        if self.inflight and min(self.inflight.values()) < now - resend_after:
            self.inflight.clear()
            self._current_cursor = self._current_from - 1
            self._backlog_cursor = 0
        room = self.max_inflight - len(self.inflight)
        if room <= 0 or not self.rows:
            return []
        picked = [s for s in self.rows if s > self._current_cursor][:room]
        if len(picked) < room:
            backlog = [s for s in self.rows if self._backlog_cursor < s < self._current_from]
            picked += backlog[: room - len(picked)]
        if not picked:
            return []
        low = self.low()
        dropped = self.dropped[: self.limits.max_ranges]
        return [(seq, with_delivery_state(self.rows[seq].payload, low, dropped)) for seq in picked]

    def sent(self, seq: int, now: float) -> None:
        """``seq`` (from :meth:`due`) was handed to the broker at ``now``: in flight."""
        row = self.rows.get(seq)
        if row is None:
            return
        self.tally.published += 1
        if row.times_sent:
            self.tally.resent += 1
        else:
            self.tally.sent += 1
        row.times_sent += 1
        self.inflight[seq] = now
        if seq >= self._current_from:
            self._current_cursor = max(self._current_cursor, seq)
        else:
            self._backlog_cursor = max(self._backlog_cursor, seq)

    def on_ack(self, payload: bytes) -> int:
        """Apply an ack payload; returns the batches it settled (0 for an ack of another
        agent or one that cannot be read, which is counted and ignored)."""
        try:
            ack = wire.decode_ack(payload, self.limits)
        except wire.DecodeFailure:
            self.tally.bad_acks += 1
            return 0
        self.tally.acks += 1
        if ack.agent_id != self.agent_id:
            return 0
        return self.settle(ack.upto, ack.ranges)

    def settle(self, upto: int, ranges: list[tuple[int, int]]) -> int:
        """Delete every held batch ``upto`` and ``ranges`` cover, forget drop ranges at or
        below ``upto``; returns the batches deleted."""
        spans = [(1, upto)] if upto >= 1 else []
        spans = wire.merge_ranges([*spans, *((lo, hi) for lo, hi in ranges if lo <= hi)])
        if not spans:
            return 0

        def covered(seq: int) -> bool:
            return any(lo <= seq <= hi for lo, hi in spans)

        gone = [seq for seq in self.rows if covered(seq)]
        for seq in gone:
            self._forget(seq)
        self.tally.acked += len(gone)
        for seq in [s for s in self.inflight if covered(s)]:
            del self.inflight[seq]
        if upto >= 1 and self.dropped:
            self.dropped = [(max(lo, upto + 1), hi) for lo, hi in self.dropped if hi > upto]
        return len(gone)

    def summary(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "host": self.host,
            "agent_id": self.agent_id,
            "last_seq": self.next_seq - 1,
            "unacked": len(self.rows),
            "dropped": self.dropped_total,
        }


# --- timing --------------------------------------------------------------------------------


def next_disconnect_in(rng: random.Random, rate_per_minute: float, population: int) -> float:
    """Seconds to the next abrupt disconnect when each of ``population`` connections is
    dropped ``rate_per_minute`` times a minute (a Poisson process); ``inf`` for rate 0."""
    total = rate_per_minute * population / 60.0
    if total <= 0:
        return math.inf
    return float(rng.expovariate(total))


def reconnect_delay(rng: random.Random, base: float, cap: float, failures: int) -> float:
    """Seconds before the next attempt: ``base`` times 1 to 2 (jitter, so a fleet does not
    come back in lockstep), doubled per failed attempt in a row, at most ``cap``."""
    return min(cap, base * (1 << min(failures, 16))) * rng.uniform(1.0, 2.0)


# --- open files ----------------------------------------------------------------------------


def nofile_plan(needed: int, soft: int, hard: int) -> tuple[int | None, str | None]:
    """How to make room for ``needed`` open files under RLIMIT_NOFILE (``soft``, ``hard``):
    ``(new_soft, None)`` to raise the soft limit (to the hard one), ``(None, None)`` when it
    is enough already, ``(None, error)`` when even the hard limit is too low."""
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= needed:
        return None, None
    if hard == infinite:
        return max(needed, 65536), None
    if hard >= needed:
        return hard, None
    return None, (
        f"this needs about {needed} open files (one per connection), but the hard limit "
        f"is {hard} (ulimit -Hn). Raise it (LimitNOFILE= in a systemd unit, "
        "/etc/security/limits.conf, or ulimit -Hn as root), or share connections "
        "with --connections"
    )
