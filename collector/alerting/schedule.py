"""Calendars, staffed hours and on-call rotations: who is at work, and who is on call, when.

- :class:`Calendar`: which days are workdays. Monday to Friday, except public holidays; and
  Saturdays or Sundays that the State Council's holiday notice makes working days (调休).
  :func:`load_calendar` reads the YAML file the county maintains; :func:`parse_calendar` checks
  what was read.
- :class:`Staffing` / :class:`Hours`: when someone is at a site (a township office is staffed
  on workdays 08:30-12:00 and 14:30-17:30, say), in the site's own time zone; hours may run
  past midnight.
- :class:`Rotation`: daily or weekly on-call shifts handed over at a local time, with
  :class:`Override` intervals that win over the rotation (a swap, a sick day).
- :class:`Person` / :class:`Target`: who can be paged, and through which notifier.

Pure: every question takes ``now`` (seconds since the epoch) and nothing reads a clock. Local
times go through :mod:`zoneinfo`, so daylight saving is handled where a zone has it. The only
I/O is :func:`load_calendar` reading its file. Nothing here knows about sites, routes or the
inventory (see :mod:`collector.alerting.routing`), nor checks that a person named in a
rotation exists (the router does, as it holds the people).
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import msgspec
import yaml

__all__ = [
    "DAY_NAMES",
    "NAME_PATTERN",
    "Calendar",
    "Hours",
    "Name",
    "Override",
    "Person",
    "Rotation",
    "Staffing",
    "Target",
    "load_calendar",
    "parse_calendar",
    "time_zone",
]

NAME_PATTERN = r"^[^:\s](?:[^:]*[^:\s])?$"
"""People, rotations and notifiers: any text (Chinese included) without ``:`` (recipients are
written ``person:<name>``) and without spaces at either end."""
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NAME_PATTERN)]

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

# A time of day is a "HH:MM" string. The int member is only there to catch YAML 1.1, which
# reads an unquoted 17:00 as the base-60 number 1020: __post_init__ says to quote it.
TimeOfDay = str | int

_HHMM = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DAY = 86400
_MAX_RANGE_DAYS = 366


def time_zone(name: str) -> ZoneInfo:
    """The :class:`ZoneInfo` for an IANA name; ValueError naming it when there is none."""
    try:
        return ZoneInfo(name)
    except (ValueError, LookupError, OSError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as 'Asia/Shanghai')"
        ) from None


def _clock(value: TimeOfDay, what: str, *, end_of_day: bool = False) -> int:
    """Seconds after midnight for "HH:MM" (and "24:00" when ``end_of_day``)."""
    if isinstance(value, int):
        hint = ""
        if 0 <= value <= 24 * 60:
            hours, minutes = divmod(value, 60)
            hint = (
                f" (YAML reads an unquoted {hours}:{minutes:02d} as the number {value});"
                f' write it in quotes: "{hours:02d}:{minutes:02d}"'
            )
        raise ValueError(f"{what}: {value} is a number, not a time of day HH:MM{hint}")
    if end_of_day and value == "24:00":
        return _DAY
    match = _HHMM.match(value)
    if match is None:
        allowed = "00:00 to 24:00" if end_of_day else "00:00 to 23:59"
        raise ValueError(f"{what}: {value!r} is not a time of day HH:MM ({allowed})")
    return int(match.group(1)) * 3600 + int(match.group(2)) * 60


def _seconds_of_day(local: dt.datetime) -> float:
    return local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6


# --------------------------------------------------------------------------------------------
# Calendar


class Calendar(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Public holidays and make-up working days (调休) on top of a Monday-Friday week."""

    holidays: list[dt.date] = msgspec.field(default_factory=list)
    workdays: list[dt.date] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        # Sorted and unique, so that is_workday can bisect.
        self.holidays = sorted(set(self.holidays))
        self.workdays = sorted(set(self.workdays))
        for day in self.workdays:
            if day.weekday() < 5:
                raise ValueError(
                    f"workdays: {day.isoformat()} is a {day.strftime('%A')}, a workday anyway; "
                    "make-up workdays are Saturdays or Sundays"
                )
        both = sorted(set(self.holidays) & set(self.workdays))
        if both:
            raise ValueError(f"{both[0].isoformat()} is both a holiday and a make-up workday")

    def is_workday(self, day: dt.date) -> bool:
        """Monday to Friday unless a holiday; Saturday or Sunday only as a make-up workday."""
        if _contains(self.workdays, day):
            return True
        if _contains(self.holidays, day):
            return False
        return day.weekday() < 5


def _contains(days: list[dt.date], day: dt.date) -> bool:
    i = bisect.bisect_left(days, day)
    return i < len(days) and days[i] == day


def _calendar_entry(source: str, where: str, entry: Any) -> list[dt.date]:
    """The days one entry names: a date, or an inclusive range "YYYY-MM-DD..YYYY-MM-DD"."""
    expected = "a date YYYY-MM-DD or a range YYYY-MM-DD..YYYY-MM-DD"
    if isinstance(entry, dt.datetime):  # a datetime is a date too: refuse it first
        raise ValueError(f"{source}: {where}: {entry!s} has a time of day; expected {expected}")
    if isinstance(entry, dt.date):
        return [entry]
    if not isinstance(entry, str):
        raise ValueError(f"{source}: {where}: {entry!r} is not {expected}")
    first, dots, last = entry.strip().partition("..")
    texts = [first.strip(), last.strip()] if dots else [first.strip()]
    days: list[dt.date] = []
    for text in texts:
        try:
            if not _ISO_DATE.match(text):
                raise ValueError(text)
            days.append(dt.date.fromisoformat(text))
        except ValueError:
            raise ValueError(f"{source}: {where}: {entry!r} is not {expected}") from None
    if len(days) == 1:
        return days
    start, end = days
    if end < start:
        raise ValueError(f"{source}: {where}: {entry!r} ends before it starts")
    span = (end - start).days + 1
    if span > _MAX_RANGE_DAYS:
        raise ValueError(f"{source}: {where}: {entry!r} spans {span} days, more than a year")
    return [start + dt.timedelta(days=i) for i in range(span)]


def parse_calendar(data: Any, source: str = "<calendar>") -> Calendar:
    """A :class:`Calendar` from what a calendar file holds (parsed YAML).

    ``holidays`` and ``workdays`` are lists of dates ``2026-10-01`` or inclusive ranges
    ``2026-10-01..2026-10-07``; both may be left out, and an empty file is a calendar with no
    holidays. ValueError names ``source`` and the bad entry.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with 'holidays' and 'workdays'")
    unknown = sorted(str(k) for k in data if k not in ("holidays", "workdays"))
    if unknown:
        raise ValueError(
            f"{source}: unknown key {unknown[0]!r} (expected 'holidays' and 'workdays')"
        )
    found: dict[str, dict[dt.date, str]] = {}
    for key in ("holidays", "workdays"):
        entries = data.get(key) or []
        if not isinstance(entries, list):
            raise ValueError(f"{source}: {key}: expected a list of dates and date ranges")
        days: dict[dt.date, str] = {}
        for index, entry in enumerate(entries):
            where = f"{key}[{index}]"
            for day in _calendar_entry(source, where, entry):
                days.setdefault(day, f"{where} {entry!s}")
        found[key] = days
    for day, where in found["workdays"].items():
        if day.weekday() < 5:
            raise ValueError(
                f"{source}: {where}: {day.isoformat()} is a {day.strftime('%A')}, a workday "
                "anyway; make-up workdays are Saturdays or Sundays"
            )
        if day in found["holidays"]:
            raise ValueError(
                f"{source}: {where}: {day.isoformat()} is also a holiday ({found['holidays'][day]})"
            )
    return Calendar(holidays=list(found["holidays"]), workdays=list(found["workdays"]))


def load_calendar(path: str) -> Calendar:
    """Read a calendar YAML file (see :func:`parse_calendar`); ValueError names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the calendar: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return parse_calendar(data, path)


# --------------------------------------------------------------------------------------------
# Staffed hours


class Hours(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One stretch of staffed time, repeated on ``days``, in the site's local time.

    ``days``: ``workdays`` (per the calendar), ``weekends`` (the days the calendar says are
    not workdays: Saturdays, Sundays and holidays, less make-up workdays), ``daily``, or a list
    of ``mon`` .. ``sun`` (plain weekdays, the calendar is not consulted). ``start`` is
    inclusive and ``end`` exclusive; ``end`` may be ``24:00``. An ``end`` before ``start``
    runs past midnight, and the days are those on which the stretch starts (``22:00``-``06:00``
    on workdays covers Friday night to Saturday 06:00).
    """

    days: Literal["workdays", "weekends", "daily"] | list[Day] = "workdays"
    start: TimeOfDay = "09:00"
    end: TimeOfDay = "17:00"

    def __post_init__(self) -> None:
        start = _clock(self.start, "start")
        end = _clock(self.end, "end", end_of_day=True)
        if start == end:
            raise ValueError(
                f'start and end are both {self.start!r}; for the whole day write "00:00" to "24:00"'
            )
        if isinstance(self.days, list) and not self.days:
            raise ValueError("days: an empty list is never; list at least one of mon .. sun")

    def _on(self, day: dt.date, calendar: Calendar) -> bool:
        if self.days == "daily":
            return True
        if self.days == "workdays":
            return calendar.is_workday(day)
        if self.days == "weekends":
            return not calendar.is_workday(day)
        return DAY_NAMES[day.weekday()] in self.days

    def covers(self, local: dt.datetime, calendar: Calendar) -> bool:
        """Whether ``local`` (an aware datetime in the site's zone) falls in these hours."""
        start = _clock(self.start, "start")
        end = _clock(self.end, "end", end_of_day=True)
        now = _seconds_of_day(local)
        day = local.date()
        if start < end:
            return start <= now < end and self._on(day, calendar)
        return (now >= start and self._on(day, calendar)) or (
            now < end and self._on(day - dt.timedelta(days=1), calendar)
        )


class Staffing(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """When someone is at a site. No hours at all: never staffed."""

    hours: list[Hours] = msgspec.field(default_factory=list)

    def staffed(self, now: float, tz: str, calendar: Calendar) -> bool:
        """Whether the site is staffed at ``now``, judged by the local time in ``tz``."""
        if not self.hours:
            return False
        local = dt.datetime.fromtimestamp(now, time_zone(tz))
        return any(h.covers(local, calendar) for h in self.hours)


# --------------------------------------------------------------------------------------------
# People and rotations


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One address on one notifier: a phone for SMS, a mail address, a robot mention. ``to``
    is empty for group robots and webhooks, which have their address in their config."""

    notifier: Name
    to: str = ""


class Person(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Someone who can be paged, and the targets that reach them (all are used)."""

    name: Name
    notify: list[Target]

    def __post_init__(self) -> None:
        if not self.notify:
            raise ValueError(
                f"person {self.name!r} has nothing in notify: nothing would reach them"
            )


class Override(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``person`` is on call from ``start`` (inclusive) to ``end`` (exclusive), whoever the
    rotation says. Times are ISO 8601 (``2026-10-01T09:00:00``, or with an offset); a time
    without an offset is in the rotation's time zone."""

    start: dt.datetime
    end: dt.datetime
    person: Name

    def interval(self, tz: ZoneInfo) -> tuple[float, float]:
        """``(start, end)`` as seconds since the epoch; naive times are taken in ``tz``."""
        start = self.start if self.start.tzinfo else self.start.replace(tzinfo=tz)
        end = self.end if self.end.tzinfo else self.end.replace(tzinfo=tz)
        return start.timestamp(), end.timestamp()


class Rotation(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An on-call rotation: ``people`` take turns, a shift each, in order, cycling.

    The first shift starts on ``start_date`` at ``handover`` (local time in ``timezone``) and
    goes to ``people[0]``; each shift lasts to the next day's (``daily``) or the next week's
    (``weekly``) handover, in wall-clock time, so a shift spanning a daylight-saving change is
    an hour shorter or longer. Before ``start_date`` the cycle runs backwards the same way.
    ``overrides`` win for their interval; when two cover the same moment, the later in the
    list wins.
    """

    name: Name
    people: list[Name]
    start_date: dt.date
    shift: Literal["daily", "weekly"] = "weekly"
    handover: TimeOfDay = "09:00"
    timezone: str = "Asia/Shanghai"
    overrides: list[Override] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.people:
            raise ValueError(f"rotation {self.name!r} has no people: list at least one name")
        _clock(self.handover, f"rotation {self.name!r}: handover")
        tz = time_zone(self.timezone)
        for index, override in enumerate(self.overrides):
            start, end = override.interval(tz)
            if not end > start:
                raise ValueError(
                    f"rotation {self.name!r}: overrides[{index}]: end {override.end.isoformat()} "
                    f"is not after start {override.start.isoformat()}"
                )

    def on_call(self, now: float) -> str:
        """The name of the person on call at ``now``: an override covering it, else the
        rotation's."""
        tz = time_zone(self.timezone)
        for override in reversed(self.overrides):
            start, end = override.interval(tz)
            if start <= now < end:
                return override.person
        local = dt.datetime.fromtimestamp(now, tz)
        days = (local.date() - self.start_date).days
        if _seconds_of_day(local) < _clock(self.handover, "handover"):
            days -= 1  # today's handover has not happened yet: yesterday's shift goes on
        length = 1 if self.shift == "daily" else 7
        return self.people[(days // length) % len(self.people)]
