"""The alert engine and the dispatcher with time passed in: pending -> firing -> resolved,
instant alerts, flapping, inhibition by the site alert, silences and maintenance, grouping,
escalation, repeats, acknowledgement and resolves."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from collector.alerting.dispatch import DispatchConfig, Dispatcher
from collector.alerting.engine import Engine, EngineConfig, Maintenance, Silence
from collector.alerting.model import Alert, Condition, Notification

T0 = 1_800_000_000.0
FOR = {"host_down": 120.0, "site_unreachable": 120.0, "disk_full": 300.0}


def for_seconds(rule: str) -> float:
    return FOR.get(rule, 0.0)


def down(host: str, site: str = "s1") -> Condition:
    return Condition("host_down", {"site": site, "host": host}, "critical")


def site_down(site: str = "s1") -> Condition:
    return Condition("site_unreachable", {"site": site}, "critical")


def brute(host: str = "h1") -> Condition:
    return Condition("ssh_bruteforce", {"site": "s1", "host": host}, "critical", instant=True)


def states(engine: Engine) -> dict[str, str]:
    return {f"{a.rule}/{a.host or a.site}": a.state for a in engine.alerts.values()}


# --- engine ---------------------------------------------------------------------------------


def test_pending_then_firing_then_resolved() -> None:
    engine = Engine(EngineConfig(resolve_after_seconds=0))
    assert engine.update([down("h1")], T0, for_seconds) == []
    assert states(engine) == {"host_down/h1": "pending"}
    assert engine.update([down("h1")], T0 + 119, for_seconds) == []
    (fired,) = engine.update([down("h1")], T0 + 120, for_seconds)
    assert fired.what == "fired" and fired.alert.fired_at == T0 + 120
    (resolved,) = engine.update([], T0 + 130, for_seconds)
    assert resolved.what == "resolved" and resolved.alert.state == "resolved"


def test_a_pending_alert_that_clears_leaves_no_trace() -> None:
    engine = Engine(EngineConfig())
    engine.update([down("h1")], T0, for_seconds)
    assert engine.update([], T0 + 60, for_seconds) == []
    assert engine.alerts == {}


def test_instant_alerts_fire_at_once_and_resolve_after_the_hold() -> None:
    engine = Engine(EngineConfig(instant_hold_seconds=600))
    (fired,) = engine.update([brute()], T0, for_seconds)
    assert fired.what == "fired"
    assert engine.update([], T0 + 300, for_seconds) == []
    assert engine.update([brute()], T0 + 400, for_seconds) == []  # still the same alert
    assert engine.update([], T0 + 900, for_seconds) == []  # 500 s after the last event
    (resolved,) = engine.update([], T0 + 1000, for_seconds)
    assert resolved.what == "resolved"


def test_a_short_return_does_not_resolve() -> None:
    engine = Engine(EngineConfig(resolve_after_seconds=180))
    engine.update([down("h1")], T0, for_seconds)
    engine.update([down("h1")], T0 + 120, for_seconds)
    assert engine.update([], T0 + 200, for_seconds) == []
    assert engine.update([], T0 + 299, for_seconds) == []  # clear for 179 s
    assert engine.update([down("h1")], T0 + 300, for_seconds) == []  # the same alert goes on
    (resolved,) = engine.update([], T0 + 490, for_seconds)
    assert resolved.what == "resolved"


@pytest.mark.parametrize("up_seconds", [120, 600])
def test_a_host_that_bounces_in_an_hour_is_one_alert(up_seconds: int) -> None:
    engine = Engine(EngineConfig(flap_window_seconds=3600, flap_threshold=2))
    changes = []
    t = T0
    for _ in range(3600 // (180 + up_seconds)):  # down for 3 minutes, then up
        for step in range(0, 180, 10):
            changes += engine.update([down("h1")], t + step, for_seconds)
        t += 180
        for step in range(0, up_seconds, 10):
            changes += engine.update([], t + step, for_seconds)
        t += up_seconds
    fired = [c for c in changes if c.what == "fired"]
    resolved = [c for c in changes if c.what == "resolved"]
    if up_seconds < 180:
        assert (len(fired), len(resolved)) == (1, 0)  # never clear long enough
    else:
        assert (len(fired), len(resolved)) == (2, 1)  # back once, then held as flapping
    assert len(engine.alerts) == 1
    # Quiet for the whole window: it resolves, once.
    later = [c for s in range(0, 3700, 100) for c in engine.update([], t + s, for_seconds)]
    assert [c.what for c in later] == ["resolved"]


def test_the_site_alert_inhibits_what_follows_from_it() -> None:
    engine = Engine(EngineConfig())
    conds = [down("h1"), down("h2"), site_down(), down("h9", site="s2")]
    engine.update(conds, T0, for_seconds)
    engine.annotate(T0)
    by = {f"{a.rule}/{a.host or a.site}": a.suppressed_by for a in engine.alerts.values()}
    site_key = next(a.key for a in engine.alerts.values() if a.rule == "site_unreachable")
    assert by == {
        "host_down/h1": site_key,  # already while the site alert is pending
        "host_down/h2": site_key,
        "site_unreachable/s1": "",
        "host_down/h9": "",
    }


def test_silences_and_maintenance() -> None:
    engine = Engine(EngineConfig())
    engine.update([down("h1"), down("h2"), down("h3", site="s2")], T0, for_seconds)
    silence = Silence.new(T0 + 3600, "replacing the disk", T0, host="h1")
    engine.silence(silence)
    window = Maintenance(
        site="s2", start="2027-02-15T08:00:00+08:00", end="2027-02-15T18:00:00+08:00"
    )
    begin, _end = window.window()
    engine.annotate(T0, [window])
    silenced = {a.host: a.silenced_by for a in engine.alerts.values()}
    assert silenced == {"h1": silence.id, "h2": "", "h3": ""}
    engine.annotate(begin + 60, [window])
    assert {a.host: a.silenced_by for a in engine.alerts.values()}["h3"] == "maintenance:s2"
    assert engine.silences == {}  # expired by then
    with pytest.raises(ValueError, match="name a site"):
        Silence.new(T0 + 60, "x", T0)
    with pytest.raises(ValueError, match="future"):
        Silence.new(T0 - 1, "x", T0, site="s1")
    with pytest.raises(ValueError, match="time zone"):
        Maintenance(site="s1", start="2027-01-15T08:00:00", end="2027-01-15T18:00:00")


# --- dispatcher -----------------------------------------------------------------------------


class Target(NamedTuple):
    notifier: str
    to: str = ""


class Step(NamedTuple):
    after_minutes: float
    notify: list[Target]


class Route(NamedTuple):
    name: str
    steps: list[Step]
    locale: str = "zh-CN"


class FakeRouter:
    def __init__(self, *routes: Route, contact: list[Target] | None = None) -> None:
        self.routes = {r.name: r for r in routes}
        self.contact = contact or []

    def routes_for(self, site: str, severity: str, rules: set[str], now: float) -> list[Any]:
        return list(self.routes.values())

    def recipients(self, route: Any, level: int, site: str, now: float) -> list[tuple[Any, str]]:
        if level >= len(route.steps):
            return []
        out = [(t, "it") for t in route.steps[level].notify]
        if level == 0:
            out += [(t, "contact") for t in self.contact]
        return out

    def next_escalation(self, route: Any, level: int, fired_at: float) -> float | None:
        if level + 1 >= len(route.steps):
            return None
        return fired_at + route.steps[level + 1].after_minutes * 60

    def route(self, name: str) -> Any | None:
        return self.routes.get(name)


ROUTE = Route(
    "county",
    [
        Step(0, [Target("wecom")]),
        Step(15, [Target("sms", "+8613800000001")]),
        Step(30, [Target("sms", "+8613800000002")]),
    ],
)


def make(**cfg: Any) -> tuple[Engine, Dispatcher]:
    engine = Engine(EngineConfig(resolve_after_seconds=0))
    router = FakeRouter(ROUTE, contact=[Target("sms", "+8613900000000")])
    dispatcher = Dispatcher(DispatchConfig(**cfg), router, lambda keys: f"/ack/{len(keys)}")
    return engine, dispatcher


def step(
    engine: Engine, dispatcher: Dispatcher, conds: list[Condition], now: float
) -> list[Notification]:
    engine.update(conds, now, for_seconds)
    engine.annotate(now)
    return dispatcher.plan(engine.alerts.values(), now)


def who(notes: list[Notification]) -> list[tuple[str, str, str, int]]:
    return sorted((n.notifier, n.to, n.status, len(n.alerts)) for n in notes)


def test_a_down_site_is_one_notification_and_one_resolve() -> None:
    engine, dispatcher = make(group_wait_seconds=30)
    conds = [site_down(), down("h1"), down("h2"), down("h3")]
    sent: list[Notification] = []
    for s in range(0, 400, 10):
        sent += step(engine, dispatcher, conds, T0 + s)
    assert who(sent) == [
        ("sms", "+8613900000000", "firing", 1),  # the site's contact, plain steps
        ("wecom", "", "firing", 1),
    ]
    assert {a.rule for n in sent for a in n.alerts} == {"site_unreachable"}
    assert [n.ack_url for n in sent if n.audience == "it"] == ["/ack/1"]
    assert [n.ack_url for n in sent if n.audience == "contact"] == [""]
    back = step(engine, dispatcher, [], T0 + 410)
    assert who(back) == [("sms", "+8613900000000", "resolved", 1), ("wecom", "", "resolved", 1)]
    assert step(engine, dispatcher, [], T0 + 420) == []


def test_alerts_of_one_site_and_severity_are_grouped() -> None:
    engine, dispatcher = make(group_wait_seconds=30)
    sent = step(engine, dispatcher, [brute("h1")], T0)
    assert sent == []  # waiting for the group
    sent = step(engine, dispatcher, [brute("h2")], T0 + 20)
    assert sent == []
    sent = step(engine, dispatcher, [], T0 + 30)
    assert who(sent) == [("sms", "+8613900000000", "firing", 2), ("wecom", "", "firing", 2)]


def test_unacknowledged_escalates_acknowledged_does_not() -> None:
    engine, dispatcher = make(group_wait_seconds=0, repeat_every_seconds=0)
    conds = [brute("h1")]
    sent = step(engine, dispatcher, conds, T0)
    assert who(sent)[1][0] == "wecom"
    assert step(engine, dispatcher, [], T0 + 14 * 60) == []
    sent = step(engine, dispatcher, [], T0 + 15 * 60)
    assert who(sent) == [("sms", "+8613800000001", "firing", 1)]
    engine.ack([next(iter(engine.alerts))], "zhang", T0 + 16 * 60)
    assert step(engine, dispatcher, [], T0 + 31 * 60) == []  # no third level

    engine2, dispatcher2 = make(group_wait_seconds=0, repeat_every_seconds=0)
    step(engine2, dispatcher2, conds, T0)
    levels = [n.to for s in range(0, 40 * 60, 60) for n in step(engine2, dispatcher2, [], T0 + s)]
    assert levels == ["+8613800000001", "+8613800000002"]


def test_unacknowledged_is_repeated() -> None:
    engine, dispatcher = make(group_wait_seconds=0, repeat_every_seconds=3600)
    only_first = FakeRouter(Route("one", [Step(0, [Target("wecom")])]))
    dispatcher.router = only_first
    step(engine, dispatcher, [brute()], T0)
    repeats = [n for s in range(60, 7300, 60) for n in step(engine, dispatcher, [brute()], T0 + s)]
    assert [n.notifier for n in repeats] == ["wecom", "wecom"]


def test_silenced_alerts_are_not_sent() -> None:
    engine, dispatcher = make(group_wait_seconds=0)
    engine.silence(Silence.new(T0 + 3600, "planned work", T0, site="s1"))
    assert step(engine, dispatcher, [brute()], T0) == []
    assert step(engine, dispatcher, [brute()], T0 + 1800) == []
    (alert,) = engine.alerts.values()
    assert alert.state == "firing" and not alert.notified_firing
    # The silence ends while the alert still fires: now it is told.
    sent = step(engine, dispatcher, [], T0 + 3700)
    assert who(sent) == [("sms", "+8613900000000", "firing", 1), ("wecom", "", "firing", 1)]


def test_state_survives_encoding() -> None:
    engine, dispatcher = make(group_wait_seconds=0)
    step(engine, dispatcher, [brute()], T0)
    import msgspec

    copy = [msgspec.json.decode(msgspec.json.encode(a), type=Alert) for a in engine.alerts.values()]
    restored = Engine(EngineConfig())
    restored.alerts = {a.key: a for a in copy}
    # The restarted collector does not tell anyone again.
    assert dispatcher.plan(restored.alerts.values(), T0 + 60) == []
