"""The collector process: MQTT ingest, persisted seq bookkeeping, end-to-end acks, HTTP.

Three threads meet here: paho's (ingest under the state lock), the ack loop (persist the seq
tracks, then publish acks, every ``ack_interval_seconds``) and the HTTP server's (scrapes and
API reads take a snapshot under the same lock).

The main thread supervises (:meth:`CollectorService.supervise`): it tells systemd the
collector is ready, sends ``WATCHDOG=1`` only while the ack loop and the alert evaluations
keep coming round and the threads are alive (:meth:`CollectorService.health`), and on SIGHUP
reads the config and the inventory again and applies them (:meth:`CollectorService.apply`)
without touching the seq tracks, the alerts, the silences or the delivery queue.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, ProcessCollector

from collector.alerting import api as alert_api
from collector.alerting.config import AlertingConfig
from collector.alerting.exporter import AlertsCollector
from collector.alerting.notifiers import Notifier, build_notifier
from collector.alerting.routing import Router, SiteInfo
from collector.alerting.rules import series_read
from collector.alerting.schedule import Calendar, load_calendar
from collector.alerting.service import AlertService, check_config, read_secret_file
from collector.config import CollectorConfig
from collector.exporter import FleetCollector, metrics_body
from collector.ingest import Ingest
from collector.inventory import Inventory
from collector.mqtt import Subscriber
from collector.remote_write import (
    ForwarderMetrics,
    LateSampleForwarder,
    RemoteWriteError,
    http_sender,
)
from collector.state import FleetState
from collector.store import Store
from outpost import systemd, wire
from outpost.errors import OutpostError
from outpost.runtime import Reload, changed_keys, load_or_log

__all__ = ["RESTART_KEYS", "CollectorService", "EventQuery", "QueryError", "parse_listen"]

log = logging.getLogger(__name__)

RESTART_KEYS = (
    "listen",
    "state_dir",
    "broker",
    "shard",
    "remote_write",
    "events",
    "alerting.enabled",
    "alerting.engine.evaluate_every_seconds",
)
"""What a reload cannot change: sockets, where the state lives, the event log's size, and
whether (and how often) the alert loop runs."""

STALL_SECONDS = 30.0
"""A loop that has not come round for this long (or 20 of its own periods) is stuck."""


class QueryError(ValueError):
    """A request parameter that cannot be understood; the message says what is expected."""


MAX_EVENTS_PER_REQUEST = 10_000


def _parse_since(text: str) -> int:
    """Seconds since the epoch, or an ISO 8601 time (UTC when it names no zone); in ms."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    # An unencoded "+08:00" in a query string arrives as " 08:00".
    text = re.sub(r" (\d\d:?\d\d)\Z", r"+\1", text.strip("\n")).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"since={text[:40]!r}: give seconds since 1970 or an ISO 8601 time such as "
            "2026-11-27T08:00:00+08:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return ""


class EventQuery:
    """The filters of ``GET /api/v1/events``: site, host, kind, severity, since, after_id,
    limit (default 100)."""

    ALLOWED = ("site", "host", "kind", "severity", "since", "after_id", "limit")

    def __init__(self, query: str) -> None:
        params = parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(params) - set(self.ALLOWED))
        if unknown:
            raise QueryError(
                f"unknown parameter {unknown[0][:40]!r}; use {', '.join(self.ALLOWED)}"
            )
        one = {k: v[-1] for k, v in params.items()}
        self.site = one.get("site") or None
        self.host = one.get("host") or None
        self.kind = one.get("kind") or None
        self.severity = one.get("severity") or None
        if self.severity not in (None, "info", "warning", "critical"):
            raise QueryError("severity must be info, warning or critical")
        self.since_ms = _parse_since(one["since"]) if one.get("since") else None
        self.after_id = self._int(one, "after_id", None, 0)
        self.limit = min(self._int(one, "limit", 100, 1) or 100, MAX_EVENTS_PER_REQUEST)

    @staticmethod
    def _int(one: dict[str, str], key: str, default: int | None, low: int) -> int | None:
        if not one.get(key):
            return default
        try:
            value = int(one[key])
        except ValueError:
            raise QueryError(f"{key} must be a whole number, got {one[key][:40]!r}") from None
        if value < low:
            raise QueryError(f"{key} must be at least {low}")
        return value


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _limits(config: CollectorConfig) -> wire.Limits:
    return wire.Limits(
        max_payload_bytes=config.limits.max_payload_bytes,
        max_samples=config.limits.max_samples,
        max_events=config.limits.max_events,
        max_labels=config.limits.max_labels,
        sender_rate_per_second=config.limits.sender_rate_per_second,
        sender_burst=config.limits.sender_burst,
        max_devices_per_agent=config.limits.max_devices_per_agent,
        max_series_per_host=config.limits.max_series_per_host,
        max_seq_jump=config.limits.max_seq_jump,
    )


def _get(config: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        config = getattr(config, key)
    return config


class _AlertingParts:
    """What an alerting reload rebuilds, built and checked before anything is swapped."""

    def __init__(self, config: AlertingConfig, inventory: Inventory) -> None:
        check_config(config, inventory)  # the checks `outpost collector check` makes
        routing = config.routing
        calendar = load_calendar(routing.calendar_file) if routing.calendar_file else Calendar()
        self.notifiers: dict[str, Notifier] = {n.name: build_notifier(n) for n in config.notifiers}
        sites = {
            s.id: SiteInfo(s.id, s.county, s.timezone, s.staffing, s.contact)
            for s in inventory.sites
        }
        self.router = Router(routing, sites, calendar, set(self.notifiers))
        self.site_names = {s.id: s.name for s in inventory.sites if s.name}
        token = config.api_token_file
        self.token = read_secret_file(token, "API token") if token else ""
        link = config.link_secret_file
        self.link_secret = read_secret_file(link, "link secret").encode() if link else b""

    def install(self, alerts: AlertService, config: AlertingConfig) -> None:
        """Swap the new settings in; the engine's alerts and silences, the trend history and
        the stored deliveries stay as they are."""
        with alerts.lock:
            alerts.config = config
            alerts.notifiers = self.notifiers
            alerts.router = self.router
            alerts.site_names = self.site_names
            alerts.token = self.token
            alerts.link_secret = self.link_secret
            alerts.engine.config = config.engine
            alerts.dispatcher.config = config.dispatch
            alerts.dispatcher.router = self.router
            alerts.delivery.config = config.delivery


class CollectorService:
    def __init__(self, config: CollectorConfig, inventory: Inventory | None = None) -> None:
        self.config = config
        keep = config.events.keep_per_host
        inventory = (inventory or Inventory()).only(config.shard.sites)
        self.state = FleetState(config.stale_after_seconds, inventory, keep_events=keep)
        self.ingest = Ingest(self.state, _limits(config), config.broker.topic_prefix)
        self.store = Store(Path(config.state_dir) / "collector.sqlite", keep)
        for key, track in self.store.load_tracks().items():
            self.state.tracks[key] = track
            self.state.lost_total += track.lost
            self.state.dropped_total += track.dropped
        self.state.event_log.load(self.store.load_events())
        self.state.restore_event_counts(self.store.load_event_counts())
        self.subscriber = Subscriber(
            config.broker, self._on_message, config.shard.sites, config.shard.label
        )
        self.acks_published = 0
        self.ack_failures = 0
        # The collector's own metrics (process_*, python_*, the alert engine's); the fleet's
        # are rendered by self.fleet and served before them (collector.exporter.metrics_body).
        self.registry = CollectorRegistry()
        self.fleet = FleetCollector(self.ingest, self._extra)
        self.forwarder: LateSampleForwarder | None = None
        if config.remote_write is not None:
            try:
                sender = http_sender(config.remote_write)
            except RemoteWriteError as exc:
                raise ValueError(str(exc)) from None
            self.forwarder = LateSampleForwarder(config.remote_write, sender)
            self.ingest.late_forwarder = self.forwarder
            self.registry.register(ForwarderMetrics(self.forwarder))
        self.alerts: AlertService | None = None
        if config.alerting.enabled:
            # A ValueError here is a config problem (a route naming an unknown notifier...).
            self.alerts = AlertService(
                config.alerting, self.state.inventory, Path(config.state_dir), self._series
            )
            self.ingest.event_listeners.append(self.alerts.on_event)
            self.ingest.status_listeners.append(self.alerts.wake)
            self.registry.register(AlertsCollector(self.alerts))
        ProcessCollector(registry=self.registry)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.http: ThreadingHTTPServer | None = None
        # Progress, in time.monotonic(): when the ack loop last came round, and the alert
        # evaluations (tried) last seen with when that count last moved.
        self.acks_ran_at = time.monotonic()
        self._evaluated = (-1, time.monotonic())

    def _series(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """The series /metrics would show now that the alert rules read."""
        names = series_read(self.alerts.config.user_rules) if self.alerts is not None else None
        return self.fleet.series(names)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.ingest.handle(topic, payload, time.time())

    def _extra(self) -> dict[str, float]:
        return {
            "outpost_collector_acks_published_total": float(self.acks_published),
            "outpost_collector_ack_failures_total": float(self.ack_failures),
            "outpost_collector_broker_connected": 1.0
            if self.subscriber.connected.is_set()
            else 0.0,
            "outpost_collector_broker_connects_total": float(self.subscriber.connects),
        }

    # --- acks -------------------------------------------------------------------------------

    def flush_acks(self) -> int:
        """Persist the seq tracks owed an ack, then publish the acks. Returns acks sent."""
        pending = self.ingest.take_pending()
        owed = pending.acks
        try:
            self.store.save(
                [(a.agent_id, site, host, data) for site, host, a, data in owed],
                pending.events,
                pending.counts,
            )
        except Exception:
            self.ingest.give_back(pending)
            raise
        sent = 0
        prefix = self.config.broker.topic_prefix
        for site, host, ack, _data in owed:
            if self.subscriber.publish(wire.topic(prefix, site, host, wire.ACK), wire.encode(ack)):
                sent += 1
            else:
                self.ack_failures += 1
                self.ingest.owe_ack(ack.agent_id, site, host)
        self.acks_published += sent
        return sent

    def _ack_loop(self) -> None:
        while not self._stop.wait(self.config.ack_interval_seconds):
            try:
                self.flush_acks()
            except Exception:
                log.exception("could not flush acks; will retry")
            self.acks_ran_at = time.monotonic()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        host, port = parse_listen(self.config.listen)
        self.http = ThreadingHTTPServer((host, port), _handler(self))
        self.http.daemon_threads = True
        self._threads = [
            threading.Thread(target=self.http.serve_forever, name="http", daemon=True),
            threading.Thread(target=self._ack_loop, name="acks", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.acks_ran_at = time.monotonic()
        if self.forwarder is not None:
            self.forwarder.start()
        self.subscriber.start()
        if self.alerts is not None:
            self.alerts.start()
        log.info(
            "collector listening on http://%s/ ; broker %s",
            self.config.listen,
            self.config.broker.url,
        )

    def supervise(
        self, stop: threading.Event, reload: Reload[CollectorConfig] | None = None
    ) -> None:
        """The main thread's loop once :meth:`start` returned, until ``stop`` is set: tell
        systemd (READY, STATUS, WATCHDOG while :meth:`health` finds nothing stuck, STOPPING)
        and reload when ``reload`` is due."""
        watchdog = systemd.Watchdog.from_env()
        status = systemd.StatusLine()
        line = self.status_line()
        systemd.ready(line)
        status.shown(line)
        stuck: list[str] = []
        try:
            while not stop.wait(max(0.1, min(1.0, watchdog.remaining()))):
                if reload is not None and reload.due():
                    self._reload(reload)
                    status.shown(self.status_line())
                problems = self.health(time.monotonic())
                if problems and problems != stuck:
                    log.error("stuck: %s; no watchdog pings until it recovers", "; ".join(problems))
                elif stuck and not problems:
                    log.warning("recovered; watchdog pings resume")
                stuck = problems
                if not problems:
                    watchdog.ping()
                status.update("stuck: " + "; ".join(problems) if problems else self.status_line())
        finally:
            systemd.stopping()

    def health(self, now: float) -> list[str]:
        """What is stuck at ``now`` (time.monotonic()); empty when the collector is healthy:
        the HTTP and ack threads are alive, the ack loop came round lately, and the alert
        loop's evaluations (successful or not) keep counting up. A broker that cannot be
        reached is not a fault of this process: a restart would not help."""
        problems = [f"the {t.name} thread has died" for t in self._threads if not t.is_alive()]
        ack_stall = max(STALL_SECONDS, 20 * self.config.ack_interval_seconds)
        if now - self.acks_ran_at > ack_stall:
            problems.append(f"the ack loop has not come round for {now - self.acks_ran_at:.0f} s")
        if self.alerts is not None:
            count = self.alerts.evaluations + self.alerts.evaluation_failures
            if count != self._evaluated[0]:
                self._evaluated = (count, now)
            every = self.config.alerting.engine.evaluate_every_seconds
            idle = now - self._evaluated[1]
            if idle > max(STALL_SECONDS, 3 * every):
                problems.append(f"no alert evaluation for {idle:.0f} s")
        return problems

    def status_line(self) -> str:
        """One line for ``systemctl status``."""
        now = time.time()
        with self.ingest.lock:
            views = self.state.views(now)
        online = sum(1 for v in views if v.up)
        broker = "connected" if self.subscriber.connected.is_set() else "not connected"
        line = f"{online} of {len(views)} hosts online, broker {broker}"
        if self.alerts is not None:
            firing = self.alerts.metrics()["firing"]
            line += f", {sum(firing.values())} alerts firing"
        return line

    # --- reload -----------------------------------------------------------------------------

    def _reload(self, reload: Reload[CollectorConfig]) -> None:
        """SIGHUP: read the config and the inventory again, apply them, telling systemd."""
        systemd.reloading()
        log.info("reload: reading %s again", reload.path or "the flags")
        new = reload.read()
        inventory = None
        if new is not None:
            inventory = (
                load_or_log(Path(new.sites_file), Inventory, {}) if new.sites_file else Inventory()
            )
        applied = False
        if new is not None and inventory is not None:
            try:
                applied = self.apply(new, inventory) is not None
            except Exception:  # a bug must not take the collector down
                log.exception("reload failed; still running with the previous config")
            if applied:
                reload.set_logging(new.log.level, new.log.format)
        line = self.status_line()
        systemd.ready(line if applied else f"reload refused (see the log); {line}")

    def apply(self, new: CollectorConfig, inventory: Inventory) -> list[str] | None:
        """Make ``new`` and ``inventory`` the running ones: the sites and hosts expected,
        stale_after_seconds, the message limits, the ack interval and the alerting config
        (router, notifiers, rules, templates, secrets). The seq tracks, the events, the
        alerts, the silences and the delivery queue are kept. Returns what changed, or None
        when the reload was refused (logged; the running config is kept whole)."""
        old = self.config
        inventory = inventory.only(new.shard.sites)
        changed = changed_keys(old, new)
        if inventory != self.state.inventory:
            changed.append(f"inventory ({new.sites_file or 'none'})")
        if not changed:
            log.info("reload: nothing has changed")
            return []
        fixed = [key for key in RESTART_KEYS if _get(old, key) != _get(new, key)]
        for key in fixed:
            log.error(
                "reload refused: %s changed, which needs a restart; still running with the "
                "previous config",
                key,
            )
        if fixed:
            return None
        parts = None
        if self.alerts is not None and (
            new.alerting != old.alerting or inventory != self.state.inventory
        ):
            try:
                parts = _AlertingParts(new.alerting, inventory)
            except (ValueError, OSError, OutpostError) as exc:
                log.error(
                    "reload refused: alerting: %s; still running with the previous config", exc
                )
                return None
        with self.ingest.lock:
            self.state.inventory = inventory
            self.state.expected = inventory.expected_hosts()
            self.state.stale_after = new.stale_after_seconds
            self.ingest.limits = _limits(new)
        if parts is not None and self.alerts is not None:
            parts.install(self.alerts, new.alerting)
        self.config = new
        log.warning("reload: applied %s", ", ".join(changed))
        return changed

    def stop(self) -> None:
        self._stop.set()
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.alerts is not None:
            self.alerts.stop()
        for t in self._threads:
            if t.name == "acks":
                t.join(timeout=5)
        try:
            self.flush_acks()
        except Exception:
            log.exception("final ack flush failed")
        self.subscriber.stop()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.store.close()

    # --- HTTP views -------------------------------------------------------------------------

    def outages_json(self) -> list[dict[str, Any]]:
        """The most recent outages agents reported, newest first, classified."""
        with self.ingest.lock:
            recent = list(self.state.recent_outages)
        return [o._asdict() for o in reversed(recent)]

    def events_json(self, query: EventQuery) -> list[dict[str, Any]]:
        """Recent events, newest first, filtered; see ``EventQuery``."""
        with self.ingest.lock:
            found = self.state.event_log.query(
                site=query.site,
                host=query.host,
                kind=query.kind,
                severity=query.severity,
                since_ms=query.since_ms,
                after_id=query.after_id,
                limit=query.limit,
            )
        return [
            {
                "id": e.id,
                "site": e.site,
                "host": e.host,
                "kind": e.kind,
                "category": e.category,
                "severity": e.severity,
                "ts": e.ts / 1000,
                "time": _iso(e.ts),
                "received": e.received,
                "message": e.message,
                "attrs": e.attrs,
                "agent_id": e.agent_id,
                "seq": e.seq,
            }
            for e in found
        ]

    def stats_json(self) -> dict[str, Any]:
        """The collector's own counters: cheap, for scripts and benchmarks."""
        with self.ingest.lock:
            return {
                "messages": dict(self.ingest.messages),
                "invalid": dict(self.ingest.invalid),
                "lost": self.state.lost_total,
                "dropped": self.state.dropped_total,
                "agents": len(self.state.tracks),
                "acks_published": self.acks_published,
                "broker_connected": self.subscriber.connected.is_set(),
            }

    def hosts_json(self) -> list[dict[str, Any]]:
        now = time.time()
        names = {s.id: s.name for s in self.state.sites()}
        out = []
        with self.ingest.lock:
            for v in self.state.views(now):
                hs, tr = v.host_state, v.track
                out.append(
                    {
                        "site": v.site,
                        "site_name": names.get(v.site, ""),
                        "host": v.host,
                        "state": v.state,
                        "up": v.up,
                        "expected": v.expected,
                        "last_seen": hs.last_seen if hs else None,
                        "agent_id": hs.agent_id if hs else None,
                        "boot_id": hs.boot_id if hs else None,
                        "last_seq": tr.highest if tr else None,
                        "settled_upto": tr.upto if tr else None,
                        "lost": tr.lost if tr else 0,
                        "dropped": tr.dropped if tr else 0,
                        "duplicates": tr.duplicates if tr else 0,
                    }
                )
        out.sort(key=lambda h: (h["site"], h["host"]))
        return out


def _handler(service: CollectorService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "outpost-collector"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            body = json.dumps(obj, ensure_ascii=False).encode()
            self._send(code, body, "application/json; charset=utf-8")

        def _alerting(self, method: str) -> bool:
            """Answer an alerting request; False when the path is not one."""
            path, _, query = self.path.partition("?")
            if not alert_api.handles(path):
                return False
            if service.alerts is None:
                self._json(404, {"error": "alerting is switched off (alerting.enabled)"})
                return True
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= alert_api.MAX_BODY:
                self._json(413, {"error": f"request body over {alert_api.MAX_BODY} bytes"})
                return True
            body = self.rfile.read(length) if length else b""
            try:
                reply = alert_api.handle(service.alerts, method, path, query, self.headers, body)
            except Exception as exc:
                log.exception("error serving %s %s", method, path[:100])
                self._json(500, {"error": str(exc)[:300]})
                return True
            self._send(reply.code, reply.body, reply.content_type)
            return True

        def do_POST(self) -> None:
            if not self._alerting("POST"):
                self._json(404, {"error": f"no such endpoint {self.path[:100]}"})

        def do_DELETE(self) -> None:
            if not self._alerting("DELETE"):
                self._json(404, {"error": f"no such endpoint {self.path[:100]}"})

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if self._alerting("GET"):
                return
            try:
                if path == "/metrics":
                    accept = self.headers.get("Accept-Encoding")
                    body, headers = metrics_body(service.fleet, service.registry, accept)
                    self.send_response(200)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif path == "/healthz":
                    ok = service.subscriber.connected.is_set()
                    self._json(
                        200 if ok else 503,
                        {"status": "ok" if ok else "broker unreachable", "broker_connected": ok},
                    )
                elif path == "/api/v1/hosts":
                    self._json(200, {"hosts": service.hosts_json()})
                elif path == "/api/v1/outages":
                    self._json(200, {"outages": service.outages_json()})
                elif path == "/api/v1/events":
                    try:
                        found = service.events_json(EventQuery(query))
                    except QueryError as exc:
                        self._json(400, {"error": str(exc)})
                        return
                    self._json(200, {"events": found, "count": len(found)})
                elif path == "/api/v1/collector":
                    self._json(200, service.stats_json())
                else:
                    self._json(404, {"error": f"no such endpoint {path[:100]}"})
            except Exception as exc:
                log.exception("error serving %s", path[:100])
                self._json(500, {"error": str(exc)[:300]})

    return Handler
