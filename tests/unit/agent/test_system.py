"""Tests for agent/sources/system.py against the fake host in conftest.py, plus one real run."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import msgspec
import pytest

from agent.sources.base import SourceError
from agent.sources.host import Battery, NicStats, Partition, Temperature
from agent.sources.system import SystemConfig, SystemSource, host_samples
from outpost.wire import Sample

NOW = 1_700_003_600.0


def _collect(host: Any, config: SystemConfig | None = None) -> list[Sample]:
    return SystemSource(config or SystemConfig(), host).collect(NOW).samples


def _series(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name}


def _value(samples: list[Sample], name: str, **labels: str) -> float | None:
    return _series(samples, name).get(tuple(sorted(labels.items())))


def _names(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples}


def test_uptime_is_now_minus_boot(fake_host: Any) -> None:
    samples = _collect(fake_host)
    assert _value(samples, "outpost_host_boot_time_seconds") == fake_host.boot
    assert _value(samples, "outpost_host_uptime_seconds") == NOW - fake_host.boot


def test_scalar_readings(fake_host: Any) -> None:
    samples = _collect(fake_host)
    assert _value(samples, "outpost_cpu_count") == 4
    assert _value(samples, "outpost_load5") == 0.25
    assert _value(samples, "outpost_memory_available_bytes") == 6000
    assert _value(samples, "outpost_swap_used_bytes") == 100
    assert _value(samples, "outpost_processes") == 123
    assert _series(samples, "outpost_cpu_seconds_total") == {
        (("mode", "user"),): 100.0,
        (("mode", "system"),): 50.0,
        (("mode", "idle"),): 1000.0,
    }


def test_pseudo_filesystems_excluded_and_duplicate_device_skipped(fake_host: Any) -> None:
    samples = _collect(fake_host)
    sizes = _series(samples, "outpost_filesystem_size_bytes")
    assert sorted(dict(labels)["mountpoint"] for labels in sizes) == ["/", "/data"]
    labels = {"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4"}
    assert _value(samples, "outpost_filesystem_size_bytes", **labels) == 1000
    assert _value(samples, "outpost_filesystem_free_bytes", **labels) == 400
    assert _value(samples, "outpost_filesystem_avail_bytes", **labels) == 300


def test_filesystem_whose_usage_fails_is_skipped(fake_host: Any) -> None:
    fake_host.failing.add("disk_usage:/")
    fake_host.usage["/data"] = None
    sizes = _series(_collect(fake_host), "outpost_filesystem_size_bytes")
    # "/" failed, so the bind mount of the same device is the first good one.
    assert [dict(labels)["mountpoint"] for labels in sizes] == ["/var/lib/bind"]


def test_disk_counters_with_labels_and_exclusions(fake_host: Any) -> None:
    samples = _collect(fake_host)
    assert _value(samples, "outpost_disk_read_bytes_total", device="sda") == 4096
    assert _value(samples, "outpost_disk_written_bytes_total", device="sda") == 8192
    assert _value(samples, "outpost_disk_reads_completed_total", device="sda") == 10
    assert _value(samples, "outpost_disk_writes_completed_total", device="sda") == 20
    assert _value(samples, "outpost_disk_io_time_seconds_total", device="sda") == 1.5
    # sdb has no busy time; loop0 is excluded by the default regex.
    assert set(_series(samples, "outpost_disk_io_time_seconds_total")) == {(("device", "sda"),)}
    devices = {dict(k)["device"] for k in _series(samples, "outpost_disk_read_bytes_total")}
    assert devices == {"sda", "sdb"}


def test_network_counters_and_interface_exclusion(fake_host: Any) -> None:
    samples = _collect(fake_host)
    for name in ("outpost_network_receive_bytes_total", "outpost_network_up"):
        nics = {dict(k)["interface"] for k in _series(samples, name)}
        assert nics == {"eth0", "wlan0"}
    assert _value(samples, "outpost_network_receive_bytes_total", interface="eth0") == 2000
    assert _value(samples, "outpost_network_transmit_bytes_total", interface="eth0") == 1000
    assert _value(samples, "outpost_network_receive_packets_total", interface="eth0") == 200
    assert _value(samples, "outpost_network_transmit_packets_total", interface="eth0") == 100
    assert _value(samples, "outpost_network_receive_errors_total", interface="eth0") == 1
    assert _value(samples, "outpost_network_transmit_errors_total", interface="eth0") == 2
    assert _value(samples, "outpost_network_receive_drop_total", interface="eth0") == 3
    assert _value(samples, "outpost_network_transmit_drop_total", interface="eth0") == 4
    assert _value(samples, "outpost_network_up", interface="wlan0") == 0
    assert _series(samples, "outpost_network_speed_bytes") == {
        (("interface", "eth0"),): 125_000_000.0
    }


def test_custom_interface_regex(fake_host: Any) -> None:
    config = SystemConfig(exclude_interfaces=["^wl"])
    nics = {
        dict(k)["interface"]
        for k in _series(_collect(fake_host, config), "outpost_network_receive_bytes_total")
    }
    assert nics == {"lo", "eth0", "veth1234"}


def test_invalid_regex_refuses_config() -> None:
    with pytest.raises(msgspec.ValidationError, match="exclude_disks"):
        msgspec.json.decode(b'{"exclude_disks": ["("]}', type=SystemConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"exclude_fstype": []}', type=SystemConfig)


def test_no_battery_no_battery_samples(fake_host: Any) -> None:
    assert not any(n.startswith("outpost_battery_") for n in _names(_collect(fake_host)))


def test_battery_present(fake_host: Any) -> None:
    fake_host.batt = Battery(percent=80.0, seconds_left=-2.0, power_plugged=True)
    samples = _collect(fake_host)
    assert _value(samples, "outpost_battery_percent") == 80
    assert _value(samples, "outpost_battery_power_plugged") == 1
    assert "outpost_battery_seconds_left" not in _names(samples)
    fake_host.batt = Battery(percent=50.0, seconds_left=3600.0, power_plugged=False)
    samples = _collect(fake_host)
    assert _value(samples, "outpost_battery_power_plugged") == 0
    assert _value(samples, "outpost_battery_seconds_left") == 3600


def test_temperatures_labelled(fake_host: Any) -> None:
    fake_host.temps.append(Temperature("nvme", "Composite", 30.0))
    fake_host.temps.append(Temperature("nvme", "Composite", 31.0))
    assert _series(_collect(fake_host), "outpost_temperature_celsius") == {
        (("chip", "coretemp"), ("sensor", "Package id 0")): 45.0,
        (("chip", "acpitz"), ("sensor", "temp1")): 40.0,
        (("chip", "acpitz"), ("sensor", "temp2")): 41.0,
        (("chip", "nvme"), ("sensor", "Composite")): 30.0,
        (("chip", "nvme"), ("sensor", "Composite 2")): 31.0,
    }


def test_non_finite_values_skipped(fake_host: Any) -> None:
    fake_host.temps = [
        Temperature("coretemp", "a", math.nan),
        Temperature("coretemp", "b", math.inf),
        Temperature("coretemp", "c", 50.0),
    ]
    fake_host.batt = Battery(percent=math.nan, seconds_left=math.inf, power_plugged=None)
    samples = _collect(fake_host)
    assert all(math.isfinite(s.value) for s in samples)
    assert _series(samples, "outpost_temperature_celsius") == {
        (("chip", "coretemp"), ("sensor", "c")): 50.0
    }
    assert not any(n.startswith("outpost_battery_") for n in _names(samples))


def test_surrogates_sanitised_and_labels_truncated(fake_host: Any) -> None:
    bad = b"eth\xff0".decode("utf-8", "surrogateescape")
    fake_host.nets = {bad: fake_host.nets["eth0"], "\ud800x": fake_host.nets["eth0"]}
    fake_host.stats = {bad: NicStats(True, 100)}
    long = "/mnt/" + "x" * 300
    fake_host.parts = [Partition("/dev/sdc1", long, "ext4")]
    fake_host.usage[long] = fake_host.usage["/"]
    samples = _collect(fake_host)
    nics = {dict(k)["interface"] for k in _series(samples, "outpost_network_receive_bytes_total")}
    assert nics == {"eth\ufffd0", "?x"}
    assert _value(samples, "outpost_network_up", interface="eth\ufffd0") == 1
    for sample in samples:
        for value in sample.labels.values():
            value.encode("utf-8")  # would raise on a lone surrogate
            assert len(value) <= 256
    assert msgspec.json.encode(samples)


def test_failing_reading_leaves_others(fake_host: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake_host.failing |= {"net_io", "boot_time"}
    with caplog.at_level(logging.DEBUG, logger="agent.sources.system"):
        samples = _collect(fake_host)
    names = _names(samples)
    assert "outpost_network_receive_bytes_total" not in names
    assert "outpost_host_uptime_seconds" not in names
    assert {"outpost_network_up", "outpost_cpu_count", "outpost_filesystem_size_bytes"} <= names
    assert "system: network failed" in caplog.text


def test_every_reading_failing_raises(fake_host: Any) -> None:
    fake_host.failing |= {
        "boot_time",
        "cpu_times",
        "load_average",
        "memory",
        "partitions",
        "disk_io",
        "net_io",
        "nic_stats",
        "process_count",
        "battery",
        "temperatures",
    }
    with pytest.raises(SourceError):
        host_samples(fake_host, SystemConfig(), NOW)


def test_empty_host(fake_host: Any) -> None:
    fake_host.cpu = fake_host.load = fake_host.mem = fake_host.swp = None
    fake_host.cpus = fake_host.procs = None
    fake_host.parts, fake_host.disks, fake_host.nets, fake_host.stats = [], {}, {}, {}
    fake_host.temps = []
    assert _names(_collect(fake_host)) == {
        "outpost_host_boot_time_seconds",
        "outpost_host_uptime_seconds",
    }


def test_real_psutil_host() -> None:
    samples = SystemSource(SystemConfig()).collect(time.time()).samples
    names = _names(samples)
    assert "outpost_host_uptime_seconds" in names
    assert "outpost_cpu_seconds_total" in names
    assert all(math.isfinite(s.value) for s in samples)
    assert all(isinstance(v, str) for s in samples for v in s.labels.values())
