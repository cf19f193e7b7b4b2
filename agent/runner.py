"""The agent's main loop: schedule cycles, write them to the outbox, drain it to the broker.

One thread owns the outbox. paho's callbacks arrive as events on a queue (see publisher.py).
Delivery is end to end: a row leaves the outbox only when the collector's ``ack`` covers it.
Rows sent but not acknowledged within ``resend_after_seconds`` are sent again, and after every
reconnect the newest data goes out first, then the backlog in seq order.

The main loop is also what systemd watches (outpost/systemd.py): ``READY=1`` once the outbox
is open and the publisher started, ``WATCHDOG=1`` from the loop itself (a hung cycle stops
the pings), and on SIGHUP the config is read again and applied between two iterations
without closing the outbox (:meth:`Agent.apply`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.cycle import (
    AgentHealth,
    Identity,
    collect,
    encode_batches,
    self_samples,
    with_delivery_state,
)
from agent.outage import OutageTracker
from agent.outbox import Outbox, OutboxRow
from agent.publisher import Publisher, SessionEvent
from agent.sources import REGISTRY, Source, build_sources
from agent.sources.base import Stateful
from outpost import systemd, wire
from outpost.errors import OutpostError
from outpost.runtime import Reload, changed_keys
from outpost.wire import DEVICE_UP, Event, Sample

__all__ = ["RESTART_KEYS", "Agent", "read_boot_id", "read_uptime"]

RESTART_KEYS = ("site", "host", "state_dir")
"""What a reload cannot change: the identity the outbox and the collector know the agent by,
and where the outbox lives."""

log = logging.getLogger(__name__)


def _meta_key(source: str) -> str:
    return f"source.{source}"


def _close(source: Source) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        try:
            close()
        except Exception as exc:
            log.warning("source %s did not close cleanly: %s", source.name, exc)


def read_boot_id() -> str:
    """The kernel's id for this boot (Linux), or the boot time elsewhere. ``OUTPOST_BOOT_ID``
    overrides it (containers that share the host's boot id, and tests of power cuts)."""
    if os.environ.get("OUTPOST_BOOT_ID"):
        return os.environ["OUTPOST_BOOT_ID"][:64]
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:64]
    except OSError:
        import psutil

        return str(int(psutil.boot_time()))


def read_uptime() -> float | None:
    """Seconds since boot, on a clock nobody sets (suspend included); None where there is
    none. Measures how long the agent was down when the wall clock may have been set
    meanwhile."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return None


class Agent:
    def __init__(self, config: AgentConfig, sources: list[Source] | None = None) -> None:
        self.config = config
        self.sources = sources if sources is not None else build_sources(config.sources)
        self.limits = wire.Limits()
        self.publish_failures = 0
        self.write_failures = 0
        self._write_failure_logged = False  # during the current disk-full episode
        # A SimpleQueue: its put() may be called from a signal handler (see wake()).
        self._events: queue.SimpleQueue[SessionEvent] = queue.SimpleQueue()
        # seq -> when the broker acknowledged it (PUBACK), or None while it is still on its
        # way: the resend clock runs from the PUBACK, so a slow link does not make the agent
        # queue again what is still crossing it. ``_handed`` keeps when each was handed over,
        # for a PUBACK that never comes on a live connection.
        self._inflight: dict[int, float | None] = {}
        self._handed: dict[int, float] = {}
        self._mids: dict[int, int] = {}  # paho message id -> seq
        self._current_from = 0
        self._current_cursor = 0
        self._backlog_cursor = 0
        # No row below ``_current_from`` is left to send: set when the backlog query came back
        # short (no row is ever added below ``_current_from``), cleared with the cursors.
        self._backlog_done = False
        self._ready = False
        # The status line systemd was last given, and when (for one held back by its gap).
        self._line_shown = ""
        self._line_at = 0.0
        # The stored state of each stateful source, as last committed (JSON text).
        self._committed: dict[str, str] = {}
        self._next_cycle = 0.0

    # --- the loop ---------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        reload: Reload[AgentConfig] | None = None,
        poll: float | None = 1.0,
    ) -> None:
        """Run until ``stop`` is set; read the config again whenever ``reload`` is due.

        Between two turns the loop sleeps until its next job (a cycle, a watchdog ping, a
        resend falling due, a status line held back) or an event from the session. ``poll``
        caps each sleep, so a ``stop`` or ``reload`` set from elsewhere is seen within it;
        None when whoever sets them also calls :meth:`wake` (agent/service.py does, from its
        signal handlers): then an idle agent wakes once a cycle, not once a second."""
        cfg = self.config
        state = Path(cfg.state_dir)
        self.outbox = Outbox(state / "outbox.sqlite", cfg.outbox.max_bytes)
        self.who = Identity(cfg.site, cfg.host, self.outbox.agent_id, read_boot_id())
        self.publisher = self._publisher(cfg)
        log.info(
            "agent %s/%s (id %s) starting; outbox holds %d rows",
            cfg.site,
            cfg.host,
            self.who.agent_id,
            self.outbox.stats().rows,
        )
        self.outages = OutageTracker(
            OutageTracker.restore((self.outbox.read_meta("outage") or "").encode()),
            cfg.outage_report_min_seconds,
        )
        missed = self.outages.start(
            time.time(), self.who.boot_id, cfg.interval_seconds, read_uptime()
        )
        if missed is not None:
            log.warning(
                "the agent was not stopped cleanly (killed, crashed, or the power went): "
                "%d collection cycles missed; %d such restarts so far",
                missed,
                self.outages.state.unclean_restarts,
            )
        self._restore_sources()
        self._write([], time.time())
        self._restart_delivery()
        self.publisher.start()
        watchdog = systemd.Watchdog.from_env()
        status = systemd.StatusLine()
        line = self.status_line()
        systemd.ready(line)
        self._shown(status, line)
        self._next_cycle = time.monotonic()
        try:
            while not stop.is_set():
                if reload is not None and reload.due():
                    self._reload(reload)
                    self._shown(status, self.status_line())
                if time.monotonic() >= self._next_cycle:
                    self.cycle(time.time())
                    self._next_cycle += self.config.interval_seconds
                    if self._next_cycle < time.monotonic():
                        self._next_cycle = time.monotonic() + self.config.interval_seconds
                self._drain()
                # This iteration came round: the loop is alive, whatever the link does.
                watchdog.ping()
                line = self.status_line()
                if status.update(line):
                    self._line_shown, self._line_at = line, time.monotonic()
                wait = self._idle_seconds(watchdog, status.min_gap, line, poll)
                try:
                    event = self._events.get(timeout=wait)
                except queue.Empty:
                    continue
                self._handle(event)
                self._handle_queued()
        finally:
            systemd.stopping()
            self.outages.stopped()
            self._write([], time.time())
            for source in self.sources:
                _close(source)
            said = self.publisher.stop()
            log.info("agent stopped (shutdown status %s)", "sent" if said else "not sent")
            self.outbox.close()

    def wake(self) -> None:
        """Make the loop take a turn now (to see a ``stop`` or ``reload`` just set). Safe to
        call from a signal handler and from any thread."""
        self._events.put(SessionEvent("wake"))

    def _shown(self, status: systemd.StatusLine, line: str) -> None:
        status.shown(line)
        self._line_shown, self._line_at = line, time.monotonic()

    def _idle_seconds(
        self, watchdog: systemd.Watchdog, status_gap: float, line: str, poll: float | None
    ) -> float:
        """How long the loop may wait for an event before it has a job of its own."""
        now = time.monotonic()
        until = self._next_cycle
        if watchdog.enabled:
            until = min(until, now + watchdog.remaining())
        if line != self._line_shown:  # held back: the line goes out when the gap has passed
            until = min(until, self._line_at + status_gap)
        if self._inflight and self._ready and self.publisher.connected:
            until = min(until, self._resend_at())
        wait = until - now if poll is None else min(until - now, poll)
        return max(0.0, wait)

    def _publisher(self, cfg: AgentConfig) -> Publisher:
        return Publisher(
            cfg.broker, cfg.site, cfg.host, self.who.agent_id, self.who.boot_id, self._events
        )

    def _handle_queued(self) -> None:
        while True:
            try:
                self._handle(self._events.get_nowait())
            except queue.Empty:
                break

    def status_line(self) -> str:
        """One line for ``systemctl status``."""
        link = "connected" if self.publisher.connected else "not connected"
        rows = self.outbox.stats().rows
        return (
            f"{rows} rows in the outbox, {link}, a cycle every {self.config.interval_seconds:g} s"
        )

    # --- reload -----------------------------------------------------------------------------

    def _reload(self, reload: Reload[AgentConfig]) -> None:
        """SIGHUP: read the config again and apply it, telling systemd around it."""
        systemd.reloading()
        log.info("reload: reading %s again", reload.path or "the flags")
        new = reload.read()
        applied = False
        if new is not None:
            try:
                applied = self.apply(new) is not None
            except Exception:  # a bug must not take an unattended agent down
                log.exception("reload failed; still running with the previous config")
        if applied and new is not None:
            reload.set_logging(new.log.level, new.log.format)
        line = self.status_line()
        systemd.ready(line if applied else f"reload refused (see the log); {line}")

    def apply(self, new: AgentConfig) -> list[str] | None:
        """Make ``new`` the running config without closing the outbox (its rows, seq and
        agent id stay): interval, sources, outbox limits, outage reporting and, by
        reconnecting the publisher, broker settings. Returns the keys that changed, or None
        when the reload was refused (logged; the running config is kept whole)."""
        old = self.config
        changed = changed_keys(old, new)
        if not changed:
            log.info("reload: the config has not changed")
            return []
        fixed = [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]
        for key in fixed:
            log.error(
                "reload refused: %s changed from %r to %r, which needs a restart; still "
                "running with the previous config",
                key,
                getattr(old, key),
                getattr(new, key),
            )
        if fixed:
            return None
        built = self._rebuild_sources(old, new)
        if built is None:
            return None
        publisher = None
        if new.broker != old.broker:
            try:
                publisher = self._publisher(new)
            except (OutpostError, OSError, ValueError) as exc:
                log.error("reload refused: broker: %s; still running with the previous config", exc)
                for source in built:
                    if source not in self.sources:
                        _close(source)
                return None
        for source in self.sources:
            if source not in built:
                _close(source)
        self.sources = built
        self.config = new
        self.outbox.max_bytes = new.outbox.max_bytes
        self.outages.min_seconds = new.outage_report_min_seconds
        if new.interval_seconds != old.interval_seconds:
            # The next cycle comes one new interval after the last one.
            last = self._next_cycle - old.interval_seconds
            self._next_cycle = max(time.monotonic(), last + new.interval_seconds)
        if publisher is not None:
            self._reconnect(publisher)
        log.warning("reload: applied %s", ", ".join(changed))
        return changed

    def _rebuild_sources(self, old: AgentConfig, new: AgentConfig) -> list[Source] | None:
        """The sources for ``new``: those whose block is unchanged stay as they are (with
        their position), the others are built again, checked (``preflight``) and given the
        last stored state. None when one cannot be used (logged)."""
        current = {source.name: source for source in self.sources}
        out: list[Source] = []
        fresh: list[Source] = []
        for key, factory in REGISTRY.items():
            block = getattr(new.sources, key)
            if block == getattr(old.sources, key) and key in current:
                out.append(current[key])
                continue
            if not getattr(block, "enabled", True):
                continue
            try:
                source = factory(block)
                fresh.append(source)
                preflight = getattr(source, "preflight", None)
                if preflight is not None:
                    preflight()
            except (ValueError, OSError, OutpostError) as exc:
                log.error(
                    "reload refused: source %s: %s; still running with the previous config",
                    key,
                    exc,
                )
                for made in fresh:
                    _close(made)
                return None
            out.append(source)
        for source in fresh:
            self._restore_source(source)
        return out

    def _reconnect(self, publisher: Publisher) -> None:
        """Say goodbye on the old session, then connect with the new settings. What the old
        session still reported (an ack, its disconnect) is handled first."""
        self.publisher.stop()
        self._handle_queued()
        self._ready = False  # until the new session says it is connected
        self.publisher = publisher
        self.publisher.start()
        log.info("reload: reconnecting to %s", self.config.broker.url)

    def cycle(self, now: float) -> None:
        """Collect once and store the messages, with the outage state, in one transaction."""
        result = collect(self.sources, now)
        self.outages.cycle(now, result.samples, read_uptime())
        ts_ms = int(now * 1000)
        st = self.outages.state
        health = AgentHealth(self.write_failures, st.unclean_restarts, st.missed_cycles)
        samples = result.samples + self_samples(
            self.outbox.stats(), self.publish_failures, result.duration, health
        )
        rows = self._encode([], wire.METRICS, samples, ts_ms)
        self._encode(rows, wire.EVENTS, result.events, ts_ms)
        for device, data in sorted(result.devices.items()):
            up = Sample(DEVICE_UP, 1.0 if data.up else 0.0)
            self._encode(rows, wire.METRICS, [*data.samples, up], ts_ms, device)
            self._encode(rows, wire.EVENTS, data.events, ts_ms, device)
        self._write(rows, now)

    def _encode(
        self,
        rows: list[tuple[str, bytes]],
        kind: str,
        items: list[Sample] | list[Event],
        ts_ms: int,
        device: str = "",
    ) -> list[tuple[str, bytes]]:
        """Append ``items`` to ``rows`` as encoded batches numbered after the rows already
        there."""
        first = self.outbox.next_seq + len(rows)
        interval = self.config.interval_seconds
        for data in encode_batches(self.who, first, ts_ms, interval, self.limits, items, device):
            rows.append((kind, data))
        return rows

    def _write(self, rows: list[tuple[str, bytes]], now: float) -> None:
        """Store rows, the outage state and the sources' positions together. A failure is
        logged (once per disk-full episode) and counted, and the sources go back to their
        last stored position, so what they read is read again next cycle. On a full disk the
        outbox makes room by dropping metrics first (outbox.py); a failure here means the
        cycle did not fit even so."""
        meta = {"outage": self.outages.snapshot().decode()}
        changed = self._source_states()
        meta.update({_meta_key(name): text for name, text in changed.items()})
        try:
            self.outbox.add_many(rows, now, meta)
        except sqlite3.Error as exc:
            self.write_failures += 1
            if not self.outbox.full:
                log.error("cannot write to the outbox in %s: %s", self.config.state_dir, exc)
            elif not self._write_failure_logged:
                self._write_failure_logged = True
                log.error(
                    "the disk is full and a cycle did not fit even in place of old rows: it "
                    "is not stored (counted in outpost_agent_outbox_write_failures_total); "
                    "what the sources read is read again once there is room: %s",
                    exc,
                )
            for source in self.sources:
                if isinstance(source, Stateful) and source.name in changed:
                    source.restore(json.loads(self._committed.get(source.name) or "{}"))
            return
        if not self.outbox.full:
            self._write_failure_logged = False
        self._committed.update(changed)

    def _source_states(self) -> dict[str, str]:
        """The states of stateful sources that changed since they were last stored."""
        out = {}
        for source in self.sources:
            if isinstance(source, Stateful):
                text = json.dumps(source.state(), separators=(",", ":"), sort_keys=True)
                if text != self._committed.get(source.name):
                    out[source.name] = text
        return out

    def _restore_sources(self) -> None:
        for source in self.sources:
            self._restore_source(source)

    def _restore_source(self, source: Source) -> None:
        """Hand a stateful source its last stored state (from the outbox)."""
        if not isinstance(source, Stateful):
            return
        text = self.outbox.read_meta(_meta_key(source.name)) or ""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            log.warning("stored state of source %s is damaged; starting afresh", source.name)
            data = {}
        source.restore(data if isinstance(data, dict) else {})
        if text:
            self._committed[source.name] = text

    # --- delivery ---------------------------------------------------------------------------

    def _restart_delivery(self) -> None:
        """Forget what was in flight: send the newest row first, then the backlog in order."""
        self._inflight.clear()
        self._handed.clear()
        self._mids.clear()
        self._current_from = max(1, self.outbox.next_seq - 1)
        self._current_cursor = self._current_from - 1
        self._backlog_cursor = 0
        self._backlog_done = False

    def _handle(self, event: SessionEvent) -> None:
        if event.kind == "connected":
            now = time.time()
            report = self.outages.connected_at(now)
            if report is not None:
                log.warning("link back after an outage: %s", report.message)
            # The report and the reset state commit together: neither lost nor sent twice.
            rows = self._encode([], wire.EVENTS, [report] if report else [], int(now * 1000))
            self._write(rows, now)
            # Whatever was in flight may be lost with the old session: the newest row goes
            # first, then the backlog in order.
            self._restart_delivery()
            self._ready = True
        elif event.kind == "disconnected":
            self._ready = False
            self.outages.disconnected(time.time())
            self._write([], time.time())
        elif event.kind == "ack":
            self._on_ack(event.payload)
        elif event.kind == "published":
            seq = self._mids.pop(event.mid, None)
            if seq is not None and seq in self._inflight:
                self._inflight[seq] = time.monotonic()

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = wire.decode_ack(payload, self.limits)
        except wire.DecodeFailure as exc:
            log.warning("ignoring a bad ack: %s", exc)
            return
        if ack.agent_id != self.who.agent_id:
            log.debug("ignoring an ack for agent %s", ack.agent_id)
            return
        try:
            self.outbox.ack(ack.upto, ack.ranges)
        except sqlite3.Error as exc:
            # A full disk: the rows stay until a later ack (it covers them too) deletes them.
            if not self.outbox.full:
                log.warning("cannot delete acknowledged rows from the outbox: %s", exc)
        for seq in list(self._inflight):
            if seq <= ack.upto or any(lo <= seq <= hi for lo, hi in ack.ranges):
                del self._inflight[seq]
                self._handed.pop(seq, None)
        if not self._inflight:
            self._mids.clear()

    def _resend_due(self, now: float) -> bool:
        """True when a batch the broker took has waited ``resend_after_seconds`` for the
        collector's ack (the broker or the collector lost it), or one has waited ten times
        that for the broker's PUBACK on a connection that is still up."""
        return self._resend_at() < now

    def _resend_at(self) -> float:
        """When (monotonic) :meth:`_resend_due` turns true; infinity with nothing in flight."""
        after = self.config.outbox.resend_after_seconds
        acked = [t for t in self._inflight.values() if t is not None]
        waiting = [self._handed[s] for s, t in self._inflight.items() if t is None]
        at = min(acked) + after if acked else math.inf
        return min(at, min(waiting) + 10 * after) if waiting else at

    def _drain(self) -> None:
        if not (self._ready and self.publisher.connected):
            return
        now = time.monotonic()
        if self._inflight and self._resend_due(now):
            log.info("no ack for %d batches; sending them again", len(self._inflight))
            self._inflight.clear()
            self._handed.clear()
            self._mids.clear()
            self._current_cursor = self._current_from - 1
            self._backlog_cursor = 0
            self._backlog_done = False
        room = self.config.outbox.max_inflight - len(self._inflight)
        if room <= 0:
            return
        # The queries are skipped when they cannot find anything: an idle agent's turn of the
        # loop reads nothing from the disk.
        rows: list[OutboxRow] = []
        if self._current_cursor < self.outbox.next_seq - 1:
            rows = self.outbox.rows_after(self._current_cursor, None, room)
        backlog_done = False
        if len(rows) < room and not self._backlog_done:
            want = room - len(rows)
            backlog = self.outbox.rows_after(self._backlog_cursor, self._current_from, want)
            backlog_done = len(backlog) < want
            rows += backlog
        if not rows:
            self._backlog_done = self._backlog_done or backlog_done
            return
        low = self.outbox.low()
        ranges = self.outbox.dropped_ranges()
        dropped = ranges[: self.limits.max_ranges]
        if len(ranges) > len(dropped):
            # The drops not declared in this batch must stay above outbox_low, or the
            # collector would count them as lost; they are declared once these are settled.
            low = min(low, ranges[len(dropped)][0])
        for row in rows:
            mid = self.publisher.publish(row.kind, with_delivery_state(row.payload, low, dropped))
            if mid is None:
                self.publish_failures += 1
                return
            self._inflight[row.seq] = None
            self._handed[row.seq] = now
            self._mids[mid] = row.seq
            if row.seq >= self._current_from:
                self._current_cursor = max(self._current_cursor, row.seq)
            else:
                self._backlog_cursor = max(self._backlog_cursor, row.seq)
        self._backlog_done = self._backlog_done or backlog_done
