"""sd_notify without libsystemd: datagrams on a real AF_UNIX socket (a path and an abstract
name), the watchdog timeout from the environment, and the pacing of pings and status lines
on a fake clock."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from outpost import systemd
from outpost.systemd import StatusLine, Watchdog, notify, watchdog_interval


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = str(tmp_path / "notify")
    sock.bind(name)
    sock.settimeout(2)
    yield sock, name
    sock.close()


def test_nothing_is_sent_without_notify_socket() -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


def test_a_path_socket_gets_the_datagram(path_socket: tuple[socket.socket, str]) -> None:
    sock, name = path_socket
    assert notify("READY=1\nSTATUS=up", env={"NOTIFY_SOCKET": name}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_an_abstract_socket_gets_the_datagram() -> None:
    name = f"outpost-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_the_environment_is_read_when_none_is_given(
    path_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, name = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    assert systemd.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.stopping() is False


def test_an_unusable_socket_is_false_not_an_error(tmp_path: Path) -> None:
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    (tmp_path / "file").write_text("not a socket")
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "file")}) is False


def test_ready_reloading_and_status_lines(path_socket: tuple[socket.socket, str]) -> None:
    sock, name = path_socket
    env = {"NOTIFY_SOCKET": name}
    assert systemd.ready("3 rows in the outbox,\nconnected", env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 rows in the outbox, connected"
    assert systemd.ready(env=env)
    assert sock.recv(4096) == b"READY=1"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading(env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "2000000"}, 2.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "self"}, 0.5),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "other"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": "self"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}
    env = {k: pids.get(v, v) if k == "WATCHDOG_PID" else v for k, v in env.items()}
    assert watchdog_interval(env) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_at_half_the_timeout_when_asked() -> None:
    clock, sent = FakeClock(), []
    dog = Watchdog(10.0, lambda state: sent.append(state) or True, clock)
    assert dog.enabled and dog.every == 5.0
    assert dog.ping() is True  # the first chance
    assert dog.remaining() == 5.0
    clock.now += 4.9
    assert dog.ping() is False
    assert dog.remaining() == pytest.approx(0.1)
    clock.now += 0.1
    assert dog.ping() is True
    # A loop that does not come round sends nothing, however much time passes...
    clock.now += 60
    assert dog.remaining() == 0.0
    assert sent == ["WATCHDOG=1", "WATCHDOG=1"]
    # ...and the next turn pings at once, then paces again from there.
    assert dog.ping() is True
    clock.now += 1
    assert dog.ping() is False
    assert dog.sent == 3 == len(sent)


def test_no_watchdog_asked_for_sends_nothing() -> None:
    sent: list[str] = []
    dog = Watchdog(None, lambda state: sent.append(state) or True, FakeClock())
    assert not dog.enabled
    assert dog.ping() is False
    assert dog.remaining(0.7) == 0.7
    assert sent == []


def test_watchdog_from_env(path_socket: tuple[socket.socket, str]) -> None:
    sock, name = path_socket
    dog = Watchdog.from_env({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"})
    assert dog.every == 2.0
    assert dog.ping()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert not Watchdog.from_env({"NOTIFY_SOCKET": name}).enabled


def test_status_line_sends_changes_at_most_every_gap() -> None:
    clock, sent = FakeClock(), []
    status = StatusLine(5.0, lambda state: sent.append(state) or True, clock)
    status.shown("starting")  # went out with READY=1
    assert status.update("starting") is False
    clock.now += 5
    assert status.update("1 rows in the outbox") is True
    clock.now += 1
    assert status.update("2 rows in the outbox") is False  # too soon
    clock.now += 4
    assert status.update("3 rows in the outbox") is True  # the latest text, after the gap
    clock.now += 10
    assert status.update("3 rows in the outbox") is False  # unchanged
    assert sent == ["STATUS=1 rows in the outbox", "STATUS=3 rows in the outbox"]
