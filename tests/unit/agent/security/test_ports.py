"""Tests for agent/security/ports.py: an injected reader, plus one real listening socket."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

from agent.security.ports import Listener, ListeningPorts, parse_port_range, read_listeners
from outpost.wire import Event

NOW = 1_700_000_000.0
EPHEMERAL = (32768, 60999)

SSH = Listener("tcp", "0.0.0.0", 22, 101, "sshd")
DNS = Listener("udp", "127.0.0.53", 53, 202, "systemd-resolve")
WEB = Listener("tcp", "::", 8080, 303, "python3")


class FakeReader:
    def __init__(self, *listeners: Listener) -> None:
        self.listeners = list(listeners)

    def __call__(self) -> list[Listener]:
        return list(self.listeners)


def _ports(
    reader: FakeReader, ignore_ports: list[int] | None = None, include_udp: bool = True
) -> ListeningPorts:
    return ListeningPorts(
        ignore_ports or [], include_udp, reader, ephemeral_range=lambda: EPHEMERAL
    )


def _summary(events: list[Event]) -> list[tuple[str, str, str, str, str]]:
    return [
        (e.kind, e.severity, e.attrs["proto"], e.attrs["address"], e.attrs["port"]) for e in events
    ]


def test_first_check_is_a_baseline_then_opened_and_closed_are_reported() -> None:
    reader = FakeReader(SSH, DNS)
    ports = _ports(reader)
    assert ports.check(NOW) == []
    assert ports.check(NOW + 60) == []

    reader.listeners = [DNS, WEB]
    events = ports.check(NOW + 120)
    assert _summary(events) == [
        ("listen_port_opened", "warning", "tcp", "::", "8080"),
        ("listen_port_closed", "info", "tcp", "0.0.0.0", "22"),
    ]
    opened, closed = events
    assert opened.ts == int((NOW + 120) * 1000)
    assert opened.message == ""
    assert opened.attrs == {
        "proto": "tcp",
        "address": "::",
        "port": "8080",
        "process": "python3",
        "pid": "303",
    }
    assert closed.attrs["process"] == "sshd" and closed.attrs["pid"] == "101"
    assert ports.check(NOW + 180) == []


def test_pid_is_left_out_when_not_visible() -> None:
    reader = FakeReader()
    ports = _ports(reader)
    ports.check(NOW)
    reader.listeners = [Listener("tcp", "0.0.0.0", 25, None, "")]
    [event] = ports.check(NOW + 1)
    assert "pid" not in event.attrs
    assert event.attrs["process"] == ""


def test_same_key_with_another_process_is_not_a_change() -> None:
    reader = FakeReader(SSH)
    ports = _ports(reader)
    ports.check(NOW)
    reader.listeners = [SSH._replace(pid=999), SSH._replace(pid=1000)]
    assert ports.check(NOW + 1) == []


def test_ignore_list_applies_to_both_protocols() -> None:
    reader = FakeReader()
    ports = _ports(reader, ignore_ports=[53, 8080])
    ports.check(NOW)
    reader.listeners = [SSH, DNS, WEB]
    assert _summary(ports.check(NOW + 1)) == [
        ("listen_port_opened", "warning", "tcp", "0.0.0.0", "22")
    ]


def test_udp_on_an_ephemeral_port_is_ignored_but_tcp_is_not() -> None:
    reader = FakeReader()
    ports = _ports(reader)
    ports.check(NOW)
    reader.listeners = [
        Listener("udp", "0.0.0.0", 40000, 7, "dig"),
        Listener("udp", "0.0.0.0", 32768, 7, "dig"),
        Listener("udp", "0.0.0.0", 60999, 7, "dig"),
        Listener("tcp", "0.0.0.0", 40000, 8, "backdoor"),
        Listener("udp", "0.0.0.0", 61000, 9, "wireguard"),
    ]
    assert _summary(ports.check(NOW + 1)) == [
        ("listen_port_opened", "warning", "tcp", "0.0.0.0", "40000"),
        ("listen_port_opened", "warning", "udp", "0.0.0.0", "61000"),
    ]


def test_udp_can_be_left_out() -> None:
    reader = FakeReader()
    ports = _ports(reader, include_udp=False)
    ports.check(NOW)
    reader.listeners = [DNS, SSH]
    assert [e.attrs["proto"] for e in ports.check(NOW + 1)] == ["tcp"]


def test_state_round_trip_reports_what_changed_while_stopped() -> None:
    reader = FakeReader(SSH, DNS)
    ports = _ports(reader)
    ports.check(NOW)
    stored = json.loads(json.dumps(ports.state()))

    # The agent restarts; meanwhile sshd stopped and a web server started.
    reader.listeners = [DNS, WEB]
    again = _ports(reader)
    again.restore(stored)
    assert _summary(again.check(NOW + 600)) == [
        ("listen_port_opened", "warning", "tcp", "::", "8080"),
        ("listen_port_closed", "info", "tcp", "0.0.0.0", "22"),
    ]


def test_restore_after_a_failed_write_gives_the_same_events_again() -> None:
    reader = FakeReader(SSH)
    ports = _ports(reader)
    ports.check(NOW)
    committed = ports.state()
    reader.listeners = [SSH, WEB]
    first = ports.check(NOW + 1)
    assert len(first) == 1
    ports.restore(committed)  # the outbox write failed: go back
    assert ports.check(NOW + 1) == first
    assert ports.check(NOW + 2) == []


def test_state_before_any_check_restores_to_a_baseline() -> None:
    reader = FakeReader(SSH)
    ports = _ports(reader)
    ports.restore(json.loads(json.dumps(ports.state())))
    assert ports.check(NOW) == []


@pytest.mark.parametrize(
    "data",
    [
        {"v": 99, "listeners": []},
        {"v": 1},
        {"v": 1, "listeners": "nope"},
        {"v": 1, "listeners": [["tcp", "0.0.0.0", "22", None, "sshd"]]},
        {"v": 1, "listeners": [["sctp", "0.0.0.0", 22, None, "sshd"]]},
        {"v": 1, "listeners": [[1, 2]]},
        {"garbage": True},
    ],
)
def test_damaged_state_is_logged_and_starts_a_new_baseline(
    data: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    reader = FakeReader(SSH)
    ports = _ports(reader)
    with caplog.at_level(logging.WARNING, logger="agent.security.ports"):
        ports.restore(data)
    assert "damaged" in caplog.text
    assert ports.check(NOW) == []


def test_empty_state_is_a_fresh_start_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    ports = _ports(FakeReader(SSH))
    with caplog.at_level(logging.WARNING):
        ports.restore({})
    assert caplog.text == ""
    assert ports.check(NOW) == []


def test_parse_port_range() -> None:
    assert parse_port_range("32768\t60999\n") == (32768, 60999)
    assert parse_port_range("1024 65535") == (1024, 65535)
    assert parse_port_range("") is None
    assert parse_port_range("60999 32768") is None
    assert parse_port_range("a b") is None


def test_read_listeners_sees_a_real_listening_socket() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        found = [
            item
            for item in read_listeners()
            if item.proto == "tcp" and item.address == "127.0.0.1" and item.port == port
        ]
        assert len(found) == 1
        if found[0].pid is not None:
            assert found[0].pid == os.getpid()
            assert found[0].process
    finally:
        server.close()
    assert not any(
        item.proto == "tcp" and item.address == "127.0.0.1" and item.port == port
        for item in read_listeners()
    )
