"""Calendars (with the 2026 holiday notice), staffed hours, on-call rotations and overrides."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
import yaml

from collector.alerting.schedule import (
    Calendar,
    Hours,
    Override,
    Person,
    Rotation,
    Staffing,
    Target,
    load_calendar,
    parse_calendar,
    time_zone,
)
from outpost.config import ConfigError, validate

# The State Council's notice on the 2026 holidays (国办发明电, 2025-11-04), as a county would
# write it: ranges for the holidays, the make-up working weekend days (调休) listed one by one.
CALENDAR_2026 = """\
# 国务院办公厅关于2026年部分节假日安排的通知
holidays:
  - 2026-01-01..2026-01-03   # 元旦
  - 2026-02-15..2026-02-23   # 春节
  - 2026-04-04..2026-04-06   # 清明节
  - 2026-05-01..2026-05-05   # 劳动节
  - 2026-06-19..2026-06-21   # 端午节
  - 2026-09-25..2026-09-27   # 中秋节
  - "2026-10-01..2026-10-07" # 国庆节
workdays:
  - 2026-01-04
  - 2026-02-14
  - 2026-02-28
  - 2026-05-09
  - 2026-09-20
  - "2026-10-10"
"""


def at(text: str, tz: str = "Asia/Shanghai") -> float:
    """Seconds since the epoch for a local wall-clock time in ``tz``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def utc(text: str) -> float:
    return at(text, "UTC")


@pytest.fixture
def cal2026(tmp_path: Path) -> Calendar:
    path = tmp_path / "calendar-2026.yaml"
    path.write_text(CALENDAR_2026, encoding="utf-8")
    return load_calendar(str(path))


# --------------------------------------------------------------------------------------------
# Calendar


@pytest.mark.parametrize(
    ("day", "workday"),
    [
        ("2026-09-19", False),  # Saturday
        ("2026-09-20", True),  # Sunday, made a workday for National Day
        ("2026-09-24", True),  # Thursday
        ("2026-09-25", False),  # Friday, Mid-Autumn
        ("2026-09-28", True),  # Monday, an ordinary workday
        ("2026-09-30", True),  # Wednesday
        ("2026-10-01", False),  # Thursday, National Day
        ("2026-10-03", False),  # Saturday inside the holiday
        ("2026-10-05", False),  # Monday, still the holiday
        ("2026-10-07", False),  # Wednesday, the holiday's last day
        ("2026-10-08", True),  # Thursday, back to work
        ("2026-10-09", True),  # Friday
        ("2026-10-10", True),  # Saturday, made a workday
        ("2026-10-11", False),  # Sunday
        ("2026-10-12", True),  # Monday
    ],
)
def test_national_day_2026(cal2026: Calendar, day: str, workday: bool) -> None:
    assert cal2026.is_workday(dt.date.fromisoformat(day)) is workday


def test_calendar_2026_spring_festival(cal2026: Calendar) -> None:
    assert cal2026.is_workday(dt.date(2026, 2, 14))  # Saturday before the holiday
    assert not any(cal2026.is_workday(dt.date(2026, 2, d)) for d in range(15, 24))
    assert cal2026.is_workday(dt.date(2026, 2, 24))
    assert cal2026.is_workday(dt.date(2026, 2, 28))
    assert len(cal2026.holidays) == 3 + 9 + 3 + 5 + 3 + 3 + 7
    assert cal2026.workdays[0] == dt.date(2026, 1, 4)


def test_empty_calendar_is_monday_to_friday(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    cal = load_calendar(str(path))
    assert cal == Calendar()
    week = [cal.is_workday(dt.date(2026, 10, d)) for d in range(5, 12)]
    assert week == [True] * 5 + [False] * 2


def test_parse_calendar_dates_or_strings() -> None:
    cal = parse_calendar({"holidays": [dt.date(2026, 1, 1), "2026-01-02 .. 2026-01-03"]})
    assert cal.holidays == [dt.date(2026, 1, d) for d in (1, 2, 3)]


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("holidays: ['2026-13-01']", "holidays[0]: '2026-13-01'"),
        ("holidays: ['2026-10-01', '10/02/2026']", "holidays[1]: '10/02/2026'"),
        ("holidays: ['2026-10-07..2026-10-01']", "'2026-10-07..2026-10-01' ends before"),
        ("holidays: ['2026-01-01..2027-06-01']", "spans 517 days"),
        ("holidays: [2026-10-01 09:00:00]", "holidays[0]: 2026-10-01 09:00:00 has a time"),
        ("holidays: [20261001]", "holidays[0]: 20261001 is not a date"),
        ("holidays: 2026-10-01", "holidays: expected a list"),
        ("holiday: ['2026-10-01']", "unknown key 'holiday'"),
        ("- 2026-10-01", "expected a mapping"),
        ("holidays: [2026-10-01\n", "not valid YAML"),
        ("workdays: [2026-09-28]", "workdays[0] 2026-09-28: 2026-09-28 is a Monday"),
        (
            "holidays: [2026-10-01..2026-10-07]\nworkdays: [2026-10-03]",
            "workdays[0] 2026-10-03: 2026-10-03 is also a holiday (holidays[0] 2026-10-01..",
        ),
    ],
)
def test_load_calendar_names_file_and_entry(tmp_path: Path, text: str, entry: str) -> None:
    path = tmp_path / "county-calendar.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_calendar(str(path))
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert entry in message


def test_load_calendar_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match=r"nope\.yaml: cannot read the calendar"):
        load_calendar(str(path))


def test_calendar_struct_checks() -> None:
    with pytest.raises(ValueError, match="2026-09-28 is a Monday"):
        Calendar(workdays=[dt.date(2026, 9, 28)])
    with pytest.raises(ValueError, match="2026-10-10 is both a holiday and a make-up workday"):
        Calendar(holidays=[dt.date(2026, 10, 10)], workdays=[dt.date(2026, 10, 10)])
    # From JSON/YAML data too, and duplicates are harmless.
    cal = msgspec.convert({"holidays": ["2026-10-02", "2026-10-01", "2026-10-01"]}, Calendar)
    assert cal.holidays == [dt.date(2026, 10, 1), dt.date(2026, 10, 2)]


# --------------------------------------------------------------------------------------------
# Staffed hours

# A township office: mornings and afternoons on workdays, with a long lunch break.
TOWNSHIP = Staffing(
    hours=[
        Hours(days="workdays", start="08:30", end="12:00"),
        Hours(days="workdays", start="14:30", end="17:30"),
    ]
)


@pytest.mark.parametrize(
    ("local", "staffed"),
    [
        ("2026-10-09T08:29:59", False),
        ("2026-10-09T08:30:00", True),  # Friday
        ("2026-10-09T11:59:59", True),
        ("2026-10-09T12:00:00", False),  # end is exclusive
        ("2026-10-09T13:00:00", False),  # lunch
        ("2026-10-09T15:00:00", True),
        ("2026-10-09T17:30:00", False),
        ("2026-10-10T09:00:00", True),  # make-up Saturday
        ("2026-10-11T09:00:00", False),  # Sunday
        ("2026-10-05T09:00:00", False),  # Monday in the National Day holiday
        ("2026-09-20T15:00:00", True),  # make-up Sunday
    ],
)
def test_township_hours(cal2026: Calendar, local: str, staffed: bool) -> None:
    assert TOWNSHIP.staffed(at(local), "Asia/Shanghai", cal2026) is staffed


def test_hours_in_the_sites_own_time_zone(cal2026: Calendar) -> None:
    # Xinjiang offices keep local (Urumqi, UTC+6) hours: 10:00 in Beijing is 08:00 there.
    office = Staffing(hours=[Hours(days="workdays", start="09:30", end="19:30")])
    now = at("2026-10-09T10:00:00")
    assert office.staffed(now, "Asia/Shanghai", cal2026)
    assert not office.staffed(now, "Asia/Urumqi", cal2026)
    later = at("2026-10-09T20:30:00")  # 18:30 in Urumqi
    assert not office.staffed(later, "Asia/Shanghai", cal2026)
    assert office.staffed(later, "Asia/Urumqi", cal2026)
    # The day is the local one too: Friday 23:30 in Urumqi is already Saturday in Beijing.
    daily_late = Staffing(hours=[Hours(days=["fri"], start="23:00", end="24:00")])
    assert daily_late.staffed(at("2026-10-10T01:30:00"), "Asia/Urumqi", cal2026)
    assert not daily_late.staffed(at("2026-10-10T01:30:00"), "Asia/Shanghai", cal2026)


@pytest.mark.parametrize(
    ("local", "staffed"),
    [
        ("2026-10-09T21:59:59", False),
        ("2026-10-09T22:00:00", True),  # Friday night, started on a workday
        ("2026-10-10T05:59:59", True),  # Saturday morning, still Friday's night
        ("2026-10-10T06:00:00", False),
        ("2026-10-10T23:00:00", True),  # the make-up Saturday has its night too
        ("2026-10-11T03:00:00", True),
        ("2026-10-11T23:00:00", False),  # Sunday
        ("2026-10-12T01:00:00", False),  # Sunday's night: not a workday's
        ("2026-10-07T23:00:00", False),  # last holiday
        ("2026-10-08T03:00:00", False),
        ("2026-10-08T22:30:00", True),
    ],
)
def test_hours_past_midnight(cal2026: Calendar, local: str, staffed: bool) -> None:
    night = Staffing(hours=[Hours(days="workdays", start="22:00", end="06:00")])
    assert night.staffed(at(local), "Asia/Shanghai", cal2026) is staffed


def test_weekends_follow_the_calendar_day_names_do_not(cal2026: Calendar) -> None:
    rest = Staffing(hours=[Hours(days="weekends", start="10:00", end="16:00")])
    by_name = Staffing(hours=[Hours(days=["sat", "sun"], start="10:00", end="16:00")])
    for local, on_rest_days, on_sat_sun in [
        ("2026-10-05T12:00:00", True, False),  # holiday Monday
        ("2026-10-10T12:00:00", False, True),  # make-up Saturday
        ("2026-10-11T12:00:00", True, True),  # Sunday
        ("2026-10-12T12:00:00", False, False),  # Monday
    ]:
        assert rest.staffed(at(local), "Asia/Shanghai", cal2026) is on_rest_days, local
        assert by_name.staffed(at(local), "Asia/Shanghai", cal2026) is on_sat_sun, local


def test_whole_day_and_never(cal2026: Calendar) -> None:
    always = Staffing(hours=[Hours(days="daily", start="00:00", end="24:00")])
    for hour in range(24):
        assert always.staffed(at(f"2026-10-03T{hour:02d}:59:59"), "Asia/Shanghai", cal2026)
    never = Staffing()
    assert not never.staffed(at("2026-10-09T10:00:00"), "Asia/Shanghai", cal2026)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"start": 1020},
            "start: 1020 is a number, not a time of day HH:MM (YAML reads an "
            'unquoted 17:00 as the number 1020); write it in quotes: "17:00"',
        ),
        ({"end": "25:00"}, "end: '25:00' is not a time of day HH:MM (00:00 to 24:00)"),
        ({"start": "24:00", "end": "06:00"}, "start: '24:00' is not a time of day"),
        ({"start": "9am"}, "start: '9am' is not a time of day"),
        ({"start": "08:00", "end": "08:00"}, "start and end are both '08:00'"),
        ({"days": []}, "days: an empty list is never"),
        ({"days": "weekdays"}, "Invalid enum value 'weekdays'"),
        ({"days": ["monday"]}, "Invalid enum value 'monday'"),
        ({"from": "08:00"}, "unknown field `from`"),
    ],
)
def test_hours_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"hours": [data]}, Staffing)
    assert message in str(info.value)


def test_unquoted_yaml_time_through_the_config_loader() -> None:
    # What a user sees when the collector loads `end: 17:30` (YAML 1.1 base 60: 1050).
    data = yaml.safe_load("hours:\n  - days: workdays\n    start: '08:30'\n    end: 17:30\n")
    with pytest.raises(ConfigError) as info:
        validate(data, Staffing, "sites.yaml")
    text = str(info.value)
    assert "sites.yaml: hours[0]" in text
    assert 'write it in quotes: "17:30"' in text
    ok = yaml.safe_load("hours:\n  - {days: [mon, tue], start: '8:30', end: '24:00'}\n")
    assert validate(ok, Staffing, "sites.yaml").hours[0].days == ["mon", "tue"]


def test_time_zone_errors() -> None:
    assert time_zone("Europe/Berlin").key == "Europe/Berlin"
    for bad in ("Asia", "asia/shanghai", "", "../etc/passwd", "Beijing"):
        with pytest.raises(ValueError, match=f"unknown time zone {bad!r}"):
            time_zone(bad)


# --------------------------------------------------------------------------------------------
# Rotations


def weekly(**kw: object) -> Rotation:
    data: dict[str, object] = {
        "name": "county-it",
        "people": ["张伟", "李娜", "王芳"],
        "start_date": "2026-01-05",
        "shift": "weekly",
        "handover": "09:00",
    }
    data.update(kw)
    return msgspec.convert(data, Rotation)


def test_weekly_rotation_hands_over_at_local_time() -> None:
    r = weekly()
    assert r.on_call(at("2026-01-05T09:00:00")) == "张伟"
    assert r.on_call(at("2026-01-08T23:00:00")) == "张伟"
    assert r.on_call(at("2026-01-12T08:59:59")) == "张伟"
    assert r.on_call(at("2026-01-12T09:00:00")) == "李娜"
    assert r.on_call(at("2026-01-19T09:00:00")) == "王芳"
    assert r.on_call(at("2026-01-26T09:00:00")) == "张伟"  # cycles
    # Before the first shift the cycle runs backwards.
    assert r.on_call(at("2026-01-05T08:59:59")) == "王芳"
    assert r.on_call(at("2025-12-29T09:00:00")) == "王芳"
    assert r.on_call(at("2025-12-22T09:00:00")) == "李娜"


def test_weekly_rotation_forty_weeks_on() -> None:
    r = weekly()
    start = dt.date(2026, 1, 5)
    for week in range(60):
        monday = start + dt.timedelta(weeks=week)
        expected = r.people[week % 3]
        assert r.on_call(at(f"{monday.isoformat()}T09:00:00")) == expected
        assert r.on_call(at(f"{monday.isoformat()}T08:59:00")) == r.people[(week - 1) % 3]


def test_daily_rotation() -> None:
    r = weekly(shift="daily", handover="08:00", people=["a", "b"])
    assert r.on_call(at("2026-01-05T08:00:00")) == "a"
    assert r.on_call(at("2026-01-06T07:59:59")) == "a"
    assert r.on_call(at("2026-01-06T08:00:00")) == "b"
    assert r.on_call(at("2026-01-07T08:00:00")) == "a"
    assert r.on_call(at("2026-01-04T12:00:00")) == "b"


def test_handover_in_a_zone_without_dst_is_the_same_utc_time_all_year() -> None:
    r = weekly(shift="daily", people=["a", "b"])  # Asia/Shanghai, 09:00 = 01:00 UTC
    for day in ("2026-01-05", "2026-03-29", "2026-07-01", "2026-10-25", "2026-12-31"):
        before = r.on_call(utc(f"{day}T00:59:59"))
        after = r.on_call(utc(f"{day}T01:00:00"))
        assert before != after, day


def test_daily_rotation_across_dst_in_berlin() -> None:
    # Europe/Berlin goes CET -> CEST on 2026-03-29 and back on 2026-10-25; the handover
    # stays at 09:00 on the wall clock, so its UTC time moves.
    r = weekly(shift="daily", people=["a", "b"], start_date="2026-03-27", timezone="Europe/Berlin")
    assert r.on_call(utc("2026-03-28T07:59:59")) == "a"
    assert r.on_call(utc("2026-03-28T08:00:00")) == "b"  # 09:00 CET
    assert r.on_call(utc("2026-03-29T06:59:59")) == "b"
    assert r.on_call(utc("2026-03-29T07:00:00")) == "a"  # 09:00 CEST: a 23-hour shift
    assert r.on_call(utc("2026-03-30T07:00:00")) == "b"
    # Back to CET: 2026-10-25 09:00 CET is 08:00 UTC (a 25-hour shift from the 24th).
    b_on_24th = r.on_call(utc("2026-10-24T07:00:00"))
    assert r.on_call(utc("2026-10-25T07:59:59")) == b_on_24th
    assert r.on_call(utc("2026-10-25T08:00:00")) != b_on_24th


def test_handover_inside_the_spring_forward_gap() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: the shift changes when the clock jumps.
    r = weekly(
        shift="daily",
        people=["a", "b"],
        start_date="2026-03-27",
        handover="02:30",
        timezone="Europe/Berlin",
    )
    assert r.on_call(utc("2026-03-29T00:59:59")) == "b"  # 01:59:59 CET
    assert r.on_call(utc("2026-03-29T01:00:00")) == "a"  # 03:00 CEST


def test_overrides_win_for_their_interval() -> None:
    r = weekly(
        overrides=[
            # Naive times are in the rotation's zone: 李娜 covers the National Day holiday.
            {"start": "2026-10-01T00:00:00", "end": "2026-10-08T00:00:00", "person": "李娜"},
            # With an offset: 赵强 (not in the rotation) takes the afternoon of the 3rd.
            {"start": "2026-10-03T06:00:00Z", "end": "2026-10-03T18:00:00+08:00", "person": "赵强"},
        ]
    )
    # Without overrides: 王芳 from Monday 2026-09-28 09:00, 张伟 from 2026-10-05 09:00.
    assert r.on_call(at("2026-09-30T23:59:59")) == "王芳"
    assert r.on_call(at("2026-10-01T00:00:00")) == "李娜"
    assert r.on_call(at("2026-10-03T13:59:59")) == "李娜"
    assert r.on_call(at("2026-10-03T14:00:00")) == "赵强"  # the later override wins
    assert r.on_call(at("2026-10-03T18:00:00")) == "李娜"  # end is exclusive
    assert r.on_call(at("2026-10-07T23:59:59")) == "李娜"
    assert r.on_call(at("2026-10-08T00:00:00")) == "张伟"


def test_override_interval_from_yaml_datetimes() -> None:
    data = yaml.safe_load(
        "start: 2026-10-01 09:00:00\nend: 2026-10-02T09:00:00+08:00\nperson: 李娜\n"
    )
    o = msgspec.convert(data, Override)
    tz = ZoneInfo("Asia/Shanghai")
    assert o.interval(tz) == (at("2026-10-01T09:00:00"), at("2026-10-02T09:00:00"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"people": []}, "rotation 'county-it' has no people"),
        ({"timezone": "Beijing"}, "unknown time zone 'Beijing'"),
        ({"handover": 540}, "rotation 'county-it': handover: 540 is a number"),
        ({"shift": "monthly"}, "Invalid enum value 'monthly' - at `$.shift`"),
        ({"name": "oncall:it"}, "at `$.name`"),
        ({"people": ["a", " b"]}, "at `$.people[1]`"),
        (
            {
                "overrides": [
                    {"start": "2026-10-02T00:00:00", "end": "2026-10-01T00:00:00", "person": "a"}
                ]
            },
            "rotation 'county-it': overrides[0]: end 2026-10-01T00:00:00 is not after start",
        ),
        (
            {"overrides": [{"start": "2026-10-02", "end": "2026-10-03", "person": "a"}]},
            "Invalid RFC3339 encoded datetime - at `$.overrides[0].start`",
        ),
    ],
)
def test_rotation_errors(change: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        weekly(**change)
    assert message in str(info.value)


def test_rotation_without_people_built_directly() -> None:
    with pytest.raises(ValueError, match="rotation 'night' has no people"):
        Rotation(name="night", people=[], start_date=dt.date(2026, 1, 5))


def test_person_needs_targets() -> None:
    p = msgspec.convert(
        {"name": "张伟", "notify": [{"notifier": "sms", "to": "13800000001"}]}, Person
    )
    assert p.notify == [Target(notifier="sms", to="13800000001")]
    with pytest.raises(ValueError, match="person '李娜' has nothing in notify"):
        Person(name="李娜", notify=[])
    with pytest.raises(msgspec.ValidationError, match=r"at `\$.notify\[0\].notifier`"):
        msgspec.convert({"name": "x", "notify": [{"notifier": "sms:1"}]}, Person)
