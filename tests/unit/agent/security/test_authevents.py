"""Tests for agent/security/authevents.py: failed-login aggregation, brute-force windows, the
other event kinds, state and restore. Times are passed in; nothing sleeps."""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import pytest

from agent.security.authevents import MAX_SOURCES, AuthEvents, BruteForceConfig
from agent.security.authlog import AuthRecord
from outpost.wire import Event

T0 = 1_732_700_000.0
NOW = T0 + 3600.0
A = "203.0.113.7"
B = "2001:db8::66"


def fail(
    source: str = A,
    user: str = "root",
    t: float | None = T0,
    kind: str = "failed_password",
    count: int = 1,
) -> AuthRecord:
    return AuthRecord(kind, t, user, source, count, {"method": "password", "port": "50412"})


def burst(n: int, source: str = A, start: float = T0, step: float = 0.01) -> list[AuthRecord]:
    return [fail(source, f"user{i % 3}", start + i * step) for i in range(n)]


def of_kind(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


def new(threshold: int = 10, window: float = 300, **kw: Any) -> AuthEvents:
    return AuthEvents(BruteForceConfig(threshold=threshold, window_seconds=window), **kw)


# --- aggregation --------------------------------------------------------------------------


def test_failed_logins_are_one_event_per_source_per_feed() -> None:
    auth = new()
    records = [
        fail(A, "root", T0),
        fail(B, "admin", T0 + 1, kind="invalid_user"),
        fail(A, "admin", T0 + 2, kind="invalid_user"),
        fail(A, "admin", T0 + 3),
        fail(B, "admin", T0 + 4),
        fail(A, "oracle", T0 + 5, kind="failed_publickey"),
    ]
    events = auth.feed(records, NOW)
    assert [e.kind for e in events] == ["ssh_login_failed", "ssh_login_failed"]
    first, second = events
    assert first == Event(
        "ssh_login_failed",
        "warning",
        round((T0 + 5) * 1000),
        attrs={"source": A, "count": "4", "users": "root,admin,oracle", "invalid_users": "1"},
    )
    assert second.attrs == {"source": B, "count": "2", "users": "admin", "invalid_users": "1"}
    assert auth.failures_total == 6


def test_message_repeated_counts_and_other_failures() -> None:
    auth = new()
    events = auth.feed(
        [fail(count=4), fail(kind="failed_other", t=T0 + 1), fail(kind="invalid_user", count=2)],
        NOW,
    )
    (event,) = events
    assert event.attrs["count"] == "7"
    assert event.attrs["invalid_users"] == "2"
    assert auth.failures_total == 7


def test_at_most_five_users_are_named() -> None:
    auth = new(threshold=100)
    (event,) = auth.feed([fail(user=f"u{i}", t=T0 + i) for i in range(8)], NOW)
    assert event.attrs["users"] == "u0,u1,u2,u3,u4 +3 more"


def test_long_user_names_are_cut() -> None:
    auth = new()
    (event,) = auth.feed([fail(user="x" * 1000)], NOW)
    assert event.attrs["users"] == "x" * 64


def test_each_feed_reports_only_its_own_failures() -> None:
    auth = new()
    assert auth.feed([fail(t=T0), fail(t=T0 + 1)], NOW)[0].attrs["count"] == "2"
    assert auth.feed([fail(t=T0 + 2)], NOW)[0].attrs["count"] == "1"
    assert auth.feed([], NOW) == []
    assert auth.failures_total == 3


def test_record_without_time_is_at_now() -> None:
    auth = new()
    (event,) = auth.feed([fail(t=None)], NOW)
    assert event.ts == round(NOW * 1000)


# --- brute force --------------------------------------------------------------------------


def test_ten_thousand_failures_are_one_bruteforce_and_no_failed_logins() -> None:
    auth = new()
    records = burst(10_000, A)  # 100 s, inside one window
    records.insert(5000, fail(B, "pi", T0 + 50))
    events = auth.feed(records, NOW)
    brute = of_kind(events, "ssh_bruteforce")
    assert len(brute) == 1
    assert brute[0].severity == "critical"
    assert brute[0].ts == round(records[9].ts * 1000)  # type: ignore[operator]
    assert brute[0].attrs == {
        "source": A,
        "count": "10000",
        "users": "user0,user1,user2",
        "window_seconds": "300",
        "threshold": "10",
    }
    failed = of_kind(events, "ssh_login_failed")
    assert [e.attrs["source"] for e in failed] == [B]
    assert auth.failures_total == 10_001


def test_the_window_stays_quiet_until_it_ends_then_a_new_one_opens() -> None:
    auth = new()
    assert len(of_kind(auth.feed(burst(50), NOW), "ssh_bruteforce")) == 1
    # Still inside the window (opened at T0): nothing at all.
    assert auth.feed(burst(500, start=T0 + 100, step=0.1), NOW) == []
    # After the window: the next failure opens a new window, which fires again.
    events = auth.feed(burst(12, start=T0 + 300), NOW)
    assert [e.kind for e in events] == ["ssh_bruteforce"]
    assert events[0].attrs["count"] == "12"


def test_below_threshold_after_a_window_is_a_failed_login_again() -> None:
    auth = new()
    auth.feed(burst(20), NOW)
    events = auth.feed(burst(3, start=T0 + 301), NOW)
    assert [(e.kind, e.attrs["count"]) for e in events] == [("ssh_login_failed", "3")]


def test_threshold_reached_across_feeds_counts_the_whole_window() -> None:
    auth = new()
    assert [e.kind for e in auth.feed(burst(6), NOW)] == ["ssh_login_failed"]
    events = auth.feed(burst(6, start=T0 + 10), NOW)
    assert [(e.kind, e.attrs["count"]) for e in events] == [("ssh_bruteforce", "12")]


def test_exactly_threshold_fires_and_one_less_does_not() -> None:
    auth = new(threshold=5)
    assert [e.kind for e in auth.feed(burst(4, source=A), NOW)] == ["ssh_login_failed"]
    assert [e.kind for e in auth.feed(burst(5, source=B), NOW)] == ["ssh_bruteforce"]


def test_repeated_message_can_cross_the_threshold_alone() -> None:
    auth = new()
    events = auth.feed([fail(count=25)], NOW)
    assert [(e.kind, e.attrs["count"]) for e in events] == [("ssh_bruteforce", "25")]


def test_one_feed_spanning_two_windows() -> None:
    auth = new()
    old = burst(3, start=T0)  # a first window that stays below the threshold
    records = old + burst(15, start=T0 + 400)  # a second one that fires
    events = auth.feed(records, NOW)
    assert [(e.kind, e.attrs["count"]) for e in events] == [
        ("ssh_bruteforce", "15"),
        ("ssh_login_failed", "3"),
    ]


def test_two_bursts_in_one_feed_are_two_bruteforce_events() -> None:
    auth = new()
    events = auth.feed(burst(20, start=T0) + burst(20, start=T0 + 1000), NOW)
    assert [(e.kind, e.attrs["count"]) for e in events] == [
        ("ssh_bruteforce", "20"),
        ("ssh_bruteforce", "20"),
    ]


def test_windows_follow_record_times_not_now() -> None:
    # Catching up on an old log over several cycles must not raise the alarm twice.
    auth = new()
    late = T0 + 86400
    assert len(auth.feed(burst(30, step=1), late)) == 1
    assert auth.feed(burst(30, start=T0 + 30, step=1), late + 60) == []


def test_a_clock_going_back_opens_a_new_window() -> None:
    auth = new()
    auth.feed(burst(20), NOW)
    events = auth.feed(burst(3, start=T0 - 3600), NOW)
    assert [(e.kind, e.attrs["count"]) for e in events] == [("ssh_login_failed", "3")]


def test_other_users_beyond_five_in_bruteforce() -> None:
    auth = new(threshold=8)
    records = [fail(user=f"u{i}", t=T0 + i) for i in range(8)]
    (event,) = auth.feed(records, NOW)
    assert event.attrs["users"] == "u0,u1,u2,u3,u4 +3 more"


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        BruteForceConfig(threshold=0)
    with pytest.raises(ValueError, match="window_seconds"):
        BruteForceConfig(window_seconds=0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"threshold": -1}, BruteForceConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"treshold": 5}, BruteForceConfig)
    assert msgspec.convert({"window_seconds": 60}, BruteForceConfig).window_seconds == 60


# --- bounded ------------------------------------------------------------------------------


def test_tracked_sources_are_bounded_oldest_window_first() -> None:
    auth = new(max_sources=3)
    auth.feed([fail(f"192.0.2.{i}", t=T0 + i) for i in range(1, 5)], NOW)
    sources = [w[0] for w in auth.state()["windows"]]
    assert sources == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_default_bound_is_ten_thousand_sources() -> None:
    auth = new()
    records = [fail(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", t=T0) for i in range(10_001)]
    events = auth.feed(records, T0)
    assert len(events) == 10_001
    windows = auth.state()["windows"]
    assert len(windows) == MAX_SOURCES
    assert windows[0][0] == "10.0.0.1"  # 10.0.0.0, the oldest, was dropped
    assert len(json.dumps(auth.state())) < 2_000_000


def test_a_reopened_window_moves_to_the_end() -> None:
    auth = new(max_sources=2)
    auth.feed([fail("192.0.2.1", t=T0), fail("192.0.2.2", t=T0 + 1)], T0)
    auth.feed([fail("192.0.2.1", t=T0 + 400)], T0)  # new window for .1
    auth.feed([fail("192.0.2.3", t=T0 + 401)], T0)
    assert [w[0] for w in auth.state()["windows"]] == ["192.0.2.1", "192.0.2.3"]


def test_ended_windows_are_forgotten() -> None:
    auth = new()
    auth.feed([*burst(20, source=A), fail(B, t=T0 + 300)], NOW)
    assert [w[0] for w in auth.state()["windows"]] == [B]  # A ended at T0 + 300
    auth.feed([fail("192.0.2.9", t=T0 + 600)], NOW)
    assert [w[0] for w in auth.state()["windows"]] == ["192.0.2.9"]


def test_windows_are_kept_while_now_is_behind_the_log() -> None:
    auth = new()
    auth.feed(burst(20), T0)
    auth.feed([fail(B, t=T0 + 1000)], T0 + 10)
    assert [w[0] for w in auth.state()["windows"]] == [A, B]


# --- the other events ---------------------------------------------------------------------


def r(kind: str, user: str = "", source: str = "", count: int = 1, **detail: str) -> AuthRecord:
    return AuthRecord(kind, T0, user, source, count, detail)


@pytest.mark.parametrize(
    ("record", "kind", "severity", "attrs"),
    [
        (
            r("accepted", "alice", A, method="publickey", port="22"),
            "ssh_login",
            "info",
            {"user": "alice", "source": A, "method": "publickey", "port": "22"},
        ),
        (
            r("accepted", "root", B, method="password", port="2222"),
            "root_login",
            "warning",
            {"via": "ssh", "source": B, "method": "password", "port": "2222"},
        ),
        (
            r("console_root_login", "root", tty="tty1"),
            "root_login",
            "warning",
            {"via": "console", "tty": "tty1"},
        ),
        (
            r("sudo", "alice", run_as="root", command="/usr/bin/apt", tty="pts/0"),
            "sudo",
            "info",
            {"user": "alice", "run_as": "root", "command": "/usr/bin/apt", "tty": "pts/0"},
        ),
        (
            r(
                "sudo_failed",
                "bob",
                reason="incorrect_password",
                attempts="3",
                run_as="root",
                command="/usr/bin/id",
                tty="pts/1",
            ),
            "sudo_failed",
            "warning",
            {
                "user": "bob",
                "reason": "incorrect_password",
                "run_as": "root",
                "command": "/usr/bin/id",
                "attempts": "3",
            },
        ),
        (
            r("su", "alice", target_user="root", tty="pts/0"),
            "su",
            "info",
            {"user": "alice", "target_user": "root", "tty": "pts/0"},
        ),
        (
            r("su_failed", "alice", target_user="root", tty="pts/0"),
            "su_failed",
            "warning",
            {"user": "alice", "target_user": "root", "tty": "pts/0"},
        ),
        (
            r("user_added", "bob", uid="1001", gid="1001", home="/home/bob", shell="/bin/sh"),
            "user_added",
            "warning",
            {
                "user": "bob",
                "uid": "1001",
                "gid": "1001",
                "home": "/home/bob",
                "shell": "/bin/sh",
            },
        ),
        (r("user_deleted", "bob"), "user_deleted", "warning", {"user": "bob"}),
        (
            r("group_added", group="dev", gid="1002"),
            "group_added",
            "info",
            {"group": "dev", "gid": "1002"},
        ),
        (r("group_deleted", group="dev"), "group_deleted", "info", {"group": "dev"}),
        (
            r("group_member_added", "bob", group="sudo"),
            "group_member_added",
            "warning",
            {"user": "bob", "group": "sudo"},
        ),
        (
            r("password_changed", "bob", via="passwd"),
            "password_changed",
            "warning",
            {"user": "bob", "via": "passwd"},
        ),
        (
            r("su", "alice", count=3, target_user="root", tty="pts/0"),
            "su",
            "info",
            {"user": "alice", "target_user": "root", "tty": "pts/0", "count": "3"},
        ),
    ],
)
def test_event_for_each_record_kind(
    record: AuthRecord, kind: str, severity: str, attrs: dict[str, str]
) -> None:
    (event,) = new().feed([record], NOW)
    assert event == Event(kind, severity, round(T0 * 1000), attrs=attrs)  # type: ignore[arg-type]


def test_unknown_record_kind_is_dropped() -> None:
    assert new().feed([r("something_new", "x")], NOW) == []


def test_events_keep_log_order_and_failures_come_last() -> None:
    auth = new()
    events = auth.feed(
        [
            r("sudo", "alice", command="/bin/ls"),
            fail(),
            r("su", "alice", target_user="root"),
        ],
        NOW,
    )
    assert [e.kind for e in events] == ["sudo", "su", "ssh_login_failed"]


def test_attrs_are_short_strings() -> None:
    (event,) = new().feed([r("sudo", "alice", command="/" + "x" * 5000)], NOW)
    assert len(event.attrs["command"]) == 256
    assert all(isinstance(v, str) and v for v in event.attrs.values())


# --- state and restore --------------------------------------------------------------------


def _round_trip(state: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(state))
    return loaded


def test_state_round_trip_through_json() -> None:
    auth = new()
    auth.feed(burst(20) + burst(3, source=B), NOW)
    copy = new()
    copy.restore(_round_trip(auth.state()))
    assert copy.state() == auth.state()
    assert copy.failures_total == 23
    nxt = burst(5, start=T0 + 50) + burst(9, source=B, start=T0 + 60)
    assert copy.feed(nxt, NOW) == auth.feed(nxt, NOW)
    assert copy.state() == auth.state()


def test_restore_of_an_older_state_gives_the_same_events_again() -> None:
    auth = new()
    first = burst(6)
    auth.feed(first, NOW)
    saved = _round_trip(auth.state())
    second = [*burst(8, start=T0 + 20), r("sudo", "alice", command="/bin/ls"), *burst(2, B)]
    events = auth.feed(second, NOW)
    assert [e.kind for e in events] == ["sudo", "ssh_bruteforce", "ssh_login_failed"]
    total = auth.failures_total
    # The write of those events failed: the agent goes back to what it last committed.
    auth.restore(saved)
    assert auth.failures_total == 6
    assert auth.feed(second, NOW) == events
    assert auth.failures_total == total


def test_restore_inside_a_fired_window_stays_quiet() -> None:
    auth = new()
    auth.feed(burst(30), NOW)
    saved = _round_trip(auth.state())
    other = new()
    other.restore(saved)
    assert other.feed(burst(30, start=T0 + 10), NOW) == []


def test_restore_empty_starts_fresh_quietly(caplog: pytest.LogCaptureFixture) -> None:
    auth = new()
    auth.feed(burst(30), NOW)
    with caplog.at_level(logging.WARNING):
        auth.restore({})
    assert caplog.records == []
    assert auth.failures_total == 0
    assert auth.state()["windows"] == []


GOOD = {"version": 1, "failures_total": 3, "clock": T0, "windows": [[A, T0, 3, False, [], 0]]}


@pytest.mark.parametrize(
    "data",
    [
        {"version": 1},
        {"garbage": True},
        {**GOOD, "version": 99},
        {**GOOD, "failures_total": -1},
        {**GOOD, "failures_total": "3"},
        {**GOOD, "clock": "yesterday"},
        {**GOOD, "windows": "none"},
        {**GOOD, "windows": [[A]]},
        {**GOOD, "windows": [[A, T0, -5, False, [], 0]]},
        {**GOOD, "windows": [[A, T0, 3, False, "root", 0]]},
        {**GOOD, "windows": [[A, float("nan"), 3, False, [], 0]]},
        {**GOOD, "clock": float("inf")},
        {k: v for k, v in GOOD.items() if k != "windows"},
    ],
)
def test_restore_garbage_logs_and_starts_fresh(
    data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    auth = new()
    auth.feed(burst(30), NOW)
    with caplog.at_level(logging.WARNING, logger="agent.security.authevents"):
        auth.restore(data)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert auth.failures_total == 0
    assert auth.state()["windows"] == []
    # and it works afterwards
    assert [e.kind for e in auth.feed(burst(3), NOW)] == ["ssh_login_failed"]


def test_restore_not_a_dict(caplog: pytest.LogCaptureFixture) -> None:
    auth = new()
    with caplog.at_level(logging.WARNING):
        auth.restore(["not", "a", "dict"])  # type: ignore[arg-type]
    assert len(caplog.records) == 1
    assert auth.failures_total == 0


def test_restore_good_state_and_bounds() -> None:
    auth = new(max_sources=2)
    windows = [[f"192.0.2.{i}", T0, 1, False, [f"u{j}" for j in range(9)], 0] for i in range(4)]
    auth.restore({**GOOD, "windows": windows, "extra": "ignored"})
    state = auth.state()
    assert [w[0] for w in state["windows"]] == ["192.0.2.2", "192.0.2.3"]
    assert state["windows"][0][4] == ["u0", "u1", "u2", "u3", "u4"]
    assert auth.failures_total == 3


def test_state_does_not_share_objects() -> None:
    auth = new()
    auth.feed(burst(3), NOW)
    state = auth.state()
    state["windows"][0][4].append("intruder")
    assert "intruder" not in auth.state()["windows"][0][4]
    auth.restore(state)
    state["windows"][0][4].append("later")
    assert "later" not in auth.state()["windows"][0][4]


def test_bruteforce_names_users_of_earlier_feeds_and_then_forgets_them() -> None:
    auth = new(window=90.5)
    auth.feed([fail(user="pi", t=T0)], NOW)
    (event,) = auth.feed([fail(user="admin", t=T0 + 1 + i) for i in range(9)], NOW)
    assert event.attrs["users"] == "pi,admin"
    assert event.attrs["window_seconds"] == "90.5"
    (window,) = auth.state()["windows"]
    assert window[3:] == [True, [], 0]  # fired; the names are no longer kept
