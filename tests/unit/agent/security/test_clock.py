"""Tests for agent/security/clock.py with an injected boot id and boot clock."""

from __future__ import annotations

import json
import logging

import pytest

from agent.security.clock import BootClock, boottime, read_boot_id

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
BOOT_A = "6f1c1f9e-0b1e-4a57-9d0e-8a3c2b1d4e5f"
BOOT_B = "0d7e3c2a-93b4-4c1f-8f5e-2b6a7c8d9e0f"


class FakeHost:
    """A boot id and a CLOCK_BOOTTIME the test moves by hand."""

    def __init__(self, boot_id: str = BOOT_A, since_boot: float = 1000.0) -> None:
        self.boot_id = boot_id
        self.since_boot = since_boot

    def read_boot_id(self) -> str:
        return self.boot_id

    def clock(self) -> float:
        return self.since_boot

    def clock_of(self, jump_seconds: float = 120.0) -> BootClock:
        return BootClock(jump_seconds, self.read_boot_id, self.clock)


def test_first_check_is_a_baseline() -> None:
    host = FakeHost()
    assert host.clock_of().check(NOW) == []


def test_reboot_is_reported_with_the_boot_time() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.check(NOW)
    host.boot_id, host.since_boot = BOOT_B, 40.0
    [event] = clock.check(NOW + 300)
    assert event.kind == "reboot"
    assert event.severity == "warning"
    assert event.ts == int((NOW + 300) * 1000)
    assert event.message == ""
    assert event.attrs == {
        "boot_id_before": BOOT_A,
        "boot_id": BOOT_B,
        "boot_time": "2023-11-14T22:17:40Z",  # NOW + 300 - 40
    }
    # The new boot is the new reference: a normal next check reports nothing.
    host.since_boot += 60
    assert clock.check(NOW + 360) == []


def test_forward_clock_jump() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.check(NOW)
    host.since_boot += 60
    [event] = clock.check(NOW + 60 + 3600)
    assert event.kind == "clock_jump"
    assert event.severity == "warning"
    assert event.attrs == {"jump_seconds": "3600.0"}


def test_backward_clock_jump() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.check(NOW)
    host.since_boot += 60
    [event] = clock.check(NOW + 60 - 3600)
    assert event.attrs == {"jump_seconds": "-3600.0"}
    # After the jump the new wall time is the reference.
    host.since_boot += 60
    assert clock.check(NOW + 120 - 3600) == []


def test_small_drift_is_not_a_jump() -> None:
    host = FakeHost()
    clock = host.clock_of(jump_seconds=120.0)
    clock.check(NOW)
    wall = NOW
    for _ in range(10):  # NTP corrections of 100 s each way: never one big enough
        host.since_boot += 60
        wall += 60 + 100
        assert clock.check(wall) == []
    host.since_boot += 60
    assert clock.check(wall + 60 - 120) == []  # exactly the threshold is not more than it


def test_suspend_is_not_a_jump() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.check(NOW)
    host.since_boot += 8 * 3600  # CLOCK_BOOTTIME counts the time suspended
    assert clock.check(NOW + 8 * 3600) == []


def test_jump_while_the_agent_was_stopped_is_seen_after_restore() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.check(NOW)
    stored = json.loads(json.dumps(clock.state()))

    host.since_boot += 600  # stopped for ten minutes, and the clock was set back an hour
    again = host.clock_of()
    again.restore(stored)
    [event] = again.check(NOW + 600 - 3600)
    assert event.kind == "clock_jump"
    assert event.attrs["jump_seconds"] == "-3600.0"


def test_reboot_while_the_agent_was_stopped_is_seen_after_restore() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.check(NOW)
    stored = json.loads(json.dumps(clock.state()))

    host.boot_id, host.since_boot = BOOT_B, 30.0
    again = host.clock_of()
    again.restore(stored)
    assert [e.kind for e in again.check(NOW + 90)] == ["reboot"]


def test_restore_after_a_failed_write_gives_the_same_events_again() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.check(NOW)
    committed = clock.state()
    host.since_boot += 60
    first = clock.check(NOW + 60 + 7200)
    assert len(first) == 1
    clock.restore(committed)
    assert clock.check(NOW + 60 + 7200) == first


def test_state_before_any_check_restores_to_a_baseline() -> None:
    host = FakeHost()
    clock = host.clock_of()
    clock.restore(json.loads(json.dumps(clock.state())))
    assert clock.check(NOW) == []


@pytest.mark.parametrize(
    "data",
    [
        {"v": 7, "boot_id": BOOT_A, "wall": NOW, "boottime": 1.0},
        {"v": 1, "boot_id": BOOT_A},
        {"v": 1, "boot_id": 12, "wall": NOW, "boottime": 1.0},
        {"v": 1, "boot_id": BOOT_A, "wall": "yesterday", "boottime": 1.0},
        {"v": 1, "boot_id": BOOT_A, "wall": NOW, "boottime": float("nan")},
        {"other": "stuff"},
    ],
)
def test_damaged_state_is_logged_and_starts_a_new_baseline(
    data: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    host = FakeHost(boot_id=BOOT_B)
    clock = host.clock_of()
    with caplog.at_level(logging.WARNING, logger="agent.security.clock"):
        clock.restore(data)
    assert "damaged" in caplog.text
    assert clock.check(NOW) == []


def test_boot_clock_going_backwards_in_one_boot_is_a_new_baseline() -> None:
    host = FakeHost(since_boot=5000.0)
    clock = host.clock_of()
    clock.check(NOW)
    host.since_boot = 10.0
    assert clock.check(NOW + 60) == []
    host.since_boot += 60
    assert clock.check(NOW + 120) == []


def test_real_readers_answer() -> None:
    boot_id = read_boot_id()
    assert boot_id and len(boot_id) <= 64
    assert boottime() > 0


def test_boot_id_override_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_BOOT_ID", "power-cut-test")
    assert read_boot_id() == "power-cut-test"
