"""Tests for agent/sources/snmp.py (readings -> samples, wraps, reboots, config) and the pure
walk bookkeeping of agent/snmpclient.py. No network: the source gets a fake poller."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import AgentConfig
from agent.cycle import Identity, build_batch
from agent.snmpclient import Oid, Reading, Target, Value, advance
from agent.sources.base import Collected
from agent.sources.snmp import (
    COLUMNS,
    SYS_NAME,
    SYS_UPTIME,
    WRAP,
    DeviceState,
    SnmpConfig,
    SnmpDevice,
    SnmpSource,
    device_data,
    interface_rows,
    interface_samples,
    label_text,
    uptime_change,
    wrapped_counter,
)
from outpost import wire
from outpost.config import ConfigError, validate
from outpost.wire import Sample

NOW = 1_700_000_000.0


def _table(rows: dict[int, dict[str, Value]]) -> dict[Oid, Value]:
    """Rows by ifIndex (column name -> value) as the walk returns them."""
    return {(*COLUMNS[col], index): v for index, row in rows.items() for col, v in row.items()}


def _reading(
    ticks: int | None = 12345,
    rows: dict[int, dict[str, Value]] | None = None,
    name: bytes = b"core-sw",
) -> Reading:
    scalars: dict[Oid, Value] = {SYS_NAME: name}
    if ticks is not None:
        scalars[SYS_UPTIME] = ticks
    return Reading(scalars, _table(rows or {}), duration=0.25)


def _value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, f"{name} {labels} reported {len(found)} times"
    return found[0] if found else None


ETH = {
    "ifIndex": 1,
    "ifDescr": b"GigabitEthernet0/1",
    "ifName": b"Gi0/1",
    "ifOperStatus": 1,
    "ifAdminStatus": 1,
    "ifHighSpeed": 1000,
    "ifSpeed": 1_000_000_000,
    "ifHCInOctets": 10 * WRAP,
    "ifHCOutOctets": 20,
    "ifInOctets": 5,
    "ifOutOctets": 6,
    "ifHCInUcastPkts": 30,
    "ifHCOutUcastPkts": 40,
    "ifInUcastPkts": 7,
    "ifOutUcastPkts": 8,
    "ifInErrors": 1,
    "ifOutErrors": 2,
    "ifInDiscards": 3,
    "ifOutDiscards": 4,
}


# --- samples -------------------------------------------------------------------------------


def test_an_answering_device_reports_the_system_source_names() -> None:
    data, state = device_data(_reading(ticks=360_000, rows={1: ETH}), DeviceState(), NOW)
    s = data.samples
    assert data.up and data.events == []
    assert _value(s, "outpost_host_uptime_seconds") == 3600.0
    assert _value(s, "outpost_host_boot_time_seconds") == NOW - 3600.0
    assert _value(s, "outpost_snmp_info", sys_name="core-sw") == 1.0
    assert _value(s, "outpost_snmp_duration_seconds") == 0.25
    nic = {"interface": "Gi0/1"}
    assert _value(s, "outpost_network_receive_bytes_total", **nic) == 10 * WRAP
    assert _value(s, "outpost_network_transmit_bytes_total", **nic) == 20
    assert _value(s, "outpost_network_receive_packets_total", **nic) == 30
    assert _value(s, "outpost_network_transmit_packets_total", **nic) == 40
    assert _value(s, "outpost_network_receive_errors_total", **nic) == 1
    assert _value(s, "outpost_network_transmit_errors_total", **nic) == 2
    assert _value(s, "outpost_network_receive_drop_total", **nic) == 3
    assert _value(s, "outpost_network_transmit_drop_total", **nic) == 4
    assert _value(s, "outpost_network_up", **nic) == 1.0
    assert _value(s, "outpost_network_admin_up", **nic) == 1.0
    assert _value(s, "outpost_network_speed_bytes", **nic) == 125_000_000
    assert state.uptime_ticks == 360_000 and state.seen_at == NOW


def test_32_bit_counters_are_the_fallback_without_hc_columns() -> None:
    old = {k: v for k, v in ETH.items() if not k.startswith(("ifHC", "ifHigh", "ifName"))}
    old["ifOperStatus"], old["ifAdminStatus"], old["ifSpeed"] = 2, 1, 100_000_000
    samples, counters = interface_samples(interface_rows(_table({3: old})), {})
    nic = {"interface": "GigabitEthernet0/1"}  # no ifName: ifDescr
    assert _value(samples, "outpost_network_receive_bytes_total", **nic) == 5
    assert _value(samples, "outpost_network_transmit_packets_total", **nic) == 8
    assert _value(samples, "outpost_network_up", **nic) == 0.0
    assert _value(samples, "outpost_network_admin_up", **nic) == 1.0
    assert _value(samples, "outpost_network_speed_bytes", **nic) == 12_500_000
    assert counters[(3, "ifInOctets")] == (5, 0)
    assert (3, "ifHCInOctets") not in counters  # 64-bit counters are passed on raw


def test_missing_columns_leave_their_samples_out() -> None:
    samples, _ = interface_samples(interface_rows(_table({7: {"ifIndex": 7}})), {})
    assert samples == []  # an interface with nothing to say, not zeros
    saturated = {"ifDescr": b"te1", "ifSpeed": WRAP - 1}  # ifSpeed is stuck on a 10G link
    samples, _ = interface_samples(interface_rows(_table({2: saturated})), {})
    assert _value(samples, "outpost_network_speed_bytes", interface="te1") is None
    data, _ = device_data(Reading({}, {}), DeviceState(), NOW)  # answered, said nothing
    assert data.up
    assert {s.name for s in data.samples} == {"outpost_snmp_info", "outpost_snmp_duration_seconds"}


def test_a_failed_walk_still_reports_the_device_up_without_interfaces() -> None:
    reading = Reading({SYS_UPTIME: 100}, {}, table_error="10.0.0.1:161: timeout")
    data, _ = device_data(reading, DeviceState(), NOW)
    assert data.up
    assert not any(s.name.startswith("outpost_network_") for s in data.samples)


def test_a_silent_device_is_down_with_only_its_duration() -> None:
    before = DeviceState(uptime_ticks=500, seen_at=NOW - 10, counters={(1, "ifInOctets"): (9, 1)})
    data, state = device_data(Reading({}, {}, error="no answer", duration=1.5), before, NOW)
    assert data.up is False
    assert data.samples == [Sample("outpost_snmp_duration_seconds", 1.5)]
    assert data.events == []
    assert state == before  # remembered, to spot a reboot when it answers again


def test_other_oids_and_odd_indexes_are_ignored() -> None:
    table = {
        **_table({1: {"ifDescr": b"eth0"}}),
        (1, 3, 6, 1, 4, 1, 9, 1): 5,
        (*COLUMNS["ifDescr"], 1, 2): b"two-part index",
    }
    assert interface_rows(table) == {1: {"ifDescr": b"eth0"}}


# --- counters and reboots ------------------------------------------------------------------


def test_wrapped_counter() -> None:
    assert wrapped_counter(100, None) == (100, 0)
    assert wrapped_counter(200, (100, 0)) == (200, 0)
    assert wrapped_counter(50, (WRAP - 100, 0)) == (50, 1)
    assert wrapped_counter(50, (50, 3)) == (50, 3)


def test_a_32_bit_counter_keeps_growing_across_its_wrap() -> None:
    row: dict[str, Value] = {"ifDescr": b"wan", "ifInOctets": WRAP - 100}
    state = DeviceState()
    totals = []
    for ticks, raw in ((1000, WRAP - 100), (2000, 50), (3000, 4000), (4000, 10)):
        row["ifInOctets"] = raw
        data, state = device_data(_reading(ticks=ticks, rows={1: row}), state, NOW + ticks / 100)
        totals.append(_value(data.samples, "outpost_network_receive_bytes_total", interface="wan"))
    assert totals == [WRAP - 100, WRAP + 50, WRAP + 4000, 2 * WRAP + 10]


def test_a_reboot_is_an_event_and_resets_the_accumulation() -> None:
    row: dict[str, Value] = {"ifDescr": b"wan", "ifInOctets": WRAP - 100}
    _, state = device_data(_reading(ticks=10_000, rows={1: row}), DeviceState(), NOW)
    row["ifInOctets"] = 50
    _, state = device_data(_reading(ticks=20_000, rows={1: row}), state, NOW + 100)
    assert state.counters[(1, "ifInOctets")] == (50, 1)
    row["ifInOctets"] = 70  # after the reboot: the counter started again from 0
    data, state = device_data(_reading(ticks=3_000, rows={1: row}), state, NOW + 200)
    assert _value(data.samples, "outpost_network_receive_bytes_total", interface="wan") == 70
    assert _value(data.samples, "outpost_host_uptime_seconds") == 30.0
    (event,) = data.events
    assert (event.kind, event.severity) == ("device_rebooted", "warning")
    assert event.attrs["uptime_seconds"] == "30.00"
    assert event.attrs["previous_uptime_seconds"] == "200.00"
    assert event.ts == int((NOW + 200) * 1000)
    assert state.counters[(1, "ifInOctets")] == (70, 0)
    data, _ = device_data(_reading(ticks=4_000, rows={1: row}), state, NOW + 210)
    assert data.events == []


def test_sys_uptime_passing_2_32_is_not_a_reboot() -> None:
    before = DeviceState(uptime_ticks=WRAP - 1000, seen_at=NOW)
    assert uptime_change(before, 500, NOW + 15) == "wrapped"
    assert uptime_change(before, WRAP - 10, NOW + 15) == "running"
    assert uptime_change(before, 500, NOW + 86_400) == "rebooted"  # far from where it should be
    assert uptime_change(DeviceState(uptime_ticks=5000, seen_at=NOW), 100, NOW + 15) == "rebooted"
    assert uptime_change(DeviceState(), 5, NOW) == "running"
    data, state = device_data(_reading(ticks=500), before, NOW + 15)
    assert data.events == []
    assert _value(data.samples, "outpost_host_uptime_seconds") == (WRAP + 500) / 100
    assert state.uptime_wraps == 1


def test_counters_of_interfaces_that_went_away_are_forgotten() -> None:
    rows = interface_rows(_table({1: {"ifInOctets": 5}, 2: {"ifInOctets": 6}}))
    _, counters = interface_samples(rows, {})
    assert set(counters) == {(1, "ifInOctets"), (2, "ifInOctets")}
    _, counters = interface_samples(interface_rows(_table({2: {"ifInOctets": 7}})), counters)
    assert set(counters) == {(2, "ifInOctets")}


# --- names ---------------------------------------------------------------------------------


def test_label_text_is_clean_utf8() -> None:
    assert label_text(b"Gi0/1\x00\x00  ") == "Gi0/1"
    assert label_text("电信出口".encode("gb18030")) == "电信出口"
    assert label_text("电信出口".encode()) == "电信出口"
    assert label_text(b"\xff\xfe\x80bad") == "\ufffd\ufffd\ufffdbad"
    assert label_text("lone \udc80 surrogate") == "lone ? surrogate"
    assert len(label_text(b"x" * 1000)) == wire.MAX_LABEL_VALUE_LEN
    assert label_text(None) == "" and label_text(42) == "42"


def test_interface_names_fall_back_and_stay_distinct() -> None:
    rows = {
        1: {"ifName": b"", "ifDescr": b"eth0", "ifInOctets": 1},
        2: {"ifDescr": b"eth0", "ifInOctets": 2},
        3: {"ifInOctets": 3},
        4: {"ifName": b"y" * 300, "ifInOctets": 4},
        5: {"ifName": b"y" * 300, "ifInOctets": 5},
    }
    samples, _ = interface_samples(interface_rows(_table(rows)), {})
    names = {int(s.value): s.labels["interface"] for s in samples}
    assert names[1] == "eth0" and names[2] == "eth0 (2)" and names[3] == "if3"
    assert len(names[4]) == len(names[5]) == 256 and names[5].endswith(" (5)")


def test_the_samples_pass_the_collectors_checks() -> None:
    rows = {1: {**ETH, "ifName": "上联\udc80".encode("utf-8", "surrogatepass")}, 2: ETH}
    data, _ = device_data(_reading(rows=rows, name=b"\xff" * 400), DeviceState(), NOW)
    who = Identity("site-a", "srv1", "agent-1", "boot-1")
    batch = build_batch(who, 1, int(NOW * 1000), 15.0, samples=data.samples, device="sw1")
    decoded = wire.decode_batch(wire.encode(batch), None, wire.Limits())
    assert decoded.device == "sw1" and len(decoded.samples) == len(data.samples)


# --- the walk ------------------------------------------------------------------------------

A, B = (1, 3, 1), (1, 3, 2)


def test_advance_reads_columns_row_by_row() -> None:
    walking = [(A, A), (B, B)]
    answer: list[tuple[Oid, Value | None]] = [
        ((*A, 1), 10),
        ((*B, 1), 20),
        ((*A, 2), 11),
        ((*B, 2), 21),
        ((*A, 3), 12),
    ]
    found, rest = advance(walking, answer)
    assert found == {(*A, 1): 10, (*B, 1): 20, (*A, 2): 11, (*B, 2): 21, (*A, 3): 12}
    assert rest == [(A, (*A, 3)), (B, (*B, 2))]  # the last row was cut short


def test_advance_ends_columns_past_their_end() -> None:
    walking = [(A, (*A, 5)), (B, (*B, 5))]
    answer: list[tuple[Oid, Value | None]] = [
        ((*B, 1), 1),  # A ran into B: A is done
        ((*B, 6), 2),
        ((1, 4, 1), 3),
        ((1, 9), None),
    ]
    found, rest = advance(walking, answer)
    assert found == {(*B, 6): 2} and rest == []
    found, rest = advance([(A, (*A, 5))], [((*A, 4), 1)])  # not increasing: a broken agent
    assert found == {} and rest == []
    assert advance([(A, A)], []) == ({}, [])  # nothing came back: stop rather than loop


# --- config --------------------------------------------------------------------------------


def _agent(*devices: dict[str, Any], **snmp: Any) -> dict[str, Any]:
    return {"site": "s", "host": "h", "sources": {"snmp": {**snmp, "devices": list(devices)}}}


V2 = {"name": "sw1", "address": "10.0.0.2", "community": "public"}
V3 = {
    "name": "fw1",
    "address": "10.0.0.1",
    "version": "3",
    "user": "mon",
    "auth_password": "authpassphrase",
    "priv_password_file": "/etc/outpost/priv",
}


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        validate(data, AgentConfig, "agent.yaml")
    return [(p.path, p.expected) for p in info.value.problems]


def test_valid_devices_load_with_their_defaults() -> None:
    cfg = validate(_agent(V2, V3, timeout_seconds=0.5), AgentConfig, "agent.yaml").sources.snmp
    assert cfg.timeout_seconds == 0.5 and cfg.retries == 1 and cfg.max_repetitions == 25
    sw1, fw1 = cfg.devices
    assert (sw1.port, sw1.version, fw1.auth_protocol, fw1.priv_protocol) == (
        161,
        "2c",
        "sha",
        "aes",
    )
    assert SnmpConfig() == SnmpConfig(devices=[]) and SnmpConfig().devices == []


@pytest.mark.parametrize(
    ("device", "path", "words"),
    [
        ({**V2, "community": None}, "sources.snmp.devices[0]", "community or community_file"),
        ({**V2, "community_file": "/x"}, "sources.snmp.devices[0]", "both set"),
        ({**V2, "user": "mon"}, "sources.snmp.devices[0]", 'only for version "3"'),
        ({**V3, "user": None}, "sources.snmp.devices[0]", "user is required"),
        ({**V3, "priv_password_file": None}, "sources.snmp.devices[0]", "priv_password or"),
        ({**V3, "auth_password": "short"}, "sources.snmp.devices[0]", "at least 8"),
        ({**V3, "community": "public"}, "sources.snmp.devices[0]", "for version 2c"),
        ({**V2, "name": "Core_SW"}, "sources.snmp.devices[0].name", "matching"),
        ({**V3, "version": 3}, "sources.snmp.devices[0].version", "'2c'"),
        ({**V2, "port": 0}, "sources.snmp.devices[0].port", ">= 1"),
        ({**V2, "comunity": "x"}, "sources.snmp.devices[0].comunity", "did you mean"),
        ({**V3, "priv_protocol": "3des"}, "sources.snmp.devices[0].priv_protocol", "'aes'"),
    ],
)
def test_a_bad_device_is_refused_with_its_key_path(
    device: dict[str, Any], path: str, words: str
) -> None:
    device = {k: v for k, v in device.items() if v is not None}
    ((found_path, expected),) = _problems(_agent(device))
    assert found_path == path and words in expected, (found_path, expected)


def test_device_names_are_unique() -> None:
    ((path, expected),) = _problems(_agent(V2, {**V2, "address": "10.0.0.3"}))
    assert path == "sources.snmp" and "'sw1' is used twice" in expected


def test_polling_settings_are_bounded() -> None:
    problems = _problems(_agent(V2, timeout_seconds=0, retries=-1, concurrency=0))
    assert [p for p, _ in problems] == [
        "sources.snmp.timeout_seconds",
        "sources.snmp.retries",
        "sources.snmp.concurrency",
    ]


def test_secrets_stay_out_of_reprs() -> None:
    device = msgspec.convert(
        {**V3, "priv_password": "privpassphrase", "priv_password_file": None}, SnmpDevice
    )
    target = Target("10.0.0.1", community="s3cret-community", auth_password="authpassphrase")
    for text in (repr(device), repr(target), repr(SnmpConfig(devices=[device]))):
        assert "passphrase" not in text and "s3cret" not in text, text


# --- the source ----------------------------------------------------------------------------


class FakePoller:
    def __init__(self, readings: dict[str, Reading]) -> None:
        self.readings = readings
        self.calls: list[tuple[dict[str, Target], int, int]] = []

    def __call__(
        self,
        targets: Mapping[str, Target],
        scalars: Sequence[Oid],
        columns: Sequence[Oid],
        max_repetitions: int,
        concurrency: int,
    ) -> Mapping[str, Reading]:
        assert set(scalars) == {SYS_NAME, SYS_UPTIME} and set(columns) == set(COLUMNS.values())
        self.calls.append((dict(targets), max_repetitions, concurrency))
        return {name: self.readings[name] for name in targets}


def _config(*devices: dict[str, Any], **settings: Any) -> SnmpConfig:
    return msgspec.convert({**settings, "devices": list(devices)}, SnmpConfig)


def test_without_devices_nothing_is_polled() -> None:
    poller = FakePoller({})
    assert SnmpSource(SnmpConfig(), poller).collect(NOW) == Collected()
    assert poller.calls == []


def test_the_source_reports_each_device_as_its_own_host(tmp_path: Path) -> None:
    secret = tmp_path / "priv"
    secret.write_text("privpassphrase\nignored second line\n")
    fw1 = {**V3, "priv_password_file": str(secret), "timeout_seconds": 0.5, "retries": 0}
    poller = FakePoller({"sw1": _reading(rows={1: ETH}), "fw1": Reading({}, {}, error="timeout")})
    source = SnmpSource(_config(V2, fw1, max_repetitions=10, concurrency=4), poller)
    got = source.collect(NOW)
    assert got.samples == [] and got.events == []
    assert got.devices["sw1"].up and not got.devices["fw1"].up
    ((targets, reps, concurrency),) = poller.calls
    assert (reps, concurrency) == (10, 4)
    assert targets["sw1"] == Target("10.0.0.2", 161, "2c", 2.0, 1, community="public")
    assert targets["fw1"].priv_password == "privpassphrase"
    assert (targets["fw1"].timeout, targets["fw1"].retries) == (0.5, 0)


def test_an_unreadable_secret_file_makes_only_that_device_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    devices = [
        {**V2, "name": "sw1", "community": "s3cret-community"},
        {**V2, "name": "sw2", "community": None, "community_file": str(tmp_path / "missing")},
        {**V2, "name": "sw3", "community": None, "community_file": str(empty)},
    ]
    devices = [{k: v for k, v in d.items() if v is not None} for d in devices]
    poller = FakePoller({"sw1": _reading()})
    source = SnmpSource(_config(*devices), poller)
    with caplog.at_level(logging.DEBUG, logger="agent.sources.snmp"):
        got = source.collect(NOW)
        source.collect(NOW + 15)  # the same problem is not logged again
    assert [got.devices[n].up for n in ("sw1", "sw2", "sw3")] == [True, False, False]
    assert set(poller.calls[0][0]) == {"sw1"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "sw2" in warnings[0] and "cannot read" in warnings[0]
    assert "sw3" in warnings[1] and "empty" in warnings[1]
    assert "s3cret" not in caplog.text


def test_the_source_remembers_each_device_between_cycles(caplog: pytest.LogCaptureFixture) -> None:
    poller = FakePoller({"sw1": _reading(ticks=50_000)})
    source = SnmpSource(_config(V2), poller)
    source.collect(NOW)
    poller.readings["sw1"] = Reading({}, {}, error="10.0.0.2:161: no answer")
    with caplog.at_level(logging.INFO, logger="agent.sources.snmp"):
        assert not source.collect(NOW + 15).devices["sw1"].up
        poller.readings["sw1"] = _reading(ticks=1_000)  # back, after a power cut
        back = source.collect(NOW + 30).devices["sw1"]
    assert back.up and [e.kind for e in back.events] == ["device_rebooted"]
    assert "no answer" in caplog.text and "answers again" in caplog.text
