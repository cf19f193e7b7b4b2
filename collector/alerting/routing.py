"""Routing: which routes an alert group takes, who hears it at each escalation level, and when
the next level is due.

A group is alerts of one site and one severity. :meth:`Router.routes_for` walks the configured
routes in order and takes the first that matches (site, county, severity, rules, whether the
site is staffed now), and the ones after it while each matched route says ``continue``.
A route's ``steps`` are its escalation levels: step 0 is sent when the group fires, and each
later step ``after_minutes`` after the group fired, if nobody has acknowledged it by then.
Each step names its recipients:

- ``site_contact``: the site's local contact (not IT staff: plain-language messages,
  audience ``contact``); nothing for a site without one;
- ``oncall:<rotation>``: whoever that rotation has on call now;
- ``person:<name>``: that person;
- ``notifier:<name>`` or ``notifier:<name>:<to>``: a notifier directly (a group robot, a
  webhook), optionally with an address.

Pure: time is passed in, nothing is sent or logged here, and every name a route uses is
checked once, when the :class:`Router` is built. The engine decides when to call, keeps
the escalation state and delivers; the sites come from the inventory as :class:`SiteInfo`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Literal, NamedTuple

import msgspec

from collector.alerting.model import Severity
from collector.alerting.schedule import (
    Calendar,
    Name,
    Person,
    Rotation,
    Staffing,
    Target,
    time_zone,
)

__all__ = [
    "AUDIENCE_CONTACT",
    "AUDIENCE_IT",
    "Contact",
    "Match",
    "Route",
    "Router",
    "RoutingConfig",
    "SiteInfo",
    "Step",
    "Target",
]

AUDIENCE_IT = "it"
AUDIENCE_CONTACT = "contact"
SITE_CONTACT = "site_contact"
_RECIPIENT_FORMS = (
    "'site_contact', 'oncall:<rotation>', 'person:<name>', 'notifier:<name>' "
    "or 'notifier:<name>:<to>'"
)


class Contact(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A site's local contact: the township clerk who can check the router's lights. Not IT
    staff; ``name`` and ``phone`` are shown to IT in messages, ``notify`` reaches them."""

    name: str = ""
    phone: str = ""
    notify: list[Target] = msgspec.field(default_factory=list)


class Match(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a route takes. Every non-empty list must contain the group's value (for
    ``rules``: any of the group's rules); an empty list takes anything. ``staffed``: only
    while the site is staffed (true) or only while it is not (false); left out, either."""

    sites: list[str] = msgspec.field(default_factory=list)
    counties: list[str] = msgspec.field(default_factory=list)
    severities: list[Severity] = msgspec.field(default_factory=list)
    rules: list[str] = msgspec.field(default_factory=list)
    staffed: bool | None = None


def _recipient(entry: str) -> tuple[str, str, str]:
    """``(kind, name, to)`` for one recipient entry; ValueError for a malformed one."""
    if entry == SITE_CONTACT:
        return SITE_CONTACT, "", ""
    kind, colon, rest = entry.partition(":")
    if colon and kind in ("oncall", "person") and rest:
        return kind, rest, ""
    if colon and kind == "notifier":
        name, _, to = rest.partition(":")
        if name:
            return kind, name, to
    raise ValueError(f"{entry!r} is not a recipient; expected {_RECIPIENT_FORMS}")


class Step(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One escalation level: who hears the group, ``after_minutes`` after it fired."""

    notify: list[str]
    after_minutes: Annotated[float, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.after_minutes):
            raise ValueError(f"after_minutes: {self.after_minutes} is not a number of minutes")
        if not self.notify:
            raise ValueError(f"notify is empty: list at least one of {_RECIPIENT_FORMS}")
        for index, entry in enumerate(self.notify):
            try:
                _recipient(entry)
            except ValueError as exc:
                raise ValueError(f"notify[{index}]: {exc}") from None


class Route(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A named route: what it matches, the language of its messages and its escalation
    steps. ``continue`` (``continue_`` in Python): after this route matched, keep looking
    for more."""

    name: Name
    steps: list[Step]
    match: Match = msgspec.field(default_factory=Match)
    locale: Literal["zh-CN", "en"] = "zh-CN"
    continue_: bool = msgspec.field(name="continue", default=False)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"route {self.name!r} has no steps: nobody would hear it")
        if self.steps[0].after_minutes != 0:
            raise ValueError(
                f"route {self.name!r}, step 0: after_minutes must be 0 (or left out): "
                "the first step is sent when the group fires"
            )
        for level in range(1, len(self.steps)):
            before, after = self.steps[level - 1].after_minutes, self.steps[level].after_minutes
            if not after > before:
                raise ValueError(
                    f"route {self.name!r}, step {level}: after_minutes {after:g} must be more "
                    f"than step {level - 1}'s {before:g} (both count from when the group fired)"
                )


def _unique(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two {kind} are named {name!r}")
        seen.add(name)


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Routes (in order), on-call rotations, the people they name, and the holiday calendar
    file (see :func:`collector.alerting.schedule.load_calendar`; none: plain Mon-Fri weeks)."""

    routes: list[Route] = msgspec.field(default_factory=list)
    rotations: list[Rotation] = msgspec.field(default_factory=list)
    people: list[Person] = msgspec.field(default_factory=list)
    calendar_file: str | None = None

    def __post_init__(self) -> None:
        _unique("routes", [r.name for r in self.routes])
        _unique("rotations", [r.name for r in self.rotations])
        _unique("people", [p.name for p in self.people])


class SiteInfo(NamedTuple):
    """What routing needs to know about a site (from the inventory)."""

    id: str
    county: str = ""
    timezone: str = "Asia/Shanghai"
    staffing: Staffing = Staffing()
    contact: Contact = Contact()


_NO_SITE = SiteInfo("")


def _known(kind: str, names: Iterable[str]) -> str:
    listed = ", ".join(repr(n) for n in sorted(names))
    return f"({kind}: {listed})" if listed else f"(no {kind} are configured)"


class Router:
    """Routes, recipients and escalation times for alert groups, from a checked config.

    ``notifiers`` are the names of the configured notifiers. Building a router checks every
    name the config uses: the rotations, people and notifiers a step names, the people a
    rotation or override names, the notifiers of people's and site contacts' targets, and the
    sites' time zones. All problems are reported in one ValueError, each naming where it is
    (``route 'county-it', step 1: ...``).

    A site missing from ``sites`` (or the collector's own site ``""``) has no county, is never
    staffed and has no contact.
    """

    def __init__(
        self,
        config: RoutingConfig,
        sites: dict[str, SiteInfo],
        calendar: Calendar,
        notifiers: set[str],
    ) -> None:
        self.config = config
        self.calendar = calendar
        self._sites = dict(sites)
        self._routes = {r.name: r for r in config.routes}
        self._rotations = {r.name: r for r in config.rotations}
        self._people = {p.name: p for p in config.people}
        problems = self._check(notifiers)
        if problems:
            head = "routing config: " + (
                "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
            )
            raise ValueError("\n  ".join([head, *problems]))

    def _check(self, notifiers: set[str]) -> list[str]:
        problems: list[str] = []

        def targets(where: str, notify: list[Target]) -> None:
            for index, target in enumerate(notify):
                if target.notifier not in notifiers:
                    problems.append(
                        f"{where}: notify[{index}]: no notifier named {target.notifier!r} "
                        f"{_known('notifiers', notifiers)}"
                    )

        def person(where: str, name: str) -> None:
            if name not in self._people:
                problems.append(
                    f"{where}: no person named {name!r} {_known('people', self._people)}"
                )

        for p in self.config.people:
            targets(f"person {p.name!r}", p.notify)
        for rotation in self.config.rotations:
            for index, name in enumerate(rotation.people):
                person(f"rotation {rotation.name!r}: people[{index}]", name)
            for index, override in enumerate(rotation.overrides):
                person(f"rotation {rotation.name!r}: overrides[{index}]", override.person)
        for route in self.config.routes:
            for level, step in enumerate(route.steps):
                for entry in step.notify:
                    where = f"route {route.name!r}, step {level}: {entry!r}"
                    kind, name, _ = _recipient(entry)
                    if kind == "oncall" and name not in self._rotations:
                        problems.append(
                            f"{where}: no rotation named {name!r} "
                            f"{_known('rotations', self._rotations)}"
                        )
                    elif kind == "person":
                        person(where, name)
                    elif kind == "notifier" and name not in notifiers:
                        problems.append(
                            f"{where}: no notifier named {name!r} {_known('notifiers', notifiers)}"
                        )
        for site_id, site in sorted(self._sites.items()):
            try:
                time_zone(site.timezone)
            except ValueError as exc:
                problems.append(f"site {site_id!r}: timezone: {exc}")
            targets(f"site {site_id!r}: contact", site.contact.notify)
        return problems

    def route(self, name: str) -> Route | None:
        """The configured route named ``name`` (None when there is none, e.g. after a reload)."""
        return self._routes.get(name)

    def site(self, site: str) -> SiteInfo:
        """What is known of ``site`` (an empty :class:`SiteInfo` when it is not listed)."""
        return self._sites.get(site) or _NO_SITE._replace(id=site)

    def staffed(self, site: str, now: float) -> bool:
        """Whether someone is at ``site`` at ``now``, by its hours, time zone and the calendar."""
        info = self.site(site)
        return info.staffing.staffed(now, info.timezone, self.calendar)

    def routes_for(self, site: str, severity: str, rules: set[str], now: float) -> list[Route]:
        """The routes a group of ``site`` and ``severity`` with alerts of ``rules`` takes: the
        first matching route, and after it the next matching ones while each says
        ``continue``. Empty when none matches (the caller says so in its log)."""
        info = self.site(site)
        staffed: bool | None = None
        taken: list[Route] = []
        for route in self.config.routes:
            m = route.match
            if (
                (m.sites and site not in m.sites)
                or (m.counties and info.county not in m.counties)
                or (m.severities and severity not in m.severities)
                or (m.rules and not rules.intersection(m.rules))
            ):
                continue
            if m.staffed is not None:
                if staffed is None:
                    staffed = info.staffing.staffed(now, info.timezone, self.calendar)
                if m.staffed != staffed:
                    continue
            taken.append(route)
            if not route.continue_:
                break
        return taken

    def recipients(
        self, route: Route, level: int, site: str, now: float
    ) -> list[tuple[Target, str]]:
        """``(target, audience)`` for each recipient of ``route``'s step ``level``, in order
        and without repeats. ``site_contact`` gives the site's contact targets with audience
        ``contact`` (nothing when the site has none); everything else is audience ``it``."""
        if not 0 <= level < len(route.steps):
            raise ValueError(f"route {route.name!r} has no step {level}")
        found: list[tuple[Target, str]] = []
        for entry in route.steps[level].notify:
            kind, name, to = _recipient(entry)
            if kind == SITE_CONTACT:
                found += [(t, AUDIENCE_CONTACT) for t in self.site(site).contact.notify]
            elif kind == "notifier":
                found.append((Target(notifier=name, to=to), AUDIENCE_IT))
            else:
                if kind == "oncall":
                    rotation = self._rotations.get(name)
                    if rotation is None:
                        raise ValueError(f"route {route.name!r}: no rotation named {name!r}")
                    name = rotation.on_call(now)
                person = self._people.get(name)
                if person is None:
                    raise ValueError(f"route {route.name!r}: no person named {name!r}")
                found += [(t, AUDIENCE_IT) for t in person.notify]
        unique: list[tuple[Target, str]] = []
        seen: set[tuple[str, str, str]] = set()
        for target, audience in found:
            key = (target.notifier, target.to, audience)
            if key not in seen:
                seen.add(key)
                unique.append((target, audience))
        return unique

    def next_escalation(self, route: Route, level: int, fired_at: float) -> float | None:
        """When step ``level + 1`` is due for a group that fired at ``fired_at`` and was last
        notified at ``level`` (-1: not yet, so step 0 is due at ``fired_at``); None after the
        last step."""
        if level < -1:
            raise ValueError(f"route {route.name!r}: level {level} is below -1")
        following = level + 1
        if following >= len(route.steps):
            return None
        return fired_at + route.steps[following].after_minutes * 60
