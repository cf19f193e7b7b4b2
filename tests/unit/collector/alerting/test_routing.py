"""Routing: first match and continue, recipients and audiences, escalation times, and config
errors that name where they are."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
import yaml

from collector.alerting.routing import (
    Contact,
    Match,
    Route,
    Router,
    RoutingConfig,
    SiteInfo,
    Step,
    Target,
)
from collector.alerting.schedule import Calendar, Hours, Rotation, Staffing, parse_calendar
from outpost.config import ConfigError, validate

CONFIG = """\
calendar_file: /etc/outpost/calendar-2026.yaml
people:
  - name: 张伟
    notify:
      - {notifier: sms, to: "13800000001"}
      - {notifier: dingtalk-it, to: "13800000001"}
  - name: 李娜
    notify: [{notifier: sms, to: "13800000002"}]
  - name: Wang Fang
    notify: [{notifier: mail, to: wang.fang@example.cn}]
rotations:
  - name: county-it
    people: [张伟, 李娜]
    start_date: 2026-01-05
    shift: weekly
    handover: "09:00"
routes:
  - name: security
    match: {rules: [ssh_bruteforce, file_changed]}
    continue: true
    steps:
      - notify: ["notifier:wecom-security"]
  - name: staffed-critical
    match: {severities: [critical], staffed: true}
    steps:
      - notify: [site_contact, "oncall:county-it"]
      - after_minutes: 15
        notify: ["person:Wang Fang"]
      - after_minutes: 60
        notify: ["notifier:dingtalk-it", "oncall:county-it"]
  - name: after-hours-critical
    match: {severities: [critical], staffed: false}
    steps:
      - notify: ["oncall:county-it"]
      - after_minutes: 30
        notify: ["person:Wang Fang", "notifier:sms:13900000000", "person:张伟", "oncall:county-it"]
  - name: xinjiang
    match: {counties: [和田县]}
    locale: zh-CN
    steps:
      - notify: ["notifier:dingtalk-it"]
  - name: lab
    match: {sites: [lab]}
    locale: en
    steps:
      - notify: ["person:Wang Fang"]
  - name: default
    steps:
      - notify: ["notifier:dingtalk-it"]
"""

NOTIFIERS = {"sms", "dingtalk-it", "mail", "wecom-security"}

CALENDAR = parse_calendar(
    {"holidays": ["2026-10-01..2026-10-07"], "workdays": ["2026-09-20", "2026-10-10"]}
)

OFFICE = Staffing(
    hours=[
        Hours(days="workdays", start="08:30", end="12:00"),
        Hours(days="workdays", start="14:30", end="17:30"),
    ]
)
CLERK = Target(notifier="sms", to="13700000009")
SITES = {
    "xiaozhuang": SiteInfo(
        id="xiaozhuang",
        county="某县",
        timezone="Asia/Shanghai",
        staffing=OFFICE,
        contact=Contact(name="刘秀英", phone="13700000009", notify=[CLERK]),
    ),
    "hetian-office": SiteInfo(
        id="hetian-office",
        county="和田县",
        timezone="Asia/Urumqi",
        staffing=Staffing(hours=[Hours(days="workdays", start="09:30", end="19:30")]),
    ),
    "lab": SiteInfo(id="lab", county="某县", staffing=OFFICE),
}


def at(text: str, tz: str = "Asia/Shanghai") -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def load(text: str = CONFIG) -> RoutingConfig:
    return validate(yaml.safe_load(text), RoutingConfig, "routing.yaml")


def make_router(config: RoutingConfig | None = None, **kw: Any) -> Router:
    args: dict[str, Any] = {"sites": SITES, "calendar": CALENDAR, "notifiers": NOTIFIERS}
    args.update(kw)
    return Router(config or load(), **args)


def names(routes: list[Route]) -> list[str]:
    return [r.name for r in routes]


WORK = at("2026-10-09T10:00:00")  # Friday morning: the township office is staffed
NIGHT = at("2026-10-09T22:00:00")
HOLIDAY = at("2026-10-05T10:00:00")  # Monday in the National Day holiday


# --------------------------------------------------------------------------------------------
# Config


def test_config_loads_and_round_trips() -> None:
    config = load()
    assert config.calendar_file == "/etc/outpost/calendar-2026.yaml"
    assert [r.continue_ for r in config.routes][:2] == [True, False]
    assert config.routes[1].locale == "zh-CN" and config.routes[4].locale == "en"
    assert config.routes[-1].match.severities == []
    data = msgspec.to_builtins(config)
    assert data["routes"][0]["continue"] is True
    assert "continue" not in data["routes"][1]  # omit_defaults
    assert msgspec.convert(data, RoutingConfig) == config


# --------------------------------------------------------------------------------------------
# Matching


def test_first_match_by_severity_and_staffing() -> None:
    router = make_router()
    assert names(router.routes_for("xiaozhuang", "critical", {"host_down"}, WORK)) == [
        "staffed-critical"
    ]
    assert names(router.routes_for("xiaozhuang", "critical", {"host_down"}, NIGHT)) == [
        "after-hours-critical"
    ]
    assert names(router.routes_for("xiaozhuang", "critical", {"host_down"}, HOLIDAY)) == [
        "after-hours-critical"
    ]
    # The make-up Saturday is a workday, so the office is staffed.
    saturday = at("2026-10-10T10:00:00")
    assert names(router.routes_for("xiaozhuang", "critical", {"host_down"}, saturday)) == [
        "staffed-critical"
    ]
    assert names(router.routes_for("xiaozhuang", "warning", {"disk_full"}, WORK)) == ["default"]


def test_continue_takes_the_next_match_too() -> None:
    router = make_router()
    assert names(router.routes_for("xiaozhuang", "critical", {"ssh_bruteforce"}, WORK)) == [
        "security",
        "staffed-critical",
    ]
    mixed = {"host_down", "file_changed"}  # any of the group's rules will do
    assert names(router.routes_for("xiaozhuang", "warning", mixed, NIGHT)) == [
        "security",
        "default",
    ]


def test_continue_stops_at_the_first_route_without_it() -> None:
    config = load(
        CONFIG.replace(
            "    match: {severities: [critical], staffed: true}\n",
            "    match: {severities: [critical], staffed: true}\n    continue: true\n",
        )
    )
    router = make_router(config)
    got = router.routes_for("xiaozhuang", "critical", {"ssh_bruteforce"}, WORK)
    # staffed-critical continues; after-hours does not match; the next match is default,
    # which stops the walk.
    assert names(got) == ["security", "staffed-critical", "default"]


def test_counties_sites_and_time_zones() -> None:
    router = make_router()
    # Friday 20:00 in Beijing is 18:00 in Hetian (Urumqi time): its office is still open.
    friday_evening = at("2026-10-09T20:00:00")
    assert router.staffed("hetian-office", friday_evening)
    assert not router.staffed("xiaozhuang", friday_evening)
    assert names(router.routes_for("hetian-office", "critical", {"host_down"}, friday_evening)) == [
        "staffed-critical"
    ]
    assert names(router.routes_for("hetian-office", "warning", {"host_down"}, WORK)) == ["xinjiang"]
    assert names(router.routes_for("lab", "warning", {"uplink_loss"}, WORK)) == ["lab"]
    assert names(router.routes_for("xiaozhuang", "warning", {"uplink_loss"}, WORK)) == ["default"]


def test_route_by_name() -> None:
    router = make_router()
    assert router.route("security") is router.config.routes[0]
    assert router.route("gone") is None


def test_unknown_site_and_collector_wide_alerts() -> None:
    router = make_router()
    for site in ("", "not-in-inventory"):
        assert router.site(site) == SiteInfo(id=site)
        assert not router.staffed(site, WORK)
        assert names(router.routes_for(site, "critical", {"collector_losing"}, WORK)) == [
            "after-hours-critical"
        ]
        assert names(router.routes_for(site, "warning", {"collector_losing"}, WORK)) == ["default"]


def test_no_route_matches() -> None:
    route = Route(
        name="only-critical",
        match=Match(severities=["critical"]),
        steps=[Step(notify=["notifier:sms:13900000000"])],
    )
    router = Router(RoutingConfig(routes=[route]), SITES, CALENDAR, NOTIFIERS)
    assert router.routes_for("xiaozhuang", "warning", {"disk_full"}, WORK) == []
    assert names(router.routes_for("xiaozhuang", "critical", {"disk_full"}, WORK)) == [
        "only-critical"
    ]


# --------------------------------------------------------------------------------------------
# Recipients


def test_recipients_site_contact_and_oncall() -> None:
    router = make_router()
    route = load().routes[1]  # staffed-critical
    li = [(Target(notifier="sms", to="13800000002"), "it")]
    zhang = [
        (Target(notifier="sms", to="13800000001"), "it"),
        (Target(notifier="dingtalk-it", to="13800000001"), "it"),
    ]
    # From Monday 2026-10-05 09:00, week 39 of the rotation: 李娜 (people[39 % 2]).
    assert router.recipients(route, 0, "xiaozhuang", WORK) == [(CLERK, "contact"), *li]
    # A site without a contact: site_contact gives nothing, the rest still goes out.
    assert router.recipients(route, 0, "hetian-office", WORK) == li
    assert router.recipients(route, 0, "", WORK) == li
    # The next week it is 张伟.
    next_week = at("2026-10-12T09:00:00")
    assert router.recipients(route, 0, "hetian-office", next_week) == zhang
    assert router.recipients(route, 1, "xiaozhuang", WORK) == [
        (Target(notifier="mail", to="wang.fang@example.cn"), "it")
    ]
    assert router.recipients(route, 2, "xiaozhuang", WORK) == [
        (Target(notifier="dingtalk-it"), "it"),
        *li,
    ]


def test_recipients_without_repeats_and_notifier_addresses() -> None:
    router = make_router()
    route = load().routes[2]  # after-hours-critical
    # 张伟 is named and also on call (week 40): each target once, in first-named order.
    got = router.recipients(route, 1, "xiaozhuang", at("2026-10-12T22:00:00"))
    assert got == [
        (Target(notifier="mail", to="wang.fang@example.cn"), "it"),
        (Target(notifier="sms", to="13900000000"), "it"),
        (Target(notifier="sms", to="13800000001"), "it"),
        (Target(notifier="dingtalk-it", to="13800000001"), "it"),
    ]
    # The week before, 李娜 is on call and comes last.
    assert router.recipients(route, 1, "xiaozhuang", NIGHT)[-1] == (
        Target(notifier="sms", to="13800000002"),
        "it",
    )
    # An address may hold colons: only the first two split.
    step = Step(notify=["notifier:webhook:https://ops.example.cn:8443/hook"])
    config = load()
    config.routes.append(Route(name="extra", steps=[step]))
    router = make_router(config, notifiers={*NOTIFIERS, "webhook"})
    assert router.recipients(config.routes[-1], 0, "lab", WORK) == [
        (Target(notifier="webhook", to="https://ops.example.cn:8443/hook"), "it")
    ]


def test_same_target_for_contact_and_it_is_kept_twice() -> None:
    # The clerk also happens to be a person IT pages: two messages, one per audience.
    text = CONFIG.replace(
        '  - name: 李娜\n    notify: [{notifier: sms, to: "13800000002"}]',
        '  - name: 李娜\n    notify: [{notifier: sms, to: "13700000009"}]',
    ).replace(
        '- notify: [site_contact, "oncall:county-it"]', '- notify: [site_contact, "person:李娜"]'
    )
    router = make_router(load(text))
    route = router.config.routes[1]
    assert router.recipients(route, 0, "xiaozhuang", WORK) == [(CLERK, "contact"), (CLERK, "it")]


def test_recipients_level_out_of_range() -> None:
    router = make_router()
    route = router.config.routes[0]
    with pytest.raises(ValueError, match="route 'security' has no step 1"):
        router.recipients(route, 1, "xiaozhuang", WORK)
    with pytest.raises(ValueError, match="has no step -1"):
        router.recipients(route, -1, "xiaozhuang", WORK)


# --------------------------------------------------------------------------------------------
# Escalation


def test_next_escalation_counts_from_when_the_group_fired() -> None:
    router = make_router()
    route = router.config.routes[1]  # steps at 0, 15 and 60 minutes
    fired = at("2026-10-09T10:03:00")
    assert router.next_escalation(route, -1, fired) == fired  # step 0: at once
    assert router.next_escalation(route, 0, fired) == fired + 15 * 60
    assert router.next_escalation(route, 1, fired) == fired + 60 * 60  # not 15 + 60
    assert router.next_escalation(route, 2, fired) is None
    assert router.next_escalation(route, 7, fired) is None
    assert router.next_escalation(router.config.routes[0], 0, fired) is None  # one step only
    with pytest.raises(ValueError, match="level -2"):
        router.next_escalation(route, -2, fired)


def test_fractional_minutes() -> None:
    route = Route(
        name="fast",
        steps=[Step(notify=["notifier:sms:1"]), Step(notify=["notifier:sms:2"], after_minutes=0.5)],
    )
    router = Router(RoutingConfig(routes=[route]), {}, Calendar(), {"sms"})
    assert router.next_escalation(route, 0, 1000.0) == 1030.0


# --------------------------------------------------------------------------------------------
# Config errors


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '"oncall:county-it"]\n      - after_minutes: 15',
            '"oncall:county_it"]\n      - after_minutes: 15',
            "route 'staffed-critical', step 0: 'oncall:county_it': no rotation named "
            "'county_it' (rotations: 'county-it')",
        ),
        (
            'notify: ["person:Wang Fang", "notifier:sms',
            'notify: ["person:Wang Fan", "notifier:sms',
            "route 'after-hours-critical', step 1: 'person:Wang Fan': no person named "
            "'Wang Fan' (people: 'Wang Fang', '张伟', '李娜')",
        ),
        (
            '["notifier:wecom-security"]',
            '["notifier:wecom-sec"]',
            "route 'security', step 0: 'notifier:wecom-sec': no notifier named 'wecom-sec' "
            "(notifiers: 'dingtalk-it', 'mail', 'sms', 'wecom-security')",
        ),
        (
            "people: [张伟, 李娜]",
            "people: [张伟, 李四]",
            "rotation 'county-it': people[1]: no person named '李四'",
        ),
        (
            '    handover: "09:00"\n',
            '    handover: "09:00"\n    overrides:\n'
            "      - {start: 2026-10-01 00:00:00, end: 2026-10-08 00:00:00, person: 赵强}\n",
            "rotation 'county-it': overrides[0]: no person named '赵强'",
        ),
        (
            "notify: [{notifier: mail, to: wang.fang@example.cn}]",
            "notify: [{notifier: email, to: wang.fang@example.cn}]",
            "person 'Wang Fang': notify[0]: no notifier named 'email'",
        ),
    ],
)
def test_router_names_the_bad_reference(old: str, new: str, message: str) -> None:
    assert old in CONFIG
    config = load(CONFIG.replace(old, new))
    with pytest.raises(ValueError) as info:
        make_router(config)
    assert str(info.value).startswith("routing config: 1 problem\n  ")
    assert message in str(info.value)


def test_router_reports_every_problem_at_once() -> None:
    text = CONFIG.replace('["notifier:wecom-security"]', '["notifier:robot", "person:nobody"]')
    sites = {
        **SITES,
        "bad-tz": SiteInfo(id="bad-tz", timezone="Beijing"),
        "bad-contact": SiteInfo(
            id="bad-contact", contact=Contact(notify=[Target(notifier="wechat")])
        ),
    }
    with pytest.raises(ValueError) as info:
        make_router(load(text), sites=sites)
    lines = str(info.value).split("\n  ")
    assert lines[0] == "routing config: 4 problems"
    assert lines[1].startswith("route 'security', step 0: 'notifier:robot': no notifier named")
    assert lines[2].startswith("route 'security', step 0: 'person:nobody': no person named")
    assert lines[3] == "site 'bad-contact': contact: notify[0]: no notifier named 'wechat' " + (
        "(notifiers: 'dingtalk-it', 'mail', 'sms', 'wecom-security')"
    )
    assert lines[4].startswith("site 'bad-tz': timezone: unknown time zone 'Beijing'")


def test_router_with_nothing_configured() -> None:
    config = RoutingConfig(routes=[Route(name="r", steps=[Step(notify=["oncall:x"])])])
    with pytest.raises(ValueError, match=r"no rotation named 'x' \(no rotations are configured\)"):
        Router(config, {}, Calendar(), set())


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "after_minutes: 60",
            "after_minutes: 15",
            "route 'staffed-critical', step 2: after_minutes 15 must be more than step 1's 15 "
            "(both count from when the group fired)",
        ),
        (
            "after_minutes: 60",
            "after_minutes: 10",
            "route 'staffed-critical', step 2: after_minutes 10 must be more than step 1's 15",
        ),
        (
            '      - notify: ["oncall:county-it"]\n',
            '      - notify: ["oncall:county-it"]\n        after_minutes: 5\n',
            "route 'after-hours-critical', step 0: after_minutes must be 0",
        ),
        ("after_minutes: 30", "after_minutes: -30", "routes[2].steps[1].after_minutes"),
        (
            "[site_contact,",
            "[site-contact,",
            "routes[1].steps[0]: found a mapping, expected a valid value (notify[0]: "
            "'site-contact' is not a recipient; expected 'site_contact', 'oncall:<rotation>'",
        ),
        ('["person:Wang Fang"]', '["person:"]', "notify[0]: 'person:' is not a recipient"),
        ('["notifier:dingtalk-it"]', '["notifier:"]', "notify[0]: 'notifier:' is not a recipient"),
        ('["notifier:dingtalk-it"]', '["pager:7"]', "notify[0]: 'pager:7' is not a recipient"),
        ('["notifier:dingtalk-it"]', "[]", "notify is empty"),
        (
            '    steps:\n      - notify: ["notifier:wecom-security"]\n',
            "    steps: []\n",
            "route 'security' has no steps",
        ),
        ("continue: true", "continues: true", "routes[0].continues: found unknown key"),
        ("severities: [critical], staffed: true", "severities: [fatal]", "severities[0]"),
        ("locale: en", "locale: fr", "routes[4].locale"),
        ("  - name: lab\n", "  - name: default\n", "two routes are named 'default'"),
        ("  - name: 李娜\n", "  - name: 张伟\n", "two people are named '张伟'"),
        ("people: [张伟, 李娜]", "people: []", "rotation 'county-it' has no people"),
    ],
)
def test_config_errors(old: str, new: str, message: str) -> None:
    assert old in CONFIG
    with pytest.raises(ConfigError) as info:
        load(CONFIG.replace(old, new, 1))
    assert message in str(info.value)
    assert str(info.value).startswith("routing.yaml: ")


def test_struct_errors_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="route 'x' has no steps"):
        Route(name="x", steps=[])
    with pytest.raises(ValueError, match="after_minutes: nan is not a number"):
        Step(notify=["site_contact"], after_minutes=float("nan"))
    rotation = Rotation(name="a", people=["p"], start_date=dt.date(2026, 1, 5))
    with pytest.raises(ValueError, match="two rotations are named 'a'"):
        RoutingConfig(rotations=[rotation, rotation])
