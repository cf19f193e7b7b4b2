"""The alert service without sockets: series and a clock handed in, notifications read from
its store. Escalation, acknowledgement taken back, routes of different lengths, a broker
outage that would make every host look down, unrouted alerts, and the config check."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.alerting.config import AlertingConfig
from collector.alerting.service import MIN_GAP_SECONDS, AlertService, check_config
from collector.inventory import Inventory

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def config(**extra: Any) -> AlertingConfig:
    data: dict[str, Any] = {
        "engine": {"resolve_after_seconds": 0},
        "dispatch": {"group_wait_seconds": 0, "repeat_every_seconds": 0},
        "rules": {"host_down": {"for_seconds": 0}},
        "notifiers": [
            {"type": "webhook", "name": "a", "url": "http://127.0.0.1:9/a"},
            {"type": "webhook", "name": "b", "url": "http://127.0.0.1:9/b"},
        ],
        "routing": {
            "routes": [
                {
                    "name": "long",
                    "continue": True,
                    "steps": [
                        {"notify": ["notifier:a"]},
                        {"after_minutes": 10, "notify": ["notifier:b"]},
                        {"after_minutes": 20, "notify": ["notifier:b:boss"]},
                    ],
                },
                {"name": "short", "steps": [{"notify": ["notifier:a:wecom"]}]},
            ]
        },
    }
    data.update(extra)
    return msgspec.convert(data, AlertingConfig)


def host(state: str, site: str = "s1", h: str = "h1") -> list[tuple[str, dict[str, str], float]]:
    return [
        ("outpost_host_state", {"site": site, "host": h, "state": s}, 1.0 if s == state else 0.0)
        for s in ("online", "lost", "stale", "shutdown", "never_reported", "unreachable")
    ]


class Fleet:
    def __init__(self) -> None:
        self.series: list[tuple[str, dict[str, str], float]] = host("online")

    def __call__(self) -> list[tuple[str, dict[str, str], float]]:
        return self.series


def make(tmp_path: Path, cfg: AlertingConfig | None = None) -> tuple[AlertService, Clock, Fleet]:
    clock, fleet = Clock(), Fleet()
    service = AlertService(cfg or config(), Inventory(), tmp_path, fleet, clock)
    return service, clock, fleet


def sent(service: AlertService) -> list[tuple[str, str, int]]:
    rows = service.store.recent_deliveries(1000)
    return sorted((r["notifier"], r["to"], r["level"]) for r in rows if r["status"] == "firing")


def test_escalation_across_routes_of_different_lengths(tmp_path: Path) -> None:
    service, clock, fleet = make(tmp_path)
    fleet.series = host("lost")
    service.evaluate()
    assert sent(service) == [("a", "", 0), ("a", "wecom", 0)]
    for minutes in range(1, 25):  # past the short route's only step: no failure
        clock.now = T0 + minutes * 60
        service.evaluate()
    assert sent(service) == [("a", "", 0), ("a", "wecom", 0), ("b", "", 1), ("b", "boss", 2)]
    assert service.evaluation_failures == 0


def test_an_acknowledgement_taken_back_escalates_again(tmp_path: Path) -> None:
    service, clock, fleet = make(tmp_path)
    fleet.series = host("lost")
    service.evaluate()
    (alert,) = service.alerts_json()
    assert service.ack([alert["key"][:8]], "zhang") == [alert["key"]]
    clock.now = T0 + 15 * 60
    service.evaluate()
    assert ("b", "", 1) not in sent(service)
    assert service.unack([alert["key"]]) == [alert["key"]]
    service.evaluate()  # level 1 was due at 10 minutes: it goes now
    assert ("b", "", 1) in sent(service)


def test_without_its_broker_the_collector_pages_nobody_about_hosts(tmp_path: Path) -> None:
    service, clock, fleet = make(tmp_path)
    fleet.series = [*host("stale"), ("outpost_collector_broker_connected", {}, 0.0)]
    for s in range(0, 120, 10):
        clock.now = T0 + s
        service.evaluate()
    alerts = {a["rule"]: a for a in service.alerts_json()}
    assert alerts["host_down"]["inhibited_by"] == alerts["collector_broker_down"]["key"]
    broker = alerts["collector_broker_down"]["key"]
    told = {key for r in service.store.recent_deliveries() for key in r["alerts"]}
    assert told == {broker}


def test_an_alert_no_route_takes_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(routing={"routes": [{"name": "elsewhere", "match": {"sites": ["s9"]},
                                      "steps": [{"notify": ["notifier:a"]}]}]})  # fmt: skip
    service, _clock, fleet = make(tmp_path, cfg)
    fleet.series = host("lost")
    with caplog.at_level(logging.WARNING):
        service.evaluate()
        service.evaluate()
    assert caplog.text.count("matched no route") == 1


def test_state_survives_a_restart(tmp_path: Path) -> None:
    service, clock, fleet = make(tmp_path)
    fleet.series = host("lost")
    service.evaluate()
    service.store.close()
    again, clock2, fleet2 = make(tmp_path)
    clock2.now, fleet2.series = clock.now + 30, fleet.series
    assert again.evaluate() == []  # nobody told twice
    assert [a["state"] for a in again.alerts_json()] == ["firing"]


def test_the_config_check_names_the_problem(tmp_path: Path) -> None:
    check_config(config(), Inventory())
    bad = config(routing={"routes": [{"name": "r", "steps": [{"notify": ["notifier:nope"]}]}]})
    with pytest.raises(ValueError, match="nope"):
        check_config(bad, Inventory())
    missing = config(api_token_file=str(tmp_path / "no-token"))
    with pytest.raises(ValueError, match="API token"):
        check_config(missing, Inventory())


def test_finished_deliveries_are_forgotten_after_a_week(tmp_path: Path) -> None:
    service, clock, fleet = make(tmp_path)
    fleet.series = host("lost")
    service.evaluate()
    for item in service.store.due(clock.now):
        service.store.finish(item.id, "sent")
    clock.now += 8 * 86400
    fleet.series = host("online")
    service.evaluate()
    assert all(r["created"] > T0 for r in service.store.recent_deliveries())


def _until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _running(tmp_path: Path, cfg: AlertingConfig) -> tuple[AlertService, Fleet]:
    fleet = Fleet()
    service = AlertService(cfg, Inventory(), tmp_path, fleet)  # the real clock: a real loop
    service.start()
    return service, fleet


def test_a_status_change_is_evaluated_at_once_and_for_seconds_ending_brings_its_own(
    tmp_path: Path,
) -> None:
    """Ticks are 300 s apart: a lost host still fires within a second or two, because the
    status wakes the loop and the rule's for_seconds running out brings another evaluation."""
    cfg = config(
        engine={"resolve_after_seconds": 0, "evaluate_every_seconds": 300},
        rules={"host_down": {"for_seconds": 1}},
    )
    service, fleet = _running(tmp_path, cfg)
    try:
        fleet.series = host("lost")
        service.wake(("s1", "h1"))  # as ingest does after a status message
        _until("the first evaluation", lambda: service.evaluations >= 1, timeout=5)
        assert [a["state"] for a in service.alerts_json()] == ["pending"]
        _until("host_down to fire", lambda: service.evaluations >= 2, timeout=5)
        assert sent(service) == [("a", "", 0), ("a", "wecom", 0)]
        assert service.evaluations == 2  # the wake, then the end of for_seconds; no tick
    finally:
        service.stop()


def test_a_storm_of_events_is_evaluated_at_a_bounded_rate(tmp_path: Path) -> None:
    cfg = config(engine={"resolve_after_seconds": 0, "evaluate_every_seconds": 300})
    service, _fleet = _running(tmp_path, cfg)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            service.wake()
            time.sleep(0.001)
        elapsed = time.monotonic() - started
        _until("the last evaluation", lambda: not service._kick.is_set(), timeout=5)
        # At most one evaluation per MIN_GAP_SECONDS (evaluations here take microseconds).
        assert 2 <= service.evaluations <= elapsed / MIN_GAP_SECONDS + 2
    finally:
        service.stop()
