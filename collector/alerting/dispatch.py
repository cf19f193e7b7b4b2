"""From alert states to notifications: grouping, routing, escalation, repeats and resolves.

Pure planning, time passed in: ``Dispatcher.plan`` looks at the engine's alerts and returns
the notifications due now, marking on each alert what was sent (so the plan, stored with the
alerts, is never made twice). Delivery is someone else's (delivery.py).

- **Grouping.** Firing alerts of one site and severity that are not yet told wait
  ``group_wait_seconds`` from the first of them, then go out as one notification per
  recipient.
- **Routing.** The router picks the routes for the group (site, county, severity, rules,
  whether the site is staffed now) and the recipients of each route's first step.
- **Escalation.** An alert nobody acknowledged goes to the next step of its routes when that
  step is due; acknowledging stops it.
- **Repeats.** An unacknowledged alert is told again at its current level every
  ``repeat_every_seconds`` (0: never).
- **Resolves.** Everyone who heard of an alert hears once that it is resolved.

Inhibited and silenced alerts are not sent; an alert still pending is never sent. Whoever
was told that an alert fired hears that it resolved, also when it was silenced meanwhile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Protocol

import msgspec

from collector.alerting.model import SEVERITIES, Alert, Notification

__all__ = ["DispatchConfig", "Dispatcher", "RouterLike"]


class DispatchConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    group_wait_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    repeat_every_seconds: Annotated[float, msgspec.Meta(ge=0)] = 4 * 3600.0
    notify_resolved: bool = True


class RouterLike(Protocol):
    def routes_for(self, site: str, severity: str, rules: set[str], now: float) -> list[Any]: ...

    def recipients(
        self, route: Any, level: int, site: str, now: float
    ) -> list[tuple[Any, str]]: ...

    def next_escalation(self, route: Any, level: int, fired_at: float) -> float | None: ...

    def route(self, name: str) -> Any | None: ...


GroupKey = tuple[str, str]  # site, severity


class Dispatcher:
    def __init__(
        self,
        config: DispatchConfig,
        router: RouterLike,
        ack_url: Callable[[list[str]], str] = lambda keys: "",
    ) -> None:
        self.config = config
        self.router = router
        self.ack_url = ack_url

    def plan(self, alerts: Iterable[Alert], now: float) -> list[Notification]:
        out: list[Notification] = []
        new: dict[GroupKey, list[Alert]] = defaultdict(list)
        due: dict[tuple[str, str, str, int], list[Alert]] = defaultdict(list)
        repeat: dict[tuple[str, str, str, int], list[Alert]] = defaultdict(list)
        resolved: dict[tuple[str, str, str, int], list[Alert]] = defaultdict(list)
        for alert in alerts:
            quiet = bool(alert.suppressed_by or alert.silenced_by)
            if alert.state == "firing" and not quiet:
                if not alert.notified_firing:
                    new[(alert.site, alert.severity)].append(alert)
                elif alert.acked_at is None:
                    if alert.next_level_at is not None and alert.next_level_at <= now:
                        for route in alert.routes:
                            due[(alert.site, alert.severity, route, alert.level + 1)].append(alert)
                    elif self._repeat_due(alert, now):
                        for route in alert.routes:
                            repeat[(alert.site, alert.severity, route, alert.level)].append(alert)
            elif (
                alert.state == "resolved" and alert.notified_firing and not alert.notified_resolved
            ):
                if not self.config.notify_resolved:
                    alert.notified_resolved = True
                    continue
                for route in alert.routes:
                    for level in range(alert.level + 1):
                        resolved[(alert.site, alert.severity, route, level)].append(alert)
                alert.notified_resolved = True

        for (site, severity), group in sorted(new.items(), key=_group_order):
            first = min(a.fired_at or now for a in group)
            if now - first < self.config.group_wait_seconds:
                continue
            out += self._first(site, severity, group, now)
        for (site, _sev, route_name, level), group in sorted(due.items()):
            out += self._send(route_name, level, site, group, "firing", now)
            for alert in group:
                if alert.level < level:
                    alert.level = level
                    alert.next_level_at = self._next(alert)
                    alert.last_notified_at = now
        for (site, _sev, route_name, level), group in sorted(repeat.items()):
            out += self._send(route_name, level, site, group, "firing", now)
            for alert in group:
                alert.last_notified_at = now
        for (site, _sev, route_name, level), group in sorted(resolved.items()):
            out += self._send(route_name, level, site, group, "resolved", now)
        return _unique(out)

    # --- helpers --------------------------------------------------------------------------

    def _repeat_due(self, alert: Alert, now: float) -> bool:
        every = self.config.repeat_every_seconds
        last = alert.last_notified_at
        return every > 0 and last is not None and now - last >= every

    def _first(
        self, site: str, severity: str, group: list[Alert], now: float
    ) -> list[Notification]:
        rules = {a.rule for a in group}
        routes = self.router.routes_for(site, severity, rules, now)
        names = [r.name for r in routes]
        out: list[Notification] = []
        for route in routes:
            out += self._send(route.name, 0, site, group, "firing", now)
        for alert in group:
            alert.notified_firing = True
            alert.routes = names
            alert.level = 0
            alert.last_notified_at = now
            alert.next_level_at = self._next(alert)
        return out

    def next_level_time(self, alert: Alert) -> float | None:
        """When the alert's next escalation level is due (None: no more levels)."""
        return self._next(alert)

    def _next(self, alert: Alert) -> float | None:
        times = []
        for name in alert.routes:
            route = self.router.route(name)
            if route is None or alert.fired_at is None:
                continue
            when = self.router.next_escalation(route, alert.level, alert.fired_at)
            if when is not None:
                times.append(when)
        return min(times) if times else None

    def _send(
        self, route_name: str, level: int, site: str, group: list[Alert], status: str, now: float
    ) -> list[Notification]:
        route = self.router.route(route_name)
        if route is None:  # the config changed since: nobody left to tell on this route
            return []
        if level >= len(route.steps):  # a shorter route than another the alert took
            return []
        alerts = sorted(group, key=lambda a: (a.rule, sorted(a.labels.items())))
        link = self.ack_url([a.key for a in alerts]) if status == "firing" else ""
        out = []
        for target, audience in self.router.recipients(route, level, site, now):
            out.append(
                Notification(
                    notifier=target.notifier,
                    to=target.to,
                    locale=route.locale,
                    audience=audience,
                    alerts=alerts,
                    status=status,
                    ack_url=link if audience == "it" else "",
                    route=route.name,
                    level=level,
                )
            )
        return out


def _unique(notes: list[Notification]) -> list[Notification]:
    """One message per recipient and content: a person on two levels or two routes hears once."""
    seen: set[tuple[str, str, str, str, tuple[str, ...]]] = set()
    out = []
    for n in notes:
        key = (n.notifier, n.to, n.status, n.audience, tuple(a.key for a in n.alerts))
        if key not in seen:
            seen.add(key)
            out.append(n)
    return out


def _group_order(item: tuple[GroupKey, list[Alert]]) -> tuple[str, int]:
    (site, severity), _ = item
    return site, -SEVERITIES.index(severity) if severity in SEVERITIES else 0
