"""The collector's alerting at run time: evaluate, decide, store, deliver; and the operator's
actions (acknowledge, silence, test).

Every ``evaluate_every_seconds`` on its own thread: the exported series are read (the same
snapshot /metrics renders), the rules turn them and the events received since into
conditions, the engine updates the alerts, inhibitions and silences are marked, and the
dispatcher plans the notifications due. An evaluation also comes early: when a host's status
or events arrive (a Last Will: the host is lost now, not at the next tick), and when a pending
alert's ``for_seconds`` or a new group's wait runs out; never sooner than
``MIN_GAP_FACTOR`` times the last evaluation's duration (and MIN_GAP_SECONDS) after the last
one, so that a storm of events costs a bounded share of a core. Alerts, silences, trend
history and the new deliveries are stored in one transaction before the delivery worker
sends anything. Ingest only appends events to a bounded queue and sets a flag: alerting never
holds up the MQTT thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from collector.alerting.config import AlertingConfig
from collector.alerting.delivery import DeliveryWorker
from collector.alerting.dispatch import Dispatcher
from collector.alerting.engine import Engine, Silence
from collector.alerting.links import LinkError, sign, verify
from collector.alerting.model import Alert, Notification
from collector.alerting.notifiers import Notifier, build_notifier
from collector.alerting.routing import Router, SiteInfo
from collector.alerting.rules import History, RuleContext, Series, evaluate, for_seconds
from collector.alerting.schedule import Calendar, load_calendar
from collector.alerting.store import AlertStore
from collector.alerting.templates import render, validate_templates
from collector.events import HostEvent
from collector.inventory import Inventory

__all__ = ["AlertService", "check_config", "read_secret_file"]

log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, str], float]
MAX_QUEUED_EVENTS = 100_000
KEEP_DELIVERIES_SECONDS = 7 * 86400.0


def read_secret_file(path: str, what: str) -> str:
    """The first line of a secret file; ValueError saying what to do when it is unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} from {path}: {exc.strerror}") from None
    first = text[0].strip() if text else ""
    if len(first) < 16:
        raise ValueError(
            f"the {what} in {path} is shorter than 16 characters: write a long random one, "
            f"e.g. `head -c 32 /dev/urandom | base64 > {path}`"
        )
    return first


def check_config(config: AlertingConfig, inventory: Inventory) -> None:
    """Everything the alert service checks when it starts, without starting it: the calendar,
    the templates, the notifiers' secrets, the routes against the notifiers and the sites,
    and the token and link secret files. Raises ValueError (or an OutpostError) saying what
    is wrong."""
    if not config.enabled:
        return
    calendar = (
        load_calendar(config.routing.calendar_file) if config.routing.calendar_file else Calendar()
    )
    if config.templates_dir:
        validate_templates(config.templates_dir)
    notifiers = {n.name: build_notifier(n) for n in config.notifiers}
    for notifier in notifiers.values():
        notifier.check()
    Router(config.routing, _sites(inventory), calendar, set(notifiers))
    if config.api_token_file:
        read_secret_file(config.api_token_file, "API token")
    if config.link_secret_file:
        read_secret_file(config.link_secret_file, "link secret")
    if config.link_secret_file and not config.public_url:
        log.warning("alerting.link_secret_file is set but public_url is empty: no links")


def _sites(inventory: Inventory) -> dict[str, SiteInfo]:
    return {
        s.id: SiteInfo(s.id, s.county, s.timezone, s.staffing, s.contact) for s in inventory.sites
    }


# Early evaluations (see the module's docstring) keep at least this gap after the last one.
MIN_GAP_SECONDS = 0.2
MIN_GAP_FACTOR = 5.0


class AlertService:
    def __init__(
        self,
        config: AlertingConfig,
        inventory: Inventory,
        state_dir: Path,
        series: Callable[[], Iterable[Sample]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.series = series
        self.clock = clock
        self.site_names = {s.id: s.name for s in inventory.sites if s.name}
        calendar = (
            load_calendar(config.routing.calendar_file)
            if config.routing.calendar_file
            else Calendar()
        )
        if config.templates_dir:
            validate_templates(config.templates_dir)
        self.notifiers: dict[str, Notifier] = {n.name: build_notifier(n) for n in config.notifiers}
        self.router = Router(config.routing, _sites(inventory), calendar, set(self.notifiers))
        self.token = (
            read_secret_file(config.api_token_file, "API token") if config.api_token_file else ""
        )
        self.link_secret = (
            read_secret_file(config.link_secret_file, "link secret").encode()
            if config.link_secret_file
            else b""
        )
        self.engine = Engine(config.engine)
        self.dispatcher = Dispatcher(config.dispatch, self.router, self._ack_url)
        self.history = History()
        self.lock = threading.Lock()
        self.store = AlertStore(state_dir / "alerts.sqlite")
        self.engine.alerts = {a.key: a for a in self.store.load_alerts()}
        self.engine.silences = {s.id: s for s in self.store.load_silences()}
        self.history.restore(self.store.load_meta("history"))
        self.delivery = DeliveryWorker(self.store, self.lock, self._send, config.delivery, clock)
        self._events: deque[HostEvent] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._events_lock = threading.Lock()
        self.events_dropped = 0
        # Requests the HTTP API refused for want of authority, by reason (alerting/api.py).
        self.api_refused: Counter[str] = Counter()
        self.evaluations = 0
        self.evaluation_failures = 0
        self.last_evaluation_seconds = 0.0
        self._stop = threading.Event()
        self._kick = threading.Event()  # something arrived: evaluate as soon as the gap allows
        self._due_at = math.inf  # time.monotonic() when an alert comes due without new input
        self._thread: threading.Thread | None = None
        self._unrouted: set[str] = set()
        self._pruned_at = 0.0

    # --- feeding ----------------------------------------------------------------------------

    def on_event(self, event: HostEvent) -> None:
        """Ingest's listener: quick, never raises."""
        with self._events_lock:
            if len(self._events) == self._events.maxlen:
                self.events_dropped += 1
            self._events.append(event)
        self._kick.set()

    def wake(self, *_: object) -> None:
        """Evaluate soon (a host's status changed); a listener for ingest: never raises."""
        self._kick.set()

    def _take_events(self) -> list[HostEvent]:
        with self._events_lock:
            out = list(self._events)
            self._events.clear()
        return out

    # --- one evaluation -----------------------------------------------------------------------

    def evaluate(self) -> list[Notification]:
        """Evaluate once; returns the notifications queued."""
        started = time.perf_counter()
        now = self.clock()
        series = Series(self.series())
        events = self._take_events()
        cfg = self.config
        conditions = evaluate(
            cfg.rules, cfg.user_rules, RuleContext(now, series, events, self.history)
        )
        self.history.add(now, series)
        with self.lock:
            changes = self.engine.update(
                conditions, now, lambda rule: for_seconds(cfg.rules, cfg.user_rules, rule)
            )
            self.engine.annotate(now, cfg.maintenance)
            notes = self.dispatcher.plan(list(self.engine.alerts.values()), now)
            self._due_at = time.monotonic() + (self._next_due(now) - now)
            self._save(notes, now)
            self._prune(now)
        for change in changes:
            a = change.alert
            log.info("alert %s %s %s", a.rule, change.what, _where(a))
        for a in self.engine.alerts.values():
            if a.notified_firing and not a.routes and a.key not in self._unrouted:
                self._unrouted.add(a.key)
                log.warning(
                    "alert %s at %s matched no route: nobody was told (add a route in "
                    "alerting.routing.routes)", a.rule, _where(a),
                )  # fmt: skip
        if notes:
            self.delivery.wake.set()
        self.evaluations += 1
        self.last_evaluation_seconds = time.perf_counter() - started
        return notes

    def _next_due(self, now: float) -> float:
        """When (clock time) the first alert changes with no new input: a pending alert's
        ``for_seconds`` passing, or a new firing group's wait ending; inf if none. Only times
        still ahead count: what is overdue (silenced, inhibited) waits for the next tick."""
        cfg = self.config
        due = math.inf
        for a in self.engine.alerts.values():
            if a.state == "pending":
                t = a.started + for_seconds(cfg.rules, cfg.user_rules, a.rule)
            elif a.state == "firing" and not a.notified_firing and a.fired_at is not None:
                t = a.fired_at + cfg.dispatch.group_wait_seconds
            else:
                continue
            if now < t < due:
                due = t
        return due

    def _prune(self, now: float) -> None:
        """Forget finished deliveries after a week (once an hour)."""
        if now - self._pruned_at >= 3600:
            self._pruned_at = now
            self.store.prune(now - KEEP_DELIVERIES_SECONDS)

    def _save(self, notes: list[Notification], now: float) -> None:
        self.store.save(
            list(self.engine.alerts.values()),
            list(self.engine.silences.values()),
            notes,
            now,
            {"history": self.history.state()},
        )

    def _ack_url(self, keys: list[str]) -> str:
        if not (self.link_secret and self.config.public_url):
            return ""
        token = sign(self.link_secret, keys, self.clock() + self.config.link_valid_seconds)
        return f"{self.config.public_url.rstrip('/')}/api/v1/alerts/ack?token={token}"

    def _send(self, n: Notification) -> None:
        notifier = self.notifiers.get(n.notifier)
        if notifier is None:
            raise _Permanent(f"no notifier named {n.notifier!r} any more")
        notifier.send(render(n, self.clock(), self.site_names, self.config.templates_dir), n)

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            gap = max(MIN_GAP_SECONDS, MIN_GAP_FACTOR * self.last_evaluation_seconds)
            every = self.config.engine.evaluate_every_seconds
            floor = last + min(gap, every)
            kicked = self._kick.is_set()
            target = floor if kicked else max(floor, min(last + every, self._due_at))
            if now < target:
                # Kicked: only the gap is left to wait. Else a kick cuts the wait short.
                (self._stop if kicked else self._kick).wait(target - now)
                continue
            self._kick.clear()
            last = now
            try:
                self.evaluate()
            except Exception:
                self.evaluation_failures += 1
                log.exception("alert evaluation failed; trying again next time")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alerting", daemon=True)
        self._thread.start()
        self.delivery.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(10)
        self.delivery.stop()
        self.store.close()

    # --- operators ----------------------------------------------------------------------------

    def alerts_json(self, include_resolved: bool = True) -> list[dict[str, Any]]:
        with self.lock:
            alerts = list(self.engine.alerts.values())
        out = [_alert_json(a, self.engine.flapping(a, self.clock())) for a in alerts]
        if not include_resolved:
            out = [a for a in out if a["state"] != "resolved"]
        order = {"firing": 0, "pending": 1, "resolved": 2}
        out.sort(key=lambda a: (order[a["state"]], a["site"], a["rule"], a["host"]))
        return out

    def silences_json(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    "id": s.id,
                    "site": s.site,
                    "host": s.host,
                    "rule": s.rule,
                    "start": s.start,
                    "end": s.end,
                    "reason": s.reason,
                    "created_by": s.created_by,
                }
                for s in sorted(self.engine.silences.values(), key=lambda s: s.end)
            ]

    def ack(self, keys: list[str], by: str, note: str = "") -> list[str]:
        now = self.clock()
        with self.lock:
            done = self.engine.ack(self._resolve_keys(keys), by or "unknown", now, note)
            self._save([], now)
        for a in done:
            log.info("alert %s %s acknowledged by %s", a.rule, _where(a), a.acked_by)
        return [a.key for a in done]

    def ack_token(self, token: str, by: str) -> list[str]:
        """Acknowledge the alerts a signed link names; LinkError when it is bad or expired."""
        if not self.link_secret:
            raise LinkError("signature", "acknowledge links are not configured on this collector")
        keys = verify(self.link_secret, token, self.clock())
        return self.ack(keys, by or "link")

    def unack(self, keys: list[str]) -> list[str]:
        """Take acknowledgements back: escalation goes on (at once if its time has come)."""
        with self.lock:
            done = self.engine.unack(self._resolve_keys(keys))
            for alert in done:
                alert.next_level_at = self.dispatcher.next_level_time(alert)
            self._save([], self.clock())
        return [a.key for a in done]

    def silence(
        self, *, end: float, reason: str, site: str = "", host: str = "", rule: str = "",
        by: str = "",
    ) -> Silence:  # fmt: skip
        now = self.clock()
        made = Silence.new(end, reason, now, site=site, host=host, rule=rule, created_by=by)
        with self.lock:
            self.engine.silence(made)
            self.engine.annotate(now, self.config.maintenance)
            self._save([], now)
        log.info("silence %s made by %s until %s: %s", made.id, by or "?", end, reason)
        return made

    def unsilence(self, silence_id: str) -> bool:
        with self.lock:
            done = self.engine.unsilence(silence_id)
            self._save([], self.clock())
        return done

    def test(self, route_name: str) -> list[Notification]:
        """Queue a test message to everyone on the route's first step."""
        route = self.router.route(route_name)
        if route is None:
            known = ", ".join(sorted(r.name for r in self.config.routing.routes)) or "none"
            raise KeyError(f"no route named {route_name!r} (routes: {known})")
        now = self.clock()
        probe = Alert(
            key="test", rule="test", labels={"site": ""}, severity="info", state="firing",
            started=now, last_active=now, fired_at=now,
        )  # fmt: skip
        notes = [
            Notification(
                target.notifier,
                target.to,
                route.locale,
                audience,
                [probe],
                "test",
                "",
                route.name,
                0,
            )
            for target, audience in self.router.recipients(route, 0, "", now)
        ]
        with self.lock:
            self._save(notes, now)
        self.delivery.wake.set()
        return notes

    def _resolve_keys(self, keys: list[str]) -> list[str]:
        """Full keys, or unique prefixes of at least 6 characters (as the CLI shows them)."""
        out = []
        for key in keys:
            if key in self.engine.alerts:
                out.append(key)
                continue
            found = [k for k in self.engine.alerts if len(key) >= 6 and k.startswith(key)]
            if len(found) == 1:
                out.append(found[0])
        return out

    # --- metrics ----------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        with self.lock:
            states: Counter[tuple[str, str]] = Counter(
                (a.state, a.severity) for a in self.engine.alerts.values()
            )
            firing = [
                (a.rule, a.site, a.severity)
                for a in self.engine.alerts.values()
                if a.state == "firing"
            ]
        return {
            "notifications": self.delivery.metrics(),
            "states": dict(states),
            "firing": Counter(firing),
            "evaluations": self.evaluations,
            "evaluation_failures": self.evaluation_failures,
            "evaluation_seconds": self.last_evaluation_seconds,
            "events_dropped": self.events_dropped,
            "notifiers": sorted(self.notifiers),
        }


class _Permanent(Exception):
    retryable = False


def _where(alert: Alert) -> str:
    return "/".join(x for x in (alert.site, alert.host) if x) or "collector"


def _alert_json(a: Alert, flapping: bool) -> dict[str, Any]:
    return {
        "key": a.key,
        "rule": a.rule,
        "site": a.site,
        "host": a.host,
        "labels": a.labels,
        "severity": a.severity,
        "state": a.state,
        "started": a.started,
        "fired_at": a.fired_at,
        "resolved_at": a.resolved_at,
        "value": a.value,
        "args": a.args,
        "acked_by": a.acked_by,
        "acked_at": a.acked_at,
        "level": a.level,
        "next_level_at": a.next_level_at,
        "routes": a.routes,
        "inhibited_by": a.suppressed_by,
        "silenced_by": a.silenced_by,
        "flapping": flapping,
        "fires": len(a.fires),
    }
