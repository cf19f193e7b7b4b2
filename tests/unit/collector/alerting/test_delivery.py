"""The alert store and the delivery worker: deliveries retried with backoff, given up on a
permanent error or after the give-up time, kept across a restart, counted."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from collector.alerting.delivery import DeliveryConfig, DeliveryWorker, backoff
from collector.alerting.engine import Silence
from collector.alerting.model import Alert, Notification
from collector.alerting.store import AlertStore

T0 = 1_800_000_000.0


def note(notifier: str = "hook", to: str = "") -> Notification:
    alert = Alert(
        key="k1", rule="host_down", labels={"site": "s1", "host": "h1"}, severity="critical",
        state="firing", started=T0, last_active=T0, fired_at=T0,
    )  # fmt: skip
    return Notification(notifier, to, "zh-CN", "it", [alert], "firing", "", "county", 0)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Flaky(Exception):
    retryable = True


class Refused(Exception):
    retryable = False


def worker(store: AlertStore, clock: Clock, send: object, **cfg: float) -> DeliveryWorker:
    return DeliveryWorker(store, threading.Lock(), send, DeliveryConfig(**cfg), clock)  # type: ignore[arg-type]


def test_backoff_doubles_and_is_capped() -> None:
    cfg = DeliveryConfig(first_retry_seconds=10, max_retry_seconds=600)
    assert [backoff(n, cfg, lambda: 0.5) for n in range(8)] == [
        10, 20, 40, 80, 160, 320, 600, 600,
    ]  # fmt: skip
    assert backoff(0, cfg, lambda: 0.0) == pytest.approx(8.0)
    assert backoff(0, cfg, lambda: 1.0) == pytest.approx(12.0)


def test_retried_until_it_goes_through_and_kept_across_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = AlertStore(tmp_path / "alerts.sqlite")
    store.save([], [], [note()], clock.now)
    sent: list[Notification] = []
    failing = True

    def send(n: Notification) -> None:
        if failing:
            raise Flaky("connection refused")
        sent.append(n)

    w = worker(store, clock, send, first_retry_seconds=10)
    assert w.run_once() == 1
    assert w.run_once() == 0  # not due yet
    store.close()

    # The collector restarts: the delivery is still owed.
    store = AlertStore(tmp_path / "alerts.sqlite")
    failing = False
    w = worker(store, clock, send, first_retry_seconds=10)
    clock.now += 13
    assert w.run_once() == 1
    assert [n.alerts[0].key for n in sent] == ["k1"]
    assert w.run_once() == 0
    (row,) = store.recent_deliveries()
    assert (row["delivery"], row["attempts"], row["last_error"]) == ("sent", 2, "")


def test_permanent_errors_and_old_deliveries_are_given_up(tmp_path: Path) -> None:
    clock = Clock()
    store = AlertStore(tmp_path / "alerts.sqlite")
    store.save([], [], [note("robot"), note("hook")], clock.now)

    def send(n: Notification) -> None:
        if n.notifier == "robot":
            raise Refused("errcode 310000: sign not match")
        raise Flaky("timed out")

    w = worker(store, clock, send, first_retry_seconds=10, give_up_after_seconds=60)
    w.run_once()
    assert w.counts == {("robot", "failed"): 1, ("hook", "retried"): 1}
    clock.now += 100
    w.run_once()
    assert w.counts[("hook", "failed")] == 1
    assert store.pending_count() == 0
    assert {r["notifier"]: r["delivery"] for r in store.recent_deliveries()} == {
        "robot": "failed",
        "hook": "failed",
    }


def test_alerts_and_silences_round_trip(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    alert = note().alerts[0]
    silence = Silence.new(T0 + 600, "new UPS", T0, site="s1")
    store.save([alert], [silence], [], T0, {"history": {"v": 1}})
    store.close()
    store = AlertStore(tmp_path / "alerts.sqlite")
    assert store.load_alerts() == [alert]
    assert store.load_silences() == [silence]
    assert store.load_meta("history") == {"v": 1}
    assert store.load_meta("missing") is None


def test_a_failing_save_stores_nothing(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    store.save([note().alerts[0]], [], [], T0)
    with pytest.raises(AttributeError):
        store.save([note().alerts[0]], [], [object()], T0)  # type: ignore[list-item]
    assert len(store.load_alerts()) == 1
    assert store.pending_count() == 0
