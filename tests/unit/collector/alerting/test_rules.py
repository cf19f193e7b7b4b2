"""Tests for the alert rules: each built-in rule on crafted series and events (firing, and
quiet just short of it), user rules, config validation, the trend history, and evaluation
over a big fleet."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.alerting.engine import Engine, EngineConfig
from collector.alerting.model import Condition
from collector.alerting.rules import (
    BUILTIN_RULES,
    FOR_SECONDS,
    BuiltinRule,
    History,
    RuleContext,
    RulesConfig,
    Series,
    UserRule,
    check_user_rules,
    evaluate,
    for_seconds,
    series_read,
)
from collector.events import HostEvent

ROOT = Path(__file__).resolve().parents[4]

T0 = 1_700_000_000.0
GIB = 1 << 30

Sample = tuple[str, dict[str, str], float]


def s(name: str, value: float, **labels: str) -> Sample:
    return (name, labels, value)


def h(name: str, value: float, host: str = "h1", site: str = "s1", **labels: str) -> Sample:
    return (name, {"site": site, "host": host, **labels}, value)


_ids = itertools.count(1)


def ev(kind: str, host: str = "h1", site: str = "s1", message: str = "", **attrs: str) -> HostEvent:
    n = next(_ids)
    return HostEvent(
        id=n, site=site, host=host, kind=kind, severity="warning", ts=int(T0 * 1000),
        received=T0, agent_id="a1", seq=n, message=message, attrs=attrs,
    )  # fmt: skip


def ctx(
    samples: Sequence[Sample] = (),
    events: Sequence[HostEvent] = (),
    now: float = T0,
    history: History | None = None,
) -> RuleContext:
    return RuleContext(now, Series(samples), list(events), history or History())


def run(
    samples: Sequence[Sample] = (),
    events: Sequence[HostEvent] = (),
    config: RulesConfig | None = None,
    user: list[UserRule] | None = None,
    **kw: Any,
) -> list[Condition]:
    return evaluate(config or RulesConfig(), user or [], ctx(samples, events, **kw))


def only(conds: list[Condition], rule: str) -> list[Condition]:
    return [c for c in conds if c.rule == rule]


def rules_config(**overrides: dict[str, Any]) -> RulesConfig:
    return msgspec.convert(overrides, RulesConfig)


def fs(avail: float, size: float = 100 * GIB, mount: str = "/", host: str = "h1") -> list[Sample]:
    labels = {"mountpoint": mount, "device": "/dev/sda1", "fstype": "ext4"}
    return [
        h("outpost_filesystem_size_bytes", size, host, **labels),
        h("outpost_filesystem_avail_bytes", avail, host, **labels),
    ]


def state(st: str, host: str = "h1") -> list[Sample]:
    states = ("online", "lost", "shutdown", "stale", "unreachable", "never_reported")
    return [h("outpost_host_state", 1.0 if x == st else 0.0, host, state=x) for x in states]


# --- every built-in rule: fires, and stays quiet just short of it -------------------------

HOST = {"site": "s1", "host": "h1"}

# rule -> (firing samples, events), (quiet samples, events), labels, args it must carry
CASES: dict[str, tuple[Any, Any, dict[str, str], dict[str, str]]] = {
    "host_down": (
        ([*state("lost"), h("outpost_host_last_seen_timestamp_seconds", T0 - 600)], []),
        (state("online"), []),
        HOST,
        {"site": "s1", "host": "h1", "state": "lost", "silent_minutes": "10"},
    ),
    "host_shutdown": (
        ([*state("shutdown"), h("outpost_host_expected", 1)], []),
        ([*state("shutdown"), h("outpost_host_expected", 0)], []),
        HOST,
        {"state": "shutdown"},
    ),
    "host_never_reported": (
        (state("never_reported"), []),
        (state("online"), []),
        HOST,
        {"host": "h1"},
    ),
    "site_unreachable": (
        (
            [
                s("outpost_site_coverage", 1, site="s1", state="unreachable"),
                s("outpost_site_coverage", 0, site="s1", state="reachable"),
                s("outpost_site_hosts", 3, site="s1"),
            ],
            [],
        ),
        (
            [
                s("outpost_site_coverage", 0, site="s1", state="unreachable"),
                s("outpost_site_coverage", 1, site="s1", state="degraded"),
            ],
            [],
        ),
        {"site": "s1"},
        {"site": "s1", "hosts": "3"},
    ),
    "disk_full": (
        (fs(6.6 * GIB), []),
        (fs(10.01 * GIB), []),
        {**HOST, "mountpoint": "/"},
        {"mount": "/", "used_pct": "93.4", "free_pct": "6.6", "free_gb": "6.6", "size_gb": "100.0"},
    ),
    "memory_pressure": (
        (
            [
                h("outpost_memory_total_bytes", 8 * GIB),
                h("outpost_memory_available_bytes", 0.04 * 8 * GIB),
            ],
            [],
        ),
        (
            [
                h("outpost_memory_total_bytes", 8 * GIB),
                h("outpost_memory_available_bytes", 0.051 * 8 * GIB),
            ],
            [],
        ),
        HOST,
        {"available_pct": "4.0", "total_gb": "8.0"},
    ),
    "uplink_loss": (
        ([s("outpost_site_uplink_loss_ratio", 0.35, site="s1")], []),
        ([s("outpost_site_uplink_loss_ratio", 0.19, site="s1")], []),
        {"site": "s1"},
        {"loss_pct": "35.0"},
    ),
    "uplink_latency": (
        ([s("outpost_site_uplink_latency_seconds", 0.523, site="s1")], []),
        ([s("outpost_site_uplink_latency_seconds", 0.499, site="s1")], []),
        {"site": "s1"},
        {"latency_ms": "523"},
    ),
    "gear_interface_down": (
        (
            [
                h("outpost_network_up", 0, "sw1", interface="ge-0/1"),
                h("outpost_network_admin_up", 1, "sw1", interface="ge-0/1"),
            ],
            [],
        ),
        (
            [
                h("outpost_network_up", 0, "sw1", interface="ge-0/1"),
                h("outpost_network_admin_up", 0, "sw1", interface="ge-0/1"),
                h("outpost_network_up", 0, "srv", interface="eth0"),  # a server: no admin_up
            ],
            [],
        ),
        {"site": "s1", "host": "sw1", "interface": "ge-0/1"},
        {"interface": "ge-0/1", "host": "sw1"},
    ),
    "gear_rebooted": (
        ([], [ev("device_rebooted", "sw1", uptime_seconds="12")]),
        ([], [ev("reboot", "sw1")]),
        {"site": "s1", "host": "sw1"},
        {"uptime_seconds": "12", "events": "1"},
    ),
    "ssh_bruteforce": (
        ([], [ev("ssh_bruteforce", source="203.0.113.9", count="57", users="root")]),
        ([], [ev("ssh_login_failed", source="203.0.113.9", count="3")]),
        {**HOST, "source": "203.0.113.9"},
        {"source": "203.0.113.9", "count": "57", "users": "root"},
    ),
    "new_listening_port": (
        ([], [ev("listen_port_opened", proto="tcp", port="4444", process="nc", address="::")]),
        ([], [ev("listen_port_closed", proto="tcp", port="22", process="sshd")]),
        {**HOST, "proto": "tcp", "port": "4444"},
        {"port": "4444", "process": "nc", "proto": "tcp"},
    ),
    "file_changed": (
        ([], [ev("file_changed", path="/etc/shadow", change="content")]),
        ([], [ev("log_gap", path="/var/log/auth.log")]),
        {**HOST, "path": "/etc/shadow"},
        {"path": "/etc/shadow", "change": "content"},
    ),
    "ups_on_battery": (
        (
            [
                h("outpost_battery_power_plugged", 0),
                h("outpost_battery_percent", 80),
                h("outpost_battery_seconds_left", 1830),
            ],
            [],
        ),
        ([h("outpost_battery_power_plugged", 1), h("outpost_battery_percent", 80)], []),
        HOST,
        {"battery_pct": "80", "minutes_left": "30"},
    ),
    "ups_low_battery": (
        ([h("outpost_battery_power_plugged", 0), h("outpost_battery_percent", 20)], []),
        ([h("outpost_battery_power_plugged", 0), h("outpost_battery_percent", 20.5)], []),
        HOST,
        {"battery_pct": "20"},
    ),
    "clock_skew": (
        ([h("outpost_host_clock_skew_seconds", -135.2)], []),
        ([h("outpost_host_clock_skew_seconds", 119.9)], []),
        HOST,
        {"skew_seconds": "-135", "direction": "ahead"},
    ),
    "outbox_backlog": (
        ([h("outpost_agent_outbox_rows", 100), h("outpost_agent_outbox_bytes", 3 * 1024**2)], []),
        ([h("outpost_agent_outbox_rows", 99)], []),
        HOST,
        {"rows": "100", "outbox_mb": "3"},
    ),
    "collector_broker_down": (
        ([s("outpost_collector_broker_connected", 0)], []),
        ([s("outpost_collector_broker_connected", 1)], []),
        {"site": ""},
        {"site": ""},
    ),
}
INSTANT = {"gear_rebooted", "ssh_bruteforce", "new_listening_port", "file_changed"}


def test_builtin_names() -> None:
    names = """host_down host_shutdown host_never_reported site_unreachable disk_full
        disk_full_predicted memory_pressure uplink_loss uplink_latency gear_interface_down
        gear_rebooted ssh_bruteforce new_listening_port file_changed ups_on_battery
        ups_low_battery clock_skew outbox_backlog collector_losing collector_broker_down"""
    assert list(BUILTIN_RULES) == names.split()
    # the two history rules have their own tests
    assert set(CASES) == set(BUILTIN_RULES) - {"disk_full_predicted", "collector_losing"}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_builtin_rule_fires(rule: str) -> None:
    (samples, events), _, labels, args = CASES[rule]
    [cond] = only(run(samples, events), rule)
    assert cond.labels == labels
    assert cond.severity == RulesConfig().rule(rule).severity
    assert cond.instant == (rule in INSTANT)
    assert cond.args.items() >= args.items(), cond.args
    assert all(isinstance(v, str) for v in cond.args.values())
    assert cond.args["site"] == labels["site"]


@pytest.mark.parametrize("rule", sorted(CASES))
def test_builtin_rule_quiet_below_threshold(rule: str) -> None:
    _, (samples, events), _, _ = CASES[rule]
    assert only(run(samples, events), rule) == []


@pytest.mark.parametrize("rule", sorted(CASES))
def test_disabled_rule_gives_nothing(rule: str) -> None:
    (samples, events), _, _, _ = CASES[rule]
    config = rules_config(**{rule: {"enabled": False}})
    assert only(run(samples, events, config=config), rule) == []


def test_disk_full_value_and_threshold_override() -> None:
    [cond] = run(fs(6.6 * GIB))
    assert cond.value == pytest.approx(0.934)
    assert run(fs(6.6 * GIB), config=rules_config(disk_full={"threshold": 0.95})) == []
    # a file system of size 0 (or without its size) is not full
    assert run([*fs(0, size=0), fs(1)[1]]) == []


def test_disk_full_per_mount() -> None:
    conds = run(fs(1 * GIB, mount="/") + fs(50 * GIB, mount="/data") + fs(0.5 * GIB, mount="/var"))
    assert sorted(c.labels["mountpoint"] for c in conds) == ["/", "/var"]
    var = next(c for c in conds if c.labels["mountpoint"] == "/var")
    assert var.args["free_gb"] == "0.50"


def test_host_down_states() -> None:
    for st in ("lost", "stale", "unreachable"):
        [cond] = run(state(st))
        assert cond.rule == "host_down" and cond.args["state"] == st
    for st in ("online", "shutdown"):
        assert run(state(st)) == []


def test_clock_skew_from_jump_event_is_a_separate_instant_alert() -> None:
    conds = run(
        [h("outpost_host_clock_skew_seconds", 300)], [ev("clock_jump", jump_seconds="-3600")]
    )
    skew = next(c for c in conds if not c.instant)
    jump = next(c for c in conds if c.instant)
    assert skew.args["direction"] == "behind" and skew.value == 300
    assert jump.rule == "clock_skew"
    assert jump.labels == {**HOST, "event": "clock_jump"}
    assert jump.value == -3600 and jump.args["jump_seconds"] == "-3600"


def test_events_of_one_key_merge_into_the_newest() -> None:
    events = [
        ev("ssh_bruteforce", source="203.0.113.9", count="10"),
        ev("ssh_bruteforce", source="203.0.113.9", count="40"),
        ev("ssh_bruteforce", source="198.51.100.7", count="12"),
        ev("ssh_bruteforce", host="h2", source="203.0.113.9", count="11"),
    ]
    conds = run([], events)
    assert len(conds) == 3
    first = next(c for c in conds if c.labels == {**HOST, "source": "203.0.113.9"})
    assert first.args["count"] == "40" and first.args["events"] == "2" and first.value == 40


def test_ups_low_battery_needs_battery_power() -> None:
    conds = run([h("outpost_battery_power_plugged", 0), h("outpost_battery_percent", 5)])
    assert sorted(c.rule for c in conds) == ["ups_low_battery", "ups_on_battery"]
    assert run([h("outpost_battery_percent", 5)]) == []  # plugged unknown
    assert run([h("outpost_battery_power_plugged", 1), h("outpost_battery_percent", 5)]) == []


def test_severity_and_for_from_config() -> None:
    config = rules_config(host_down={"severity": "warning", "for_seconds": 30})
    [cond] = run(state("lost"), config=config)
    assert cond.severity == "warning"
    assert for_seconds(config, [], "host_down") == 30
    assert for_seconds(RulesConfig(), [], "host_down") == 120
    assert config.host_down.enabled  # the rest keeps its defaults


# --- trend and counter rules (History) ------------------------------------------------------


def feed(history: History, points: list[tuple[float, float]], mount: str = "/") -> None:
    for t, avail in points:
        history.add(t, Series(fs(avail, mount=mount)))


def test_disk_full_predicted() -> None:
    history = History()
    # 20 GiB free, losing 1 GiB every 5 minutes: empty in 100 min, well within a day
    feed(history, [(T0 + i * 300, (20 - i) * GIB) for i in range(7)])
    now = T0 + 6 * 300
    conds = run(fs(14 * GIB), history=history, now=now)
    [cond] = conds
    assert cond.rule == "disk_full_predicted"
    assert cond.labels == {**HOST, "mountpoint": "/"}
    assert cond.args["hours_left"] == "1.2"  # 14 GiB at 1 GiB / 5 min: 70 min
    assert cond.value == pytest.approx(70 / 60)
    # the same trend on a disk that is already full: disk_full only
    assert [c.rule for c in run(fs(5 * GIB), history=history, now=now)] == ["disk_full"]
    # ... unless disk_full is off
    config = rules_config(disk_full={"enabled": False})
    assert [c.rule for c in run(fs(5 * GIB), config=config, history=history, now=now)] == [
        "disk_full_predicted"
    ]
    # a shorter horizon than the time left: quiet
    config = rules_config(disk_full_predicted={"threshold": 3600})
    assert run(fs(14 * GIB), config=config, history=history, now=now) == []


def test_disk_full_predicted_needs_half_an_hour_of_trend() -> None:
    history = History()
    feed(history, [(T0, 60 * GIB), (T0 + 300, 50 * GIB)])
    assert run(fs(50 * GIB), history=history, now=T0 + 300) == []


def test_disk_full_predicted_quiet_on_a_growing_or_slow_disk() -> None:
    history = History()
    feed(history, [(T0 + i * 300, (20 + i) * GIB) for i in range(10)], mount="/")
    feed(history, [(T0 + i * 300, 20 * GIB - i * 1e6) for i in range(10)], mount="/data")
    samples = fs(29 * GIB, mount="/") + fs(20 * GIB, mount="/data")
    assert run(samples, history=history, now=T0 + 2700) == []


def lost(total: float) -> Series:
    return Series([s("outpost_collector_lost_messages_total", total)])


@pytest.mark.parametrize("add_first", [False, True])
def test_collector_losing(add_first: bool) -> None:
    """The caller may feed the history before or after evaluating: same answer."""
    history = History()
    totals = [3, 3, 5, 5]
    fired = []
    for i, total in enumerate(totals):
        now = T0 + 10 * i
        series = lost(total)
        if add_first:
            history.add(now, series)
        conds = evaluate(RulesConfig(), [], RuleContext(now, series, [], history))
        if not add_first:
            history.add(now, series)
        fired.append([(c.rule, c.value, c.args["count"], c.instant) for c in conds])
    assert fired == [[], [], [("collector_losing", 2, "2", True)], []]
    [cond] = evaluate(RulesConfig(), [], RuleContext(T0 + 40, lost(9), [], history))
    assert cond.labels == {"site": ""} and cond.args == {"site": "", "count": "4", "total": "9"}


def test_collector_losing_ignores_a_reset_and_a_first_look() -> None:
    history = History()
    assert run([s("outpost_collector_lost_messages_total", 7)], history=history) == []
    history.add(T0, lost(7))
    assert run([s("outpost_collector_lost_messages_total", 0)], history=history, now=T0 + 10) == []


def test_history_predicts_a_linear_series() -> None:
    history = History()
    labels = {
        "site": "s1",
        "host": "h1",
        "mountpoint": "/",
        "device": "/dev/sda1",
        "fstype": "ext4",
    }
    for i in range(12):
        history.add(T0 + 300 * i, Series([("outpost_filesystem_avail_bytes", labels, 1000 - i)]))
    now = T0 + 3300
    # 1 per 300 s: 288 fewer a day ahead; labels given in any order
    got = history.predict(
        "outpost_filesystem_avail_bytes", dict(reversed(labels.items())), 86400, now
    )
    assert got == pytest.approx(989 - 288)
    assert history.predict("outpost_filesystem_avail_bytes", {"site": "x"}, 86400, now) is None
    assert history.predict("outpost_load1", labels, 86400, now) is None


def test_history_none_with_too_little() -> None:
    history = History()
    labels = {"site": "s1"}
    history.add(T0, Series([("outpost_filesystem_avail_bytes", labels, 10)]))
    assert history.predict("outpost_filesystem_avail_bytes", labels, 60, T0) is None
    history.add(T0 + 1500, Series([("outpost_filesystem_avail_bytes", labels, 5)]))
    assert history.predict("outpost_filesystem_avail_bytes", labels, 60, T0 + 1500) is None
    history.add(T0 + 1800, Series([("outpost_filesystem_avail_bytes", labels, 4)]))
    assert history.predict("outpost_filesystem_avail_bytes", labels, 0, T0 + 1800) is not None


def test_history_bounds() -> None:
    history = History()
    name = "outpost_filesystem_avail_bytes"
    gone = {"site": "s1", "host": "gone"}
    for i in range(24 * 60):  # a day of evaluations every minute
        now = T0 + 60 * i
        samples = [(name, {"site": "s1", "host": "h1"}, float(i))]
        if i < 10:
            samples.append((name, gone, 1.0))
        history.add(now, Series(samples))
    saved = history.state()
    [(labels, points)] = saved["trends"][name]
    assert labels == {"site": "s1", "host": "h1"}  # the host gone for 6 h is forgotten
    times = [t for t, _ in points]
    assert all(b - a >= 300 for a, b in itertools.pairwise(times))  # one per 5 min
    assert times[-1] - times[0] <= 6 * 3600 and len(points) <= 6 * 12 + 2
    assert now - times[-1] < 300
    assert json.loads(json.dumps(saved)) == saved


def test_history_restore_round_trip() -> None:
    history = History()
    feed(history, [(T0 + i * 300, (20 - i) * GIB) for i in range(7)])
    history.add(T0 + 1800, lost(4))
    saved = json.loads(json.dumps(history.state()))
    again = History()
    again.restore(saved)
    assert again.state() == history.state()
    labels = fs(0)[1][1]
    now = T0 + 1800
    assert again.predict("outpost_filesystem_avail_bytes", labels, 3600, now) == pytest.approx(
        history.predict("outpost_filesystem_avail_bytes", labels, 3600, now) or math.nan
    )
    assert again.previous("outpost_collector_lost_messages_total", {}, now + 10) == 4
    # the sampling step goes on where it was: no point 1 min after the restored one
    again.add(now + 60, Series(fs(1)))
    assert len(again.state()["trends"]["outpost_filesystem_avail_bytes"][0][1]) == 7


@pytest.mark.parametrize(
    "garbage",
    [None, 7, "x", {}, {"version": 2}, {"version": 1, "trends": {"a": "b"}}, [1, 2]],
)
def test_history_restore_ignores_garbage(garbage: Any) -> None:
    history = History()
    feed(history, [(T0, 1.0)])
    before = history.state()
    history.restore(garbage)
    assert history.state() == before


def test_history_restore_keeps_bounds() -> None:
    history = History()
    labels = {"site": "s1"}
    points = [[T0 + i * 300, float(i)] for i in range(500)]
    history.restore(
        {
            "version": 1,
            "trends": {"outpost_filesystem_avail_bytes": [[labels, points]], "other": []},
        }
    )
    [(_, kept)] = history.state()["trends"]["outpost_filesystem_avail_bytes"]
    assert len(kept) == 6 * 12 + 2 and kept[-1] == [T0 + 499 * 300, 499.0]
    assert "other" not in history.state()["trends"]


def test_history_clock_going_back_starts_the_trend_afresh() -> None:
    history = History()
    feed(history, [(T0 + i * 300, float(100 - i)) for i in range(10)])
    feed(history, [(T0, 50.0)])
    [(_, points)] = history.state()["trends"]["outpost_filesystem_avail_bytes"]
    assert points == [[T0, 50.0]]


# --- user rules ---------------------------------------------------------------------------


def user(**kw: Any) -> UserRule:
    base: dict[str, Any] = {"name": "hot", "metric": "outpost_temperature_celsius", "op": ">"}
    base["threshold"] = 70
    base.update(kw)
    return msgspec.convert(base, UserRule)


def temps(*values: float) -> list[Sample]:
    return [h("outpost_temperature_celsius", v, chip="cpu", sensor=f"core{i}") for i, v in
            enumerate(values)]  # fmt: skip


@pytest.mark.parametrize(
    ("op", "fires"),
    [
        (">", [71]),
        (">=", [70, 71]),
        ("<", [69]),
        ("<=", [69, 70]),
        ("==", [70]),
        ("!=", [69, 71]),
    ],
)
def test_user_rule_ops(op: str, fires: list[float]) -> None:
    conds = run(temps(69, 70, 71, math.nan), user=[user(op=op)])
    assert sorted(c.value for c in conds if c.value is not None) == fires


def test_user_rule_condition() -> None:
    rule = user(
        severity="critical",
        summary="{host} sensor {sensor} at {value} °C ({value:.2f}){missing}",
        runbook="https://wiki/hot",
        for_seconds=60,
    )
    [cond] = run(temps(50, 81.25), user=[rule])
    assert cond.rule == "hot" and cond.severity == "critical" and not cond.instant
    assert cond.labels == {"site": "s1", "host": "h1", "chip": "cpu", "sensor": "core1"}
    assert cond.args["summary"] == "h1 sensor core1 at 81.2 °C (81.25)"
    assert cond.args["value"] == "81.2" and cond.args["threshold"] == "70"
    assert cond.args["runbook"] == "https://wiki/hot" and cond.args["sensor"] == "core1"
    assert for_seconds(RulesConfig(), [rule], "hot") == 60


def test_user_rule_default_summary_and_site_label() -> None:
    rule = user(metric="outpost_collector_hosts", op=">=", threshold=1000)
    [cond] = run([s("outpost_collector_hosts", 1200)], user=[rule])
    assert cond.labels == {"site": ""}
    assert cond.args["summary"] == "outpost_collector_hosts >= 1000: 1200"


def test_user_rule_matchers() -> None:
    samples = [
        h("outpost_probe_success", 0, "h1", target="gw", kind="icmp", role="gateway"),
        h("outpost_probe_success", 0, "h1", target="dc1", kind="tcp", role="county-dc"),
        h("outpost_probe_success", 0, "h2", target="dc2", kind="http", role="county-dc"),
        h("outpost_probe_success", 0, "h3", target="cam", kind="icmp", role="camera"),
        h("outpost_probe_success", 1, "h3", target="cam2", kind="icmp", role="camera"),
    ]

    def targets(matchers: dict[str, str]) -> list[str]:
        rule = user(metric="outpost_probe_success", op="==", threshold=0, matchers=matchers)
        return sorted(c.labels["target"] for c in run(samples, user=[rule]))

    assert targets({}) == ["cam", "dc1", "dc2", "gw"]
    assert targets({"role": "county-dc"}) == ["dc1", "dc2"]
    assert targets({"role": "~county-.*|gate.*"}) == ["dc1", "dc2", "gw"]
    assert targets({"role": "~county"}) == []  # a full match
    assert targets({"kind": "!icmp"}) == ["dc1", "dc2"]
    assert targets({"kind": "~(icmp|tcp)", "host": "!h3"}) == ["dc1", "gw"]
    assert targets({"zone": ""}) == ["cam", "dc1", "dc2", "gw"]  # a missing label is ""
    assert targets({"zone": "!"}) == []


def test_user_rules_beside_builtins() -> None:
    rule = user(name="outbox_big", metric="outpost_agent_outbox_rows", op=">", threshold=50)
    conds = run([h("outpost_agent_outbox_rows", 120)], user=[rule])
    assert sorted(c.rule for c in conds) == ["outbox_backlog", "outbox_big"]


# --- config validation ------------------------------------------------------------------------


def error(data: dict[str, Any], typ: Any = UserRule) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(data, typ)
    return str(info.value)


GOOD = {"name": "hot", "metric": "outpost_temperature_celsius", "op": ">", "threshold": 70}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"op": "=>"}, ["op", "'=>'"]),
        ({"matchers": {"role": "~(unclosed"}}, ["matchers.role", "regular expression"]),
        ({"matchers": {"bad-label": "x"}}, ["matchers", "bad-label"]),
        ({"name": "disk_full"}, ["name", "built-in"]),
        ({"name": "Hot Rule"}, ["name"]),
        ({"for_seconds": -1}, ["for_seconds"]),
        ({"severity": "page"}, ["severity", "'page'"]),
        ({"metric": "bad metric"}, ["metric"]),
        ({"threshold": math.inf}, ["threshold"]),
        ({"summary": "{value.__class__}"}, ["summary"]),
        ({"summary": "{host:.2f}"}, ["summary"]),
        ({"summary": "{0}"}, ["summary"]),
        ({"summary": "open {"}, ["summary"]),
        ({"unknown": 1}, ["unknown"]),
    ],
)
def test_user_rule_validation(change: dict[str, Any], words: list[str]) -> None:
    text = error({**GOOD, **change})
    for word in words:
        assert word in text


def test_user_rule_validation_on_construction() -> None:
    with pytest.raises(ValueError, match="for_seconds"):
        UserRule(name="x", metric="m", op=">", threshold=1, for_seconds=-5)
    with pytest.raises(ValueError, match="op"):
        UserRule(name="x", metric="m", op="~", threshold=1)


def test_duplicate_user_rules() -> None:
    a, b = user(), user(metric="outpost_load1")
    check_user_rules([a, user(name="other")])
    with pytest.raises(ValueError, match=r"rules\[1\].*'hot'"):
        check_user_rules([a, b])


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"host_down": {"for_seconds": -1}}, ["for_seconds", "host_down"]),
        ({"disk_full": {"severity": "urgent"}}, ["severity", "disk_full"]),
        ({"disk_full": {"threshold": 90}}, ["threshold", "disk_full"]),
        ({"ssh_bruteforce": {"threshold": 5}}, ["ssh_bruteforce.threshold"]),
        ({"host_down": {"enable": False}}, ["enable", "host_down"]),
        ({"no_such_rule": {}}, ["no_such_rule"]),
    ],
)
def test_builtin_config_validation(data: dict[str, Any], words: list[str]) -> None:
    text = error(data, RulesConfig)
    for word in words:
        assert word in text


def test_builtin_defaults() -> None:
    config = RulesConfig()
    assert {name: config.rule(name).for_seconds for name in BUILTIN_RULES} == FOR_SECONDS
    table = {
        name: (r.for_seconds, r.severity, r.threshold)
        for name in BUILTIN_RULES
        for r in [config.rule(name)]
    }
    assert table == {
        "host_down": (120, "critical", None),
        "host_shutdown": (1800, "warning", None),
        "host_never_reported": (600, "warning", None),
        "site_unreachable": (120, "critical", None),
        "disk_full": (300, "warning", 0.90),
        "disk_full_predicted": (1800, "warning", 86400),
        "memory_pressure": (600, "warning", 0.05),
        "uplink_loss": (300, "warning", 0.2),
        "uplink_latency": (300, "warning", 0.5),
        "gear_interface_down": (120, "warning", None),
        "gear_rebooted": (0, "warning", None),
        "ssh_bruteforce": (0, "critical", None),
        "new_listening_port": (0, "warning", None),
        "file_changed": (0, "warning", None),
        "ups_on_battery": (60, "warning", None),
        "ups_low_battery": (0, "critical", 20),
        "clock_skew": (300, "warning", 120),
        "outbox_backlog": (600, "warning", 100),
        "collector_losing": (0, "critical", 1),
        "collector_broker_down": (60, "critical", None),
    }
    assert all(isinstance(config.rule(n), BuiltinRule) for n in BUILTIN_RULES)
    # the defaults are not written out; a change is, and only it
    assert msgspec.json.encode(config) == b"{}"
    changed = rules_config(disk_full={"threshold": 0.95})
    assert msgspec.json.encode(changed) == b'{"disk_full":{"threshold":0.95}}'


def test_for_seconds_unknown_rule() -> None:
    with pytest.raises(KeyError):
        for_seconds(RulesConfig(), [user()], "nope")
    with pytest.raises(KeyError):
        RulesConfig().rule("rule")


def test_series_index() -> None:
    samples = [s("a", 1, x="1"), s("b", 2), s("a", 3, x="2")]
    series = Series(iter(samples))
    assert series.get("a") == [({"x": "1"}, 1), ({"x": "2"}, 3)]
    assert series.get("a") is series.get("a")
    assert series.samples("a") == [samples[0], samples[2]]
    assert series.get("c") == [] and series.samples("c") == []
    assert sorted(series.names()) == ["a", "b"] and len(series) == 3


def test_conditions_drive_the_engine() -> None:
    """The engine takes the conditions and the effective `for` as they are."""
    config = rules_config(host_down={"for_seconds": 60})
    engine = Engine(EngineConfig(resolve_after_seconds=0))

    def step(now: float, samples: list[Sample], events: Sequence[HostEvent] = ()) -> list[str]:
        conds = evaluate(config, [], ctx(samples, events, now=now))
        changes = engine.update(conds, now, lambda rule: for_seconds(config, [], rule))
        return [f"{c.alert.rule}:{c.what}" for c in changes]

    assert step(T0, state("lost")) == []
    assert step(T0 + 60, state("lost"), [ev("file_changed", path="/etc/passwd")]) == [
        "host_down:fired",
        "file_changed:fired",
    ]
    assert step(T0 + 70, state("online")) == ["host_down:resolved"]
    [alert] = engine.firing()
    assert alert.args["path"] == "/etc/passwd" and alert.instant


# --- a big fleet ----------------------------------------------------------------------------


def test_evaluate_big_fleet() -> None:
    """10,000 hosts with 50 series each: one pass by name, joins by dict (nothing timed)."""
    samples: list[Sample] = []
    for i in range(10_000):
        host, site = f"h{i}", f"s{i // 10}"
        add = samples.append
        fill = {"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4"}
        full = i % 1000 == 0
        add(h("outpost_filesystem_size_bytes", 100 * GIB, host, site, **fill))
        add(h("outpost_filesystem_avail_bytes", (5 if full else 50) * GIB, host, site, **fill))
        add(h("outpost_memory_total_bytes", 8 * GIB, host, site))
        add(h("outpost_memory_available_bytes", 4 * GIB, host, site))
        add(h("outpost_host_state", 1, host, site, state="online"))
        add(h("outpost_host_state", 0, host, site, state="lost"))
        add(h("outpost_agent_outbox_rows", 3, host, site))
        add(h("outpost_host_clock_skew_seconds", 0.2, host, site))
        add(h("outpost_battery_power_plugged", 1, host, site))
        for j in range(41):
            add(h("outpost_temperature_celsius", 40 + j % 5, host, site, sensor=f"t{j}"))
    fleet = ctx(samples)
    assert len(fleet.series) == 500_000
    quiet = user(name="quiet", threshold=44, matchers={"sensor": "~t(1|2)0"})  # 40 there
    hot = user(name="hot", threshold=43, matchers={"sensor": "~t(1|2)4"})  # 44 there
    conds = evaluate(RulesConfig(), [quiet, hot], fleet)
    assert len(only(conds, "disk_full")) == 10
    assert len(only(conds, "quiet")) == 0
    assert len(only(conds, "hot")) == 20_000
    assert len(conds) == 20_010


def test_the_series_an_evaluation_reads_are_every_series_the_rules_name() -> None:
    """The exporter gives the evaluation only the series in ``series_read``: a rule reading a
    name missing from BUILTIN_SERIES would see nothing, and never fire."""
    source = (ROOT / "collector" / "alerting" / "rules.py").read_text()
    body = (
        source.split("BUILTIN_SERIES: frozenset[str] = frozenset(")[0]
        + source.split("TREND_STEP = 300.0")[1]
    )
    named = set(re.findall(r'"(outpost_[a-z0-9_]+)"', body))
    assert named, "no series names found in the rules"
    assert named <= series_read([])
    user = UserRule(name="temp", metric="custom_temperature_celsius", op=">", threshold=70)
    assert "custom_temperature_celsius" in series_read([user])
