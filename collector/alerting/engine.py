"""The alert engine: conditions in, alert states out, as pure data with time passed in.

Each evaluation hands ``Engine.update`` what the rules say is wrong now. An alert is
``pending`` from the first evaluation that sees its condition, ``firing`` once the condition
has held for the rule's ``for``, and ``resolved`` when it no longer holds. Three dampers:

- a firing alert resolves only after its condition stayed clear for
  ``resolve_after_seconds``;
- **instant** alerts (from events: a brute-force attack, a changed file) fire at once and
  resolve after ``instant_hold_seconds`` without a new event;
- **flapping**: an alert that fired ``flap_threshold`` times within ``flap_window_seconds``
  resolves only after its condition stayed clear for the whole window, so a host that bounces
  ten times in an hour is one alert, not ten.

On top of the states, ``annotate`` marks alerts that must not be sent on their own:
**inhibited** (a site that is unreachable, or about to be declared so, covers the host, gear,
link and probe alerts of that site: one site alert, not twenty; a collector that lost its
broker covers every alert but its own, since it hears nobody) and **silenced** (a silence
made by an operator, or a maintenance window from the config).

The engine decides nothing about who hears what: that is the dispatcher's (dispatch.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, NamedTuple

import msgspec

from collector.alerting.model import Alert, Condition, alert_key

__all__ = [
    "INHIBITED_BY_SITE",
    "Change",
    "Engine",
    "EngineConfig",
    "Maintenance",
    "Silence",
]

# Rules whose alerts a site_unreachable alert of the same site covers: they follow from it.
INHIBITED_BY_SITE = frozenset(
    {
        "host_down",
        "host_shutdown",
        "host_never_reported",
        "gear_interface_down",
        "gear_rebooted",
        "uplink_loss",
        "uplink_latency",
        "outbox_backlog",
        "clock_skew",
        "ups_on_battery",
    }
)
SITE_RULE = "site_unreachable"
BROKER_RULE = "collector_broker_down"


class EngineConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    evaluate_every_seconds: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0
    instant_hold_seconds: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    # A firing alert resolves only after its condition stayed clear this long: a host that
    # is back for a minute and gone again stays one alert.
    resolve_after_seconds: Annotated[float, msgspec.Meta(ge=0)] = 180.0
    flap_window_seconds: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    # Fired this many times within the window: flapping (held firing until quiet).
    flap_threshold: Annotated[int, msgspec.Meta(ge=2)] = 2
    # Resolved alerts are kept this long for the API, then forgotten.
    keep_resolved_seconds: Annotated[float, msgspec.Meta(ge=0)] = 86400.0


class Silence(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """No notifications for matching alerts until ``end``. Empty matchers match anything,
    but a silence must name at least one of site, host and rule."""

    id: str
    end: float
    reason: str
    start: float = 0.0
    site: str = ""
    host: str = ""
    rule: str = ""
    created_by: str = ""

    def __post_init__(self) -> None:
        if not (self.site or self.host or self.rule):
            raise ValueError("a silence must name a site, a host or a rule")
        if not self.reason.strip():
            raise ValueError("a silence needs a reason")

    @staticmethod
    def new(
        end: float, reason: str, now: float, *, site: str = "", host: str = "", rule: str = "",
        created_by: str = "",
    ) -> Silence:  # fmt: skip
        if end <= now:
            raise ValueError("a silence must end in the future")
        return Silence(
            id=uuid.uuid4().hex[:12], end=end, reason=reason, start=now, site=site, host=host,
            rule=rule, created_by=created_by,
        )  # fmt: skip

    def matches(self, alert: Alert, now: float) -> bool:
        return (
            self.start <= now < self.end
            and (not self.site or alert.site == self.site)
            and (not self.host or alert.host == self.host)
            and (not self.rule or alert.rule == self.rule)
        )


class Maintenance(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A planned window for a site (config): its alerts are silenced meanwhile."""

    site: str
    start: str  # ISO 8601 with a zone, e.g. 2026-12-01T08:00:00+08:00
    end: str
    reason: str = "maintenance"

    def __post_init__(self) -> None:
        begin, end = self.window()
        if end <= begin:
            raise ValueError(f"maintenance of {self.site}: end is not after start")

    def window(self) -> tuple[float, float]:
        out = []
        for text in (self.start, self.end):
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                raise ValueError(f"{text!r}: give a time zone, e.g. {text}+08:00")
            out.append(when.timestamp())
        return out[0], out[1]

    def covers(self, alert: Alert, now: float) -> bool:
        begin, end = self.window()
        return alert.site == self.site and begin <= now < end


class Change(NamedTuple):
    alert: Alert
    what: str  # "fired" | "resolved"


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.alerts: dict[str, Alert] = {}
        self.silences: dict[str, Silence] = {}

    # --- states ---------------------------------------------------------------------------

    def update(
        self, conditions: Iterable[Condition], now: float, for_seconds: Callable[[str], float]
    ) -> list[Change]:
        """Apply one evaluation's conditions; returns the alerts that fired or resolved."""
        cfg = self.config
        changes: list[Change] = []
        seen: set[str] = set()
        for cond in conditions:
            key = alert_key(cond.rule, cond.labels)
            if key in seen:
                continue
            seen.add(key)
            alert = self.alerts.get(key)
            if alert is None or (alert.state == "resolved"):
                fires = [
                    t for t in (alert.fires if alert else []) if now - t < cfg.flap_window_seconds
                ]
                alert = Alert(
                    key=key, rule=cond.rule, labels=dict(cond.labels), severity=cond.severity,
                    state="pending", started=now, last_active=now, value=cond.value,
                    args=dict(cond.args), instant=cond.instant, fires=fires,
                )  # fmt: skip
                self.alerts[key] = alert
            alert.last_active = now
            alert.value = cond.value
            alert.args = dict(cond.args)
            alert.severity = cond.severity
            if alert.state == "pending" and (
                cond.instant or now - alert.started >= for_seconds(cond.rule)
            ):
                alert.state = "firing"
                alert.fired_at = now
                alert.fires = [t for t in alert.fires if now - t < cfg.flap_window_seconds]
                alert.fires.append(now)
                changes.append(Change(alert, "fired"))
        for key, alert in list(self.alerts.items()):
            if key in seen:
                continue
            if alert.state == "pending":
                del self.alerts[key]
            elif alert.state == "firing" and self._may_resolve(alert, now):
                alert.state = "resolved"
                alert.resolved_at = now
                changes.append(Change(alert, "resolved"))
            elif alert.state == "resolved" and now - (alert.resolved_at or now) > max(
                cfg.keep_resolved_seconds, cfg.flap_window_seconds
            ):
                del self.alerts[key]
        return changes

    def flapping(self, alert: Alert, now: float) -> bool:
        recent = [t for t in alert.fires if now - t < self.config.flap_window_seconds]
        return len(recent) >= self.config.flap_threshold

    def _may_resolve(self, alert: Alert, now: float) -> bool:
        quiet = now - alert.last_active
        if alert.instant:
            return quiet >= self.config.instant_hold_seconds
        if self.flapping(alert, now):
            return quiet >= self.config.flap_window_seconds
        return quiet >= self.config.resolve_after_seconds

    # --- what may be sent -------------------------------------------------------------------

    def annotate(self, now: float, maintenance: Iterable[Maintenance] = ()) -> None:
        """Mark each alert inhibited (by its site's alert) or silenced, for this moment."""
        windows = list(maintenance)
        site_alerts = {
            a.site: a.key
            for a in self.alerts.values()
            if a.rule == SITE_RULE and a.state in ("pending", "firing")
        }
        # Without its broker the collector hears nobody: every host would look down. The
        # broker alert covers all but the collector's own alerts.
        blind = next(
            (
                a.key
                for a in self.alerts.values()
                if a.rule == BROKER_RULE and a.state in ("pending", "firing")
            ),
            "",
        )
        for key, silence in list(self.silences.items()):
            if silence.end <= now:
                del self.silences[key]
        for alert in self.alerts.values():
            alert.suppressed_by = ""
            if blind and not alert.rule.startswith("collector_"):
                alert.suppressed_by = blind
            elif alert.rule in INHIBITED_BY_SITE and alert.site in site_alerts:
                alert.suppressed_by = site_alerts[alert.site]
            alert.silenced_by = ""
            for silence in self.silences.values():
                if silence.matches(alert, now):
                    alert.silenced_by = silence.id
                    break
            else:
                for window in windows:
                    if window.covers(alert, now):
                        alert.silenced_by = f"maintenance:{window.site}"
                        break

    # --- operators ------------------------------------------------------------------------

    def ack(self, keys: Iterable[str], by: str, now: float, note: str = "") -> list[Alert]:
        """Acknowledge firing alerts: escalation stops for them. Returns those acknowledged."""
        done = []
        for key in keys:
            alert = self.alerts.get(key)
            if alert is None or alert.state != "firing" or alert.acked_at is not None:
                continue
            alert.acked_by, alert.acked_at, alert.ack_note = by, now, note
            alert.next_level_at = None
            done.append(alert)
        return done

    def unack(self, keys: Iterable[str]) -> list[Alert]:
        done = []
        for key in keys:
            alert = self.alerts.get(key)
            if alert is None or alert.acked_at is None:
                continue
            alert.acked_by, alert.acked_at, alert.ack_note = "", None, ""
            done.append(alert)
        return done

    def silence(self, silence: Silence) -> None:
        self.silences[silence.id] = silence

    def unsilence(self, silence_id: str) -> bool:
        return self.silences.pop(silence_id, None) is not None

    def firing(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state == "firing"]
