"""The collector's reload (CollectorService.apply) and its health for the watchdog, without a
broker: the service is built but not started."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.config import CollectorConfig
from collector.inventory import Inventory
from collector.service import STALL_SECONDS, CollectorService


def config(tmp_path: Path, hook: str = "/a", **changes: Any) -> CollectorConfig:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path),
        "alerting": {
            "notifiers": [{"type": "webhook", "name": "hook", "url": f"http://127.0.0.1:9{hook}"}],
            "routing": {"routes": [{"name": "all", "steps": [{"notify": ["notifier:hook"]}]}]},
        },
    }
    data.update(changes)
    return msgspec.convert(data, CollectorConfig)


def inventory(*hosts: str) -> Inventory:
    return msgspec.convert({"sites": [{"id": "s1", "hosts": list(hosts)}]}, Inventory)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[CollectorService]:
    made = CollectorService(config(tmp_path), inventory("pc1"))
    yield made
    assert made.alerts is not None
    made.alerts.store.close()
    made.store.close()


def test_inventory_stale_after_and_alerting_change_live(
    service: CollectorService, tmp_path: Path
) -> None:
    assert service.alerts is not None
    alerts, engine, delivery = service.alerts, service.alerts.engine, service.alerts.delivery
    new = config(tmp_path, "/b", stale_after_seconds=120)
    assert service.apply(new, inventory("pc1", "pc2")) == [
        "alerting.notifiers",
        "stale_after_seconds",
        "inventory (none)",
    ]
    assert service.config is new
    assert service.state.expected == {("s1", "pc1"), ("s1", "pc2")}
    assert service.state.stale_after == 120
    # The same service, engine (alerts, silences) and delivery queue; new notifiers and router.
    assert service.alerts is alerts and alerts.engine is engine and alerts.delivery is delivery
    assert alerts.config is new.alerting
    assert alerts.dispatcher.router is alerts.router
    assert alerts.router.route("all") is not None


@pytest.mark.parametrize(
    "change",
    [
        {"listen": "127.0.0.1:9999"},
        {"state_dir": "/elsewhere"},
        {"broker": {"url": "mqtt://10.0.0.1:1883"}},
        {"events": {"keep_per_host": 10}},
    ],
    ids=str,
)
def test_sockets_and_state_need_a_restart(
    service: CollectorService, tmp_path: Path, change: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    before = service.config
    with caplog.at_level(logging.ERROR):
        assert (
            service.apply(config(tmp_path, stale_after_seconds=300, **change), Inventory()) is None
        )
    assert service.config is before and service.state.stale_after == before.stale_after_seconds
    assert service.state.expected == {("s1", "pc1")}  # refused whole
    assert f"reload refused: {next(iter(change))} changed" in caplog.text


def test_an_alerting_config_that_cannot_work_is_refused(
    service: CollectorService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = config(tmp_path)
    bad.alerting.api_token_file = str(tmp_path / "missing-token")
    with caplog.at_level(logging.ERROR):
        assert service.apply(bad, inventory("pc1", "pc2")) is None
    assert "reload refused: alerting" in caplog.text and "missing-token" in caplog.text
    assert service.state.expected == {("s1", "pc1")}


def test_nothing_changed(service: CollectorService, tmp_path: Path) -> None:
    assert service.apply(config(tmp_path), inventory("pc1")) == []


def test_health_wants_the_ack_loop_and_the_alert_loop_to_come_round(
    service: CollectorService,
) -> None:
    assert service.alerts is not None
    t0 = service.acks_ran_at
    assert service.health(t0) == []
    late = t0 + STALL_SECONDS + 1
    assert service.health(late) == [
        f"the ack loop has not come round for {STALL_SECONDS + 1:.0f} s",
        f"no alert evaluation for {STALL_SECONDS + 1:.0f} s",
    ]
    service.acks_ran_at = late
    service.alerts.evaluation_failures += 1  # a failed evaluation is still the loop going round
    assert service.health(late) == []
